"""plan=released end to end on synthetic files in the exact released formats (issue: run the paper's own models):
each released file is imported with the reference pipeline, evaluated through real bitstreams at its rate point
by the same jobs as a trained run, and reported in the layout of Fig. 3 / 4; an imported run is served like ours."""

from __future__ import annotations

import json

import pytest
from helpers.config import CONF
from helpers.released import write_release

from latentbridge.core.config import hydra_quote
from latentbridge.workflows import reproduce

SYNTHETIC = ["data=synthetic", "data.image_size=256", "data.raw_size=256", "data.eval_batch_size=2",
             "vision.pretrained=null", "logger=none"]  # fmt: skip


@pytest.mark.slow
def test_the_released_plan_imports_evaluates_and_reports_the_released_models(tmp_path):
    from hydra import compose, initialize_config_dir

    from latentbridge.core.config import register_resolvers

    folder = tmp_path / "release"
    write_release(folder, qualities=(1,))
    register_resolvers()
    overrides = ["plan=released", f"plan.vars.released={hydra_quote(folder)}", "plan.vars.imagenet=unused",
                 "plan.rates=[0.004]", "plan.eval_limit=2", "+plan.eval_batch_size=2",
                 "plan.common=[" + ",".join(f"'{o}'" for o in SYNTHETIC) + "]",
                 f"out_dir={hydra_quote(tmp_path / 'out')}", f"paths.cache_dir={hydra_quote(tmp_path / 'cache')}",
                 "dashboard.enabled=false", "paths.output_dir=."]  # fmt: skip
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("reproduce", overrides=overrides)
        results = reproduce.reproduce(cfg)
    methods = {r["method"] for r in results["rows"]}
    assert {"d1", "d2", "d3", "reconstruction", "uncompressed"} <= methods
    assert not results["failed"] and set(results["plots"]) == {"fig3_rate_accuracy", "fig4_rate_psnr"}
    for run in ("d1", "d2", "d3"):
        imported = json.loads((tmp_path / "out" / run / "lambda0.004" / "results.json").read_text())
        assert imported["imported_from"]["file"] == str(folder / f"{run}_1.pth.tar")
        row = next(r for r in results["rows"] if r["method"] == run)
        assert row["bpp"] > 0 and 0 <= row["top1"] <= 1 and row["lmbda"] == 0.004
    # an imported run is served like a run trained here: a real 256x256 stream in, the neck's tokens out
    import torch
    from fastapi.testclient import TestClient

    from latentbridge.codecs.bitstream import encode_image
    from latentbridge.serve.app import create_app, features_from_response
    from latentbridge.serve.service import Service

    service = Service.load(tmp_path / "out" / "d1" / "lambda0.004", device="cpu")
    data = encode_image(service.module.codec, torch.rand(1, 3, 256, 256), service.lmbda)
    with TestClient(create_app(service)) as client:
        response = client.post("/v1/latent", content=data)
        info = client.get("/v1/info").json()
    assert response.status_code == 200 and features_from_response(response.content).shape == (1, 768)
    assert (
        info["accepts"]["neck"] == {"height": 256, "width": 256} and info["signature"]["vision_pipeline"] == "reference"
    )
