"""The convergence rule (lightning_modules/convergence.py) inside real fits: a run stops when the mean of the last
quarter of its validations no longer improves on the quarter before by min_delta, not before min_epochs, and a run
that reaches its cap is recorded as unconverged; the curve travels in checkpoints."""

from __future__ import annotations

import pytest
import torch
from helpers.config import TINY_D1, hydra_cfg

from latentbridge.workflows.train import run as train_run
from lightning_modules.convergence import Convergence

RULE = [*TINY_D1, "callbacks=convergence", "data.train_size=32", "data.batch_size=8", "data.val_size=16"]


def test_the_rule_compares_the_last_quarter_with_the_one_before():
    rule = Convergence(min_delta=0.003)
    rule.mode = "max"
    assert rule.improvement([0.5, 0.6, 0.7]) is None  # too short: 2 windows of 2 needed
    assert rule.improvement([0.5, 0.6, 0.7, 0.8]) == (2, pytest.approx(0.2))
    w, delta = rule.improvement([0.1] * 4 + [0.70, 0.71, 0.70, 0.71, 0.711, 0.709])  # n=10: windows of 3
    assert w == 3 and delta == pytest.approx((0.71 + 0.711 + 0.709 - 0.70 - 0.71 - 0.70) / 3)
    rule.mode = "min"  # paper 2's objective: lower is better
    assert rule.improvement([4.0, 3.0, 2.0, 1.0])[1] == pytest.approx(2.0)


def test_a_run_stops_when_converged_and_records_its_curve(tmp_path):
    with hydra_cfg([*RULE, "trainer.max_epochs=12", "callbacks.convergence.min_delta=1.0"], tmp_path) as cfg:
        results = train_run(cfg)  # any improvement is below 1.0: converged at the first judgeable validation
    conv = results["convergence"]
    assert conv["converged"] and conv["stopped"] == "converged" and conv["epochs"] == 4 < 12, {
        k: v for k, v in conv.items() if k != "history"
    }
    assert len(conv["history"]) == 4 and conv["metric"] == "val/top1_neck"
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    saved = next(v for k, v in ckpt["callbacks"].items() if "Convergence" in k)["history"]
    assert saved and saved == conv["history"][: len(saved)]  # a resumed run judges the whole curve


@pytest.mark.slow  # minutes on 2 cores; make test-slow (CI runs it)
def test_min_epochs_and_the_cap(tmp_path):
    with hydra_cfg([*RULE, "trainer.max_epochs=6", "callbacks.convergence.min_delta=1.0",
                    "callbacks.convergence.min_epochs=6"], tmp_path / "a") as cfg:  # fmt: skip
        assert train_run(cfg)["convergence"]["epochs"] == 6  # judged only from epoch 6 on
    with hydra_cfg([*RULE, "trainer.max_epochs=5", "callbacks.convergence.min_epochs=99"], tmp_path / "b") as cfg:
        conv = train_run(cfg)["convergence"]  # never judged before the cap: stopped there, marked unconverged
    assert not conv["converged"] and conv["stopped"] == "max_epochs" and len(conv["history"]) == 5
