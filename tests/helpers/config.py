"""Compose the real Hydra configs with small overrides, offline; outputs and caches under a test's tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from latentbridge.core.config import hydra_quote, register_resolvers

ROOT = Path(__file__).resolve().parents[2]
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
    "epoch_samples=null",
]
# TINY_D1 without an epoch count or subsets: for phase 2 and the presets, which set their own.
TINY = [o for o in TINY_D1 if not o.startswith("trainer.max_epochs")] + [
    "data.train_subset=null",
    "data.val_subset=null",
]


@contextmanager
def hydra_cfg(overrides: list[str], tmp_path: Path, config_name: str = "train") -> Iterator:
    """Compose ``conf/<config_name>.yaml`` with ``overrides``; outputs and cache under ``tmp_path``. Hydra stays
    initialized inside the block (training composes the preparation runs)."""
    from hydra import compose, initialize_config_dir

    register_resolvers()
    paths = [f"paths.output_dir={hydra_quote(tmp_path / 'run')}", f"paths.cache_dir={hydra_quote(tmp_path / 'cache')}"]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        yield compose(config_name, overrides=[*paths, *overrides])


needs_fmnist = pytest.mark.skipif(not FMNIST.is_dir(), reason="apt-get install dataset-fashion-mnist")
