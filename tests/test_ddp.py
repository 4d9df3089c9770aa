"""d1 with DDP over 2 CPU processes (gloo). ddp_spawn: under pytest, "ddp" would re-run pytest in rank 1."""

import json

import pytest
import torch
from helpers.config import TINY_D1, hydra_cfg

from latentbridge.workflows.train import run as train_run


@pytest.mark.slow
def test_d1_trains_with_two_processes(tmp_path):
    overrides = [
        *TINY_D1,
        "trainer=ddp_cpu",
        "trainer.strategy=ddp_spawn",
        "trainer.devices=2",
        "callbacks.progress_bar=null",
        "data.train_size=64",
        "data.batch_size=8",
    ]
    with hydra_cfg(overrides, tmp_path) as cfg:
        results = train_run(cfg)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["metrics"] == results["metrics"] and 0 <= saved["metrics"]["top1_neck"] <= 1
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    # 64 images, batch 8, 2 ranks (distributed sampler, drop_last): 4 optimizer steps per rank in one epoch
    assert ckpt["global_step"] == 4


@pytest.mark.slow
def test_an_epoch_is_the_same_number_of_samples_on_one_and_on_two_processes(tmp_path):
    """epoch_samples: 2 processes take half the steps of 1 per epoch (the paper's schedule, twice as fast); the
    two ranks read the latent cache (litdata partitions it between them)."""
    base = [*TINY_D1, "callbacks.progress_bar=null", "data.train_size=64", "data.batch_size=8", "epoch_samples=32"]
    steps = {}
    ddp = ["trainer=ddp_cpu", "trainer.strategy=ddp_spawn", "trainer.devices=2"]
    for devices in (1, 2):
        overrides = [*base, "data.cache=true", *(ddp if devices == 2 else [])]
        with hydra_cfg(overrides, tmp_path / str(devices)) as cfg:
            train_run(cfg)  # under ddp_spawn the parent's trainer does not see the steps: read the checkpoint
        ckpt = torch.load(tmp_path / str(devices) / "run" / "checkpoints" / "last.ckpt", weights_only=True)
        steps[devices] = ckpt["global_step"]
    assert steps == {1: 32 // 8, 2: 32 // (8 * 2)}
