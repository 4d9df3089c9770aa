"""GPU smoke tests: every scenario trains, validates and evaluates through real bitstreams on CUDA under each
precision the presets use (16-mixed with a GradScaler, bf16-mixed). Skipped without a GPU (``RunIf``); run them
with ``make test-gpu`` wherever one is available."""

from __future__ import annotations

import math

import pytest
from helpers.config import TINY, hydra_cfg
from helpers.run_if import RunIf

from latentbridge.workflows.train import run as train_run

SCENARIOS = ["mini_d1", "mini_d2", "mini_d3", "mini_post_processing", "mini_codec"]


@pytest.mark.gpu
@RunIf(min_gpus=1)
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
@pytest.mark.parametrize("experiment", SCENARIOS)
def test_every_scenario_trains_on_a_gpu_under_amp(experiment, precision, tmp_path):
    overrides = [f"experiment={experiment}", *TINY, "trainer=gpu", f"trainer.precision={precision}"]
    overrides += ["trainer.max_epochs=2"]
    if experiment in ("mini_d2", "mini_d3"):
        overrides.append("scenario.init_from=null")
    if experiment == "mini_post_processing":
        overrides.append("scenario.post.base_channels=4")
    with hydra_cfg(overrides, tmp_path) as cfg:
        results = train_run(cfg)
    assert results["epochs"] == 2 and all(math.isfinite(v) for v in results["metrics"].values()), results


@pytest.mark.gpu
@RunIf(min_gpus=1)
def test_evaluation_runs_on_the_gpu_and_equals_the_cpu_result(tmp_path):
    """trainer.test through real bitstreams on cuda gives the CPU's rate and accuracy (same bytes, same labels)."""
    from omegaconf import OmegaConf

    from latentbridge.workflows.evaluate import evaluate_rate_point, open_rate_point

    with hydra_cfg([*TINY, "trainer.max_epochs=1"], tmp_path) as cfg:
        train_run(cfg)
    rows = {}
    for accelerator in ("cpu", "cuda"):
        settings = OmegaConf.create({"limit": 32, "batch_size": 16, "few_shot_groups": 0, "seed": 0,
                                     "trainer": {"accelerator": accelerator, "devices": 1}})  # fmt: skip
        run, dm = open_rate_point(tmp_path / "run", settings)
        rows[accelerator] = evaluate_rate_point(run, dm, settings)
    assert rows["cpu"]["images"] == rows["cuda"]["images"] == 32
    assert rows["cuda"]["method"]["top1"] == pytest.approx(rows["cpu"]["method"]["top1"], abs=1 / 32)
    assert rows["cuda"]["psnr"] == pytest.approx(rows["cpu"]["psnr"], abs=0.05)


@pytest.mark.gpu
@RunIf(min_gpus=1)
def test_the_fast_d1_path_trains_on_a_gpu(tmp_path):
    """The benchmark's fastest variant as a run: latent cache, bf16-mixed, compiled neck and blocks, channels_last
    codec, fused Adam; the final validation is finite and the cache was used."""
    overrides = [*TINY, "trainer=gpu", "trainer.precision=bf16-mixed", "trainer.max_epochs=2", "data.cache=true"]
    overrides += ["scenario.compile=true", "codec.channels_last=true", "scenario.optimizer.fused=true"]
    with hydra_cfg(overrides, tmp_path) as cfg:
        results = train_run(cfg)
    assert results["epochs"] == 2 and all(math.isfinite(v) for v in results["metrics"].values()), results
    assert list((tmp_path / "cache" / "latents").rglob("signature.json"))
