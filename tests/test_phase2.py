"""Phase 2 (d2, d3) and the Post-processing baseline on tiny random models: the joint loss is the paper's formula,
each scenario trains exactly its parts, phase 2 starts from the phase-1 neck and refuses a mismatched one."""

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers.config import TINY_D1, hydra_cfg
from helpers.training import fit
from hydra.utils import instantiate

from latentbridge.cli import user_error
from latentbridge.codecs.adapter import ENTROPY_TABLES, build_codec
from latentbridge.core.errors import ConfigError
from latentbridge.losses.joint import JointLoss
from latentbridge.nn.unet import UNet
from latentbridge.runs import build_scenario
from latentbridge.workflows.train import run as train_run

TINY = [o for o in TINY_D1 if not o.startswith("trainer.max_epochs")] + [
    "data.train_subset=null",
    "data.val_subset=null",
]


def test_joint_loss_is_the_papers_formula():
    torch.manual_seed(0)
    lik = {"y": torch.rand(2, 4, 2, 2).clamp_min(0.05), "z": torch.rand(2, 3, 1, 1).clamp_min(0.05)}
    x, x_hat = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    student, teacher = torch.randn(2, 5), torch.randn(2, 5)
    rate = -(lik["y"].log2().sum() + lik["z"].log2().sum()) / (2 * 64)
    d2 = JointLoss(lmbda=0.01, gamma=60.0, delta=1.0)(lik, x, x_hat, student, teacher)
    expected = rate + 0.01 * (60.0 * F.mse_loss(x_hat, x) + 1.0 * F.mse_loss(student, teacher))
    assert torch.allclose(d2.loss, expected) and torch.allclose(d2.rate, rate)
    d3 = JointLoss(lmbda=0.01, gamma=0.0, delta=1.0)
    assert not d3.needs_reconstruction
    out = d3(lik, x, None, student, teacher)
    assert torch.allclose(out.loss, rate + 0.01 * F.mse_loss(student, teacher)) and out.recon == 0
    assert math.isclose(JointLoss(lmbda=1.0).gamma / JointLoss(lmbda=1.0).delta, 60.0)  # paper: gamma:delta = 60:1
    with pytest.raises(ConfigError, match="e1"):
        JointLoss(lmbda=0.01, e1=2)


def test_train_mode_latent_is_rounded_with_a_straight_through_gradient():
    torch.manual_seed(0)
    codec = build_codec("bmshj2018-hyperprior", arch={"N": 16, "M": 24}).train()
    x = torch.rand(1, 3, 64, 64)
    y_hat, lik = codec.latent(x)
    y = codec.model.g_a(x)
    assert torch.equal(y_hat, torch.round(y))  # what compress() codes, not y + noise
    y_hat.sum().backward()
    assert codec.model.g_a[0].weight.grad.abs().sum() > 0  # straight-through
    assert set(lik) == {"y", "z"}


def _d1_run(tmp_path, *extra: str):
    with hydra_cfg([*TINY, "trainer.max_epochs=1", *extra], tmp_path / "d1") as cfg:
        train_run(cfg)
    return tmp_path / "d1" / "run"


@pytest.fixture(scope="module")
def d1_dir(tmp_path_factory):
    """One finished tiny d1 run (phase 1) shared by the phase-2 tests."""
    return _d1_run(tmp_path_factory.mktemp("phase1"))


def _refusal(fn, *args) -> str:
    """The one-line user error that ``fn(*args)`` raises (Hydra wraps errors raised while instantiating)."""
    with pytest.raises(Exception) as err:
        fn(*args)
    found = user_error(err.value)
    assert found is not None, err.value
    return str(found)


def _phase2(tmp_path, scenario: str, d1_dir, *extra: str):
    with hydra_cfg([f"experiment=mini_{scenario}", *TINY, f"scenario.init_from={d1_dir}", *extra], tmp_path) as c:
        return instantiate(c.data), instantiate(c.scenario)


class _NeckAtFitStart(L.Callback):
    """The neck's weights when training starts (after ``setup``, where phase 2 reads its phase-1 neck)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.neck = {k: v.clone() for k, v in pl_module.neck.state_dict().items()}


def _phase2_fit_start(tmp_path, scenario: str, d1_dir, *extra: str) -> dict:
    """Build a phase-2 module and start fitting it (one step): the phase-1 neck is read at fit start."""
    dm, module = _phase2(tmp_path, scenario, d1_dir, *extra)
    capture = _NeckAtFitStart()
    fit(module, dm, epochs=1, max_steps=1, limit_val_batches=0, callbacks=[capture])
    return capture.neck


def test_d2_starts_from_the_d1_neck_and_trains_codec_and_neck(tmp_path, d1_dir):
    d1_neck = torch.load(d1_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    at_start = _phase2_fit_start(tmp_path / "start", "d2", d1_dir)
    assert at_start and all(torch.equal(v, d1_neck[f"neck.{k}"]) for k, v in at_start.items())
    dm, module = _phase2(tmp_path / "d2", "d2", d1_dir, "data.train_size=64", "scenario.optimizer.lr=1e-3")
    module.init_from_phase1(d1_dir)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    fit(module, dm)
    after = module.state_dict()
    changed = lambda prefix: any(  # noqa: E731
        not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix) and k.endswith("weight")
    )
    assert changed("codec.model.g_a.") and changed("codec.model.g_s.") and changed("neck.")
    assert not torch.equal(
        before["codec.model.entropy_bottleneck.quantiles"], after["codec.model.entropy_bottleneck.quantiles"]
    )
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("vision."))  # the encoder never trains


def test_d3_trains_the_encoder_side_and_keeps_g_s_frozen_in_eval_mode(tmp_path, d1_dir):
    dm, module = _phase2(tmp_path / "d3", "d3", d1_dir, "data.train_size=64", "scenario.optimizer.lr=1e-3")
    module.train()
    assert module.codec.model.g_a.training and not module.codec.model.g_s.training
    assert not any(p.requires_grad for p in module.codec.model.g_s.parameters())
    before = {k: v.clone() for k, v in module.state_dict().items()}
    fit(module, dm)
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("codec.model.g_s."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("codec.model.g_a."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("codec.model.h_a."))


def test_d2_run_checkpoints_codec_and_neck_without_entropy_tables_and_resumes(tmp_path, d1_dir):
    overrides = ["experiment=mini_d2", *TINY, f"scenario.init_from={d1_dir}", "trainer.max_epochs=1"]
    with hydra_cfg(overrides, tmp_path / "a") as cfg:
        results = train_run(cfg)
    assert results["scenario"] == "D2Module" and "psnr" in results["metrics"]
    last = tmp_path / "a" / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    keys = state["state_dict"]
    assert any(k.startswith("codec.model.g_s.") for k in keys) and any(k.startswith("neck.") for k in keys)
    assert not any(k.endswith(ENTROPY_TABLES) for k in keys) and not any(k.startswith("vision.") for k in keys)
    (optimizer,) = state["optimizer_states"]  # one Adam: the main parameters and the quantiles as two groups
    assert len(optimizer["param_groups"]) == 2 and optimizer["param_groups"][1]["lr"] == 1e-3
    with hydra_cfg([*overrides[:-1], "trainer.max_epochs=2", f"ckpt_path={last}"], tmp_path / "b") as cfg:
        assert train_run(cfg)["epochs"] == 2


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ("scenario.skip_blocks=1", "skip_blocks"),
        ("codec.lmbda=0.0018", "codec_lmbda"),
        ("codec.arch.N=32", "codec_arch"),
        ("data.image_size=128", "grid"),
        ("vision.arch.vision_cfg.width=64", "vision_width"),
    ],
)
def test_phase2_from_a_mismatched_phase1_checkpoint_is_refused(tmp_path, d1_dir, change, key):
    message = _refusal(_phase2_fit_start, tmp_path / "d2", "d2", d1_dir, change)
    assert message.startswith(f"scenario.init_from: checkpoint was trained with {key}="), message


def test_phase2_from_something_that_is_not_a_phase1_checkpoint_is_refused(tmp_path):
    assert _refusal(_phase2_fit_start, tmp_path, "d2", tmp_path / "nope.ckpt").endswith("nope.ckpt does not exist")
    (tmp_path / "unfinished").mkdir()
    assert "without results.json" in _refusal(_phase2_fit_start, tmp_path, "d3", tmp_path / "unfinished")
    with hydra_cfg(["experiment=mini_post_processing", *TINY, "trainer.max_epochs=1"], tmp_path / "pp") as cfg:
        train_run(cfg)
    message = _refusal(_phase2_fit_start, tmp_path / "x", "d2", tmp_path / "pp" / "run", "scenario.skip_blocks=0")
    assert "holds no transform-neck" in message, message
    with hydra_cfg(["experiment=mini_d2", *TINY], tmp_path / "m") as cfg:
        assert "scenario.init_from" in _refusal(instantiate, cfg.scenario)


def test_phase2_without_its_own_preset_says_which_preset(tmp_path):
    with hydra_cfg([*TINY, "scenario=d2", "scenario.init_from=x"], tmp_path) as cfg:
        message = _refusal(instantiate, cfg.scenario)
    assert message.startswith("loss: D2Module trains with JointLoss") and "loss=d2" in message, message
    assert "experiment=*_d2" in message, message


def test_post_processing_unet_has_the_table3_size_and_starts_as_identity():
    assert sum(p.numel() for p in UNet(64, 4).parameters()) == 31_037_763  # paper Table 3: 31.04M
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(UNet(16, 4).eval()(x), x)  # zero-initialized residual: starts at Reconstruction
    with pytest.raises(ValueError, match="divisible by 16"):
        UNet(8, 4)(torch.rand(1, 3, 40, 40))


def test_post_processing_trains_only_the_unet(tmp_path):
    overrides = ["experiment=mini_post_processing", *TINY, "data.train_size=64", "scenario.optimizer.lr=1e-3"]
    with hydra_cfg(overrides, tmp_path) as cfg:
        dm, module = instantiate(cfg.data), build_scenario(cfg)
    assert module.neck is None and module.monitor == ("val/top1_post_processing", "max")
    before = {k: v.clone() for k, v in module.state_dict().items()}
    fit(module, dm)
    after = module.state_dict()
    for k in before:
        if not k.startswith("post."):
            assert torch.equal(before[k], after[k]), k  # nothing outside the U-Net moves
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("post."))
