"""d1 end to end on tiny random models: learning happens, the codec stays frozen, runs resume, checkpoints hold
only what trains, bad checkpoints are refused."""

import json

import pytest
import torch
from helpers.config import TINY_D1, hydra_cfg
from helpers.training import fit
from hydra.utils import instantiate

from latentbridge import routes
from latentbridge.core.errors import CheckpointError
from latentbridge.runs import build_scenario
from latentbridge.workflows.train import run as train_run


def test_neck_learns_distillation_while_codec_and_teacher_stay_frozen(tmp_path):
    """A few epochs of distillation-only d1 cut the distillation MSE; codec and teacher do not move."""
    import lightning as L

    overrides = [*TINY_D1, "loss.e1=0", "loss.e2=0", "scenario.optimizer.lr=1e-3", "data.train_size=128"]
    with hydra_cfg(overrides, tmp_path) as cfg:
        L.seed_everything(0)
        dm, module = instantiate(cfg.data), build_scenario(cfg)
    module.set_classes(dm.classnames, dm.templates)
    frozen_before = {k: v.clone() for k, v in module.state_dict().items() if not k.startswith("neck.")}
    batch = next(iter(dm.val_dataloader()))

    def dist() -> float:
        module.eval()
        with torch.no_grad():
            y_hat, _ = module.codec.latent(batch["image"])
            return torch.nn.functional.mse_loss(
                routes.neck(module, y_hat), module.teacher_embedding(batch["teacher_image"])
            ).item()

    before = dist()
    fit(module, dm, epochs=6)
    after = dist()
    assert after < 0.5 * before, (before, after)
    for k, v in module.state_dict().items():
        if k in frozen_before:
            assert torch.equal(v, frozen_before[k]), f"frozen tensor {k} changed"


def test_codec_and_teacher_stay_in_eval_mode_during_training(tmp_path):
    with hydra_cfg(TINY_D1, tmp_path) as cfg:
        module = build_scenario(cfg)
    module.train()
    assert module.neck.training
    assert not module.codec.training and not any(m.training for m in module.codec.modules())
    assert not module.vision.training


def test_run_writes_results_and_a_checkpoint_with_only_the_neck(tmp_path):
    with hydra_cfg(TINY_D1, tmp_path) as cfg:
        results = train_run(cfg)
    out = tmp_path / "run"
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    for key in ("bpp", "top1_uncompressed", "top1_neck", "top1_reconstruction"):
        assert 0.0 <= saved["metrics"][key] <= (1.0 if key.startswith("top1") else 64.0)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["state_dict"] and all(k.startswith("neck.") for k in ckpt["state_dict"])
    assert ckpt["latentbridge"]["codec"] == "mini" and ckpt["latentbridge"]["skip_blocks"] == 2


def test_resume_continues_from_last_checkpoint(tmp_path):
    with hydra_cfg(TINY_D1, tmp_path / "a") as cfg:
        train_run(cfg)
    last = tmp_path / "a" / "run" / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=True)
    with hydra_cfg([*TINY_D1, "trainer.max_epochs=2", f"ckpt_path={last}"], tmp_path / "b") as cfg:
        results = train_run(cfg)
    resumed = torch.load(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["epoch"] == 0 and resumed["epoch"] == 1 and results["epochs"] == 2
    assert first["global_step"] < resumed["global_step"]


def test_resume_from_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    with hydra_cfg(TINY_D1, tmp_path / "a") as cfg:
        train_run(cfg)
    last = tmp_path / "a" / "run" / "checkpoints" / "last.ckpt"
    with hydra_cfg([*TINY_D1, "codec.arch.M=32", f"ckpt_path={last}", "trainer.max_epochs=2"], tmp_path / "b") as cfg:
        with pytest.raises(CheckpointError, match="codec_arch"):
            train_run(cfg)
    with hydra_cfg([*TINY_D1, f"ckpt_path={tmp_path / 'missing.ckpt'}"], tmp_path / "c") as cfg:
        with pytest.raises(CheckpointError, match="ckpt_path: .* does not exist"):
            train_run(cfg)


def test_wandb_logs_offline_without_an_api_key_one_wandb_run_per_run(tmp_path, monkeypatch):
    """Offline without a key; two runs in one process (as preparation + main run) get their own wandb runs."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for name in ("a", "b"):
        with hydra_cfg([*TINY_D1, "logger=wandb", "final_eval=false"], tmp_path / name) as cfg:
            assert cfg.logger.wandb.offline is True
            train_run(cfg)
    for name in ("a", "b"):
        assert len(list((tmp_path / name / "run" / "wandb").glob("offline-run-*"))) == 1
