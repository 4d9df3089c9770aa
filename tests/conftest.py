"""Shared test helpers: compose the real Hydra configs with small overrides, offline."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
FMNIST = Path("/usr/share/datasets/fashion-mnist")

# A tiny but complete d1 setup: random mini codec and random mini teacher on synthetic images, CPU, no logger.
TINY_D1 = [
    "data=synthetic",
    "codec.checkpoint=null",
    "vision.checkpoint=null",
    "logger=none",
    "callbacks.progress_bar=null",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_model_summary=false",
]


@contextmanager
def hydra_cfg(overrides: list[str], tmp_path: Path) -> Iterator:
    """Compose conf/train.yaml with ``overrides``; outputs and cache under ``tmp_path``; Hydra stays initialized
    inside the block (``train.run`` composes the preparation runs)."""
    from hydra import compose, initialize_config_dir

    from train import hydra_quote  # importing train registers the resolvers

    paths = [f"paths.output_dir={hydra_quote(tmp_path / 'run')}", f"paths.cache_dir={hydra_quote(tmp_path / 'cache')}"]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[*paths, *overrides])
        yield cfg


def fit(module, datamodule, epochs: int = 2) -> None:
    """Fit ``module`` for ``epochs`` on CPU with nothing written (no logger, no checkpoints, no progress bar)."""
    import lightning as L

    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, datamodule=datamodule)


needs_fmnist = pytest.mark.skipif(not FMNIST.is_dir(), reason="apt-get install dataset-fashion-mnist")
