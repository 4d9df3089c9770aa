"""One transform-neck for every rate (issue: rate-conditioned neck), through the real workflows: d1_rates trains one
neck over a family of fixed-rate codecs (from the latent cache holding every member's y_hat) and over a
variable-rate codec (a rate drawn per batch); real bitstreams at every covered rate reproduce each rate's
validation; the server answers streams at every covered rate and refuses the others with one line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers.config import ROOT, TINY_D1, hydra_cfg
from omegaconf import OmegaConf

from latentbridge import routes
from latentbridge.codecs import bitstream as B
from latentbridge.codecs.adapter import VbrAdapter, build_codec
from latentbridge.codecs.family import CodecFamily
from latentbridge.workflows.evaluate import evaluate_rate_point, open_rate_point
from latentbridge.workflows.train import run as train_run
from lightning_modules.d1_rates import rate_tag

RATES = (0.0001, 0.0004)
FAMILY = [*TINY_D1, "experiment=mini_d1_rates", f"scenario.rates=[{RATES[0]},{RATES[1]}]", "data.train_size=64",
          "data.val_size=40", "data.batch_size=16", "trainer.max_epochs=2", "epoch_samples=null"]  # fmt: skip
VBR = [*FAMILY, "experiment=mini_d1_rates_vbr", "data.cache=false"]


@pytest.fixture(scope="module")
def family_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("family")
    with hydra_cfg([*FAMILY, "data.cache=true"], tmp) as cfg:
        results = train_run(cfg)
    return tmp / "run", results


def test_a_family_run_trains_one_neck_that_reproduces_every_rates_validation_on_real_bitstreams(family_run):
    """The fit validated each rate from the cache (each member's y_hat, the neck told that member's rate); coding the
    same images to bytes at each rate, decoding with the member the header names and conditioning the neck on the
    header's rate gives exactly those top-1s: the cache's members, the rates and the bitstream path agree."""
    run_dir, trained = family_run
    assert trained["codec"] == {"name": "mini", "lmbda": None, "rates": list(RATES)}
    assert trained["steps"] == 8  # 2 epochs of 64 / 16
    trainer = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}
    settings = OmegaConf.create({"limit": None, "batch_size": 16, "few_shot_groups": 0, "seed": 0, "trainer": trainer})
    run, dm = open_rate_point(run_dir, settings)
    module = run.module
    assert isinstance(module.codec, CodecFamily) and module.codec.rates == RATES
    assert module.neck.rate_range == RATES and module.neck.film[-1].weight.abs().sum() > 0  # FiLM trained
    for rate in RATES:
        module.eval_rate = rate
        row = evaluate_rate_point(run, dm, settings)
        assert row["images"] == 40
        assert row["method"]["top1"] == pytest.approx(trained["metrics"][f"top1_neck_{rate_tag(rate)}"], abs=1e-6)
        val_recon = trained["metrics"][f"top1_reconstruction_{rate_tag(rate)}"]
        assert row["reconstruction"]["top1"] == pytest.approx(val_recon, abs=1e-6)
    assert trained["metrics"]["top1_neck"] == pytest.approx(
        sum(trained["metrics"][f"top1_neck_{rate_tag(r)}"] for r in RATES) / len(RATES), abs=1e-6
    )


def test_the_neck_depends_on_the_rate_it_is_told(family_run):
    run_dir, _ = family_run
    from latentbridge.runs import open_run

    module = open_run(run_dir).module
    y = torch.randn(3, module.codec.latent_channels, *module.neck.grid_size)
    with torch.no_grad():
        assert not torch.allclose(module.neck(y, RATES[0]), module.neck(y, RATES[1]))


def test_a_variable_rate_run_codes_each_batch_at_a_rate_drawn_in_its_range(tmp_path, monkeypatch):
    """Inside a real fit: every training step codes its batch at one gain, drawn per step within the gains of
    [min(rates), max(rates)]; validation codes every image at each rate's gain."""
    gains: list[tuple[bool, float]] = []
    latent = VbrAdapter.latent

    def recording(self, x, gain=None):
        gains.append((torch.is_grad_enabled(), float(gain)))
        return latent(self, x, gain)

    monkeypatch.setattr(VbrAdapter, "latent", recording)
    with hydra_cfg(VBR, tmp_path) as cfg:
        results = train_run(cfg)
    ladder = build_codec("mini-vbr", arch={"N": 48, "M": 64}).ladder
    lo, hi = (ladder.gain(ladder.q(r)) for r in RATES)
    training = [g for grad, g in gains if grad]
    assert len(training) == results["steps"] == 8
    assert len(set(training)) == 8 and all(lo <= g <= hi for g in training)
    assert {g for grad, g in gains if not grad} == {lo, hi}
    assert f"top1_neck_{rate_tag(RATES[1])}" in results["metrics"]


def test_rates_outside_what_the_codec_codes_or_a_plain_neck_are_one_line_errors(tmp_path):
    """Refused when the module is built (the CLI prints the ConfigError's one line, exit 2)."""
    from hydra.errors import InstantiationException

    from latentbridge.core.errors import ConfigError

    cases = [
        (["neck=transform_neck"], "neck: d1_rates trains a rate-conditioned neck"),
        (
            ["experiment=mini_d1_rates_vbr", "scenario.rates=[0.0001,0.01]"],
            "lambda=0.01 is outside this codec's ladder",
        ),
        (["scenario.rates=[0.0001,0.0001]"], "repeats a rate point"),
        (["loss.token_weight=1.0"], "token distillation is not implemented for d1_rates"),
    ]
    for extra, message in cases:
        with (
            hydra_cfg([*FAMILY, *extra], tmp_path) as cfg,
            pytest.raises((ConfigError, InstantiationException), match=message),
        ):
            train_run(cfg)


def test_evaluating_a_rate_the_run_does_not_cover_exits_2_naming_it(family_run, tmp_path):
    run_dir, _ = family_run
    args = [f"runs=[{run_dir}]", "rates=[0.0002]", f"paths.output_dir={tmp_path}", "wandb=false", "limit=8"]
    res = subprocess.run([sys.executable, "evaluate.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "rates: rate lambda=0.0002 is not one this run covers (lambda 0.0001, 0.0004)" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("workers", [0, 1])
def test_one_served_run_answers_every_covered_rate_and_refuses_the_others(family_run, workers):
    """A family run behind the server: a stream from each member gets the neck's features at the header's rate; a
    stream of the same codec at a rate the run does not cover is a one-line 400 naming it (decoded in the server
    process or in a decode worker); /v1/info lists the rates."""
    from fastapi.testclient import TestClient

    from latentbridge.serve.app import create_app, features_from_response
    from latentbridge.serve.service import Service

    run_dir, _ = family_run
    service = Service.load(run_dir, device="cpu", max_pixels=256 * 256)
    family = service.module.codec
    g = torch.Generator().manual_seed(0)
    with TestClient(create_app(service, max_wait_ms=20.0, decode_workers=workers)) as client:
        info = client.get("/v1/info").json()
        assert info["codec"]["rates"] == list(RATES) and info["codec"]["lmbda"] is None
        for rate in RATES:
            data = B.encode_image(family.member(rate), torch.rand(1, 3, 32, 32, generator=g), rate)
            response = client.post("/v1/latent", content=data)
            assert response.status_code == 200, response.text
            y_hat, _ = B.decode_latent(family.member(rate), data, rate)
            with torch.no_grad():
                expected = routes.neck(service.parts["neck"], y_hat, torch.tensor([rate], dtype=torch.float64))
                assert not torch.equal(
                    expected,
                    routes.neck(
                        service.parts["neck"], y_hat, torch.tensor([RATES[0] + RATES[1] - rate], dtype=torch.float64)
                    ),
                )
            assert torch.equal(features_from_response(response.content), expected)
            recon = client.post("/v1/latent?path=reconstruction", content=data)
            with torch.no_grad():
                expected = routes.decoded_image(service.parts["reconstruction"], family.member(rate).synthesize(y_hat))
            assert torch.equal(features_from_response(recon.content), expected)
        other = build_codec("mini", arch={"N": 48, "M": 64}, lmbda=0.0002).eval()
        other.update_tables()
        refused = client.post("/v1/latent", content=B.encode_image(other, torch.rand(1, 3, 32, 32), 0.0002))
    assert refused.status_code == 400
    assert refused.json()["error"].endswith("rate lambda=0.0002 is not one this run covers (lambda 0.0001, 0.0004)")


def test_a_variable_rate_run_is_served_at_any_rate_in_its_range_only(tmp_path):
    from fastapi.testclient import TestClient

    from latentbridge.serve.app import create_app, features_from_response
    from latentbridge.serve.service import Service

    with hydra_cfg([*VBR, "trainer.max_epochs=1"], tmp_path) as cfg:
        train_run(cfg)
    service = Service.load(tmp_path / "run", device="cpu", max_pixels=256 * 256)
    codec, ladder = service.module.codec, service.module.codec.ladder
    x = torch.rand(1, 3, 32, 32)
    with TestClient(create_app(service, max_wait_ms=20.0, decode_workers=0)) as client:
        inside = ladder.gain(ladder.q(2e-4))  # not a validation rate: any rate in the range
        data = B.encode_image(codec, x, inside)
        response = client.post("/v1/latent", content=data)
        y_hat, _ = B.decode_latent(codec, data)
        with torch.no_grad():
            expected = routes.neck(
                service.parts["neck"], y_hat, torch.tensor([inside * inside * ladder.lmbda_ref], dtype=torch.float64)
            )
        assert torch.equal(features_from_response(response.content), expected)
        outside = B.encode_image(codec, x, ladder.gain(ladder.q(3.2e-3)))  # inside the codec's ladder, not the neck's
        refused = client.post("/v1/latent", content=outside)
    assert refused.status_code == 400
    assert "rate 0.0032 is outside the range this neck was trained on [0.0001, 0.0004]" in refused.json()["error"]


def test_the_complexity_report_counts_one_conditioned_neck_and_one_members_decoder(tmp_path):
    """Paper 4.4's rows for a rate-conditioned run: the neck with its FiLM (the paper's neck + 2 * width * hidden +
    width-independent terms), g_s of one family member, MACs at the lowest rate."""
    from latentbridge.analysis.complexity import complexity
    from latentbridge.nn.transform_neck import TransformNeck

    with hydra_cfg([*FAMILY, "data.cache=false"], tmp_path) as cfg:
        rows = {r.component: r for r in complexity(cfg)}
    width, hidden = 128, 64  # the mini teacher's width, neck=rate_conditioned's FiLM width
    plain = sum(p.numel() for p in TransformNeck(64, width, 4, 4).parameters())
    assert rows["transform-neck"].params == plain + (1 * hidden + hidden) + (hidden * 2 * width + 2 * width)
    assert rows["codec decoder g_s"].params == sum(
        p.numel() for p in build_codec("mini", arch={"N": 48, "M": 64}).model.g_s.parameters()
    )
    assert rows["transform-neck"].macs > 0


def test_a_familys_checkpoints_and_preparation_follow_each_rate(tmp_path):
    """``codec.checkpoint='/ckpt/elic_${codec.lmbda}.pt'`` names the paper's four ELICs; the mini's recipe prepares
    each missing member at its own rate."""
    from latentbridge.runs import codec_nodes

    with hydra_cfg(["experiment=paper_d1_rates", "codec.checkpoint=/ckpt/elic_${codec.lmbda}.pt"], tmp_path) as cfg:
        assert [n.checkpoint for n in codec_nodes(cfg)] == [f"/ckpt/elic_{r}.pt" for r in (0.004, 0.008, 0.016, 0.032)]
    with hydra_cfg(["experiment=mini_d1_rates"], tmp_path) as cfg:
        nodes = codec_nodes(cfg)
        assert [n.checkpoint.rsplit("/", 1)[1] for n in nodes] == [
            f"mini_s8_lambda{r}.pt" for r in (0.0001, 0.0002, 0.0004, 0.0008)
        ]
        assert [list(n.prepare) for n in nodes][1] == ["experiment=mini_codec", "codec.lmbda=0.0002"]
    with hydra_cfg(["experiment=mini_d1_rates_vbr"], tmp_path) as cfg:
        assert [n.checkpoint for n in codec_nodes(cfg)] == [cfg.codec.checkpoint]  # one variable-rate model


@pytest.mark.slow
def test_a_variable_rate_run_killed_mid_epoch_resumes_to_the_weights_of_the_run_left_alone(tmp_path):
    """The rate drawn for a step is a function of the step: kill -9 in the second epoch, resume from last.ckpt, and the
    neck ends exactly where the uninterrupted run did (every step at the rate it would have had)."""
    import os

    from latentbridge.core.config import hydra_quote

    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    overrides = [*VBR, "data.batch_size=8", "trainer.max_epochs=3"]  # 8 steps per epoch

    def train(name, *extra):
        run_dir = tmp_path / name
        paths = [f"paths.output_dir={hydra_quote(run_dir)}", f"paths.cache_dir={hydra_quote(tmp_path / 'cache')}"]
        cmd = [sys.executable, str(ROOT / "train.py"), *overrides, *paths, *extra]
        return subprocess.run(cmd, env=env, capture_output=True, text=True), run_dir

    done, alone = train("alone")
    assert done.returncode == 0, done.stderr[-2000:]
    killer = ["+callbacks.kill._target_=helpers.interrupt.SignalAt", "+callbacks.kill.step=13"]
    killed, run_dir = train("resumed", *killer)
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed, _ = train("resumed", f"ckpt_path={hydra_quote(run_dir / 'checkpoints' / 'last.ckpt')}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True) for d in (alone, run_dir))
    assert a["global_step"] == b["global_step"] == 24
    assert [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])] == []
