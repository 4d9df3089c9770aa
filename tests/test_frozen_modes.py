"""Frozen means eval inside a real ``fit`` (Lightning >= 2.2 never calls ``LightningModule.train()`` when fit starts):
for every scenario and baseline, from a fresh latent cache, an existing one and without a cache, each training batch
runs the frozen parts in eval mode, and a frozen codec hands the neck exactly the y_hat that its bitstream codes."""

from __future__ import annotations

import pytest
from helpers.config import TINY, TINY_D1, hydra_cfg
from helpers.modes import FrozenProbe

from latentbridge.core.config import hydra_quote
from latentbridge.workflows.train import run as train_run

PROBE = "+callbacks.frozen_probe._target_=helpers.modes.FrozenProbe"


def _probe(frozen: list[str], trained: list[str], coded: bool = False) -> list[str]:
    return [
        PROBE,
        f"+callbacks.frozen_probe.frozen=[{','.join(frozen)}]",
        f"+callbacks.frozen_probe.trained=[{','.join(trained)}]",
        f"+callbacks.frozen_probe.coded_y_hat={str(coded).lower()}",
    ]


def _fit(tmp_path, overrides: list[str]) -> list[dict]:
    FrozenProbe.checked.clear()
    with hydra_cfg(overrides, tmp_path) as cfg:
        train_run(cfg)
    assert FrozenProbe.checked, "the probe saw no training batch"
    return list(FrozenProbe.checked)


D1 = [
    *TINY_D1,
    "trainer.max_epochs=2",
    "data.train_size=32",
    "data.val_size=16",
    "data.batch_size=8",
    *_probe(["codec", "vision"], ["neck"], True),
]


def test_d1_from_a_fresh_cache_an_existing_cache_and_without_a_cache(tmp_path):
    cache = [f"data.cache_dir={hydra_quote(tmp_path / 'latents')}", "data.cache=true"]
    fresh = _fit(tmp_path / "fresh", [*D1, *cache])
    existing = _fit(tmp_path / "existing", [*D1, *cache])  # a second run: the cache is on disk, nothing rebuilt
    uncached = _fit(tmp_path / "uncached", [*D1, "data.cache=false"])
    for rows, cached in ((fresh, True), (existing, True), (uncached, False)):
        assert {r["epoch"] for r in rows} == {0, 1}
        assert all(r["cached"] == cached for r in rows)
        assert max(r["max_abs_diff"] for r in rows) < 1e-5


@pytest.mark.parametrize(
    ("experiment", "frozen", "trained"),
    [
        ("mini_post_processing", ["codec", "vision"], ["post"]),
        ("mini_d3", ["codec.model.g_s", "vision"], ["neck", "codec.model.g_a", "codec.model.h_a"]),
        ("mini_d2", ["vision"], ["neck", "codec"]),
        # paper 2: the teacher is frozen; the codec stays in train mode during its frozen epochs by design (its
        # gradients are dropped, its noisy rate still reaches the editor: lightning_modules/preedit_vbr.py)
        ("mini_p2", ["vision"], ["editor", "codec"]),
    ],
)
def test_every_scenario_trains_only_its_parts_in_train_mode(tmp_path, experiment, frozen, trained):
    overrides = [f"experiment={experiment}", *TINY, "trainer.max_epochs=2", "data.cache=false", "epoch_samples=null",
                 "data.train_size=32", "data.val_size=16", "data.batch_size=8", "trainer.limit_train_batches=2",
                 *_probe(frozen, trained)]  # fmt: skip
    if experiment in ("mini_d2", "mini_d3"):
        overrides.append("scenario.init_from=null")  # a random neck: this test is about modes, not phase 1
    rows = _fit(tmp_path, overrides)
    assert {r["epoch"] for r in rows} == {0, 1}
