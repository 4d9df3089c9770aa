"""Train until converged, by a rule stated before the runs (issue: mini reproductions that train to convergence).

After every validation the monitored metric (the module's own ``monitor``: ``val/top1_neck`` for d1, ``val/objective``
for paper 2) is appended to the run's history. With ``n`` evaluations so far and a window ``w = max(2, ceil(n / 4))``
(the last quarter of the run), the run has **converged** when ``n >= 2 w``, at least ``min_epochs`` epochs are done,
and the mean of the last ``w`` values improves on the mean of the ``w`` before by less than ``min_delta`` (in the
metric's direction; 0.003 = 0.3 points of top-1). Means over windows, not single values: one validation of 5,000
images has a standard error of ~0.6 points of top-1, twice the threshold. Training then stops; a run that reaches
``trainer.max_epochs`` without converging is marked unconverged (``results.json["convergence"]``, the report), never
silently reported as converged. The history travels in checkpoints, so a resumed run judges its whole curve.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from latentbridge.core.errors import ConfigError


class Convergence(Callback):
    def __init__(self, min_delta: float = 0.003, min_epochs: int = 1) -> None:
        if min_delta < 0 or min_epochs < 0:
            raise ConfigError("callbacks.convergence: min_delta and min_epochs must not be negative")
        self.min_delta, self.min_epochs = float(min_delta), int(min_epochs)
        self.history: list[dict[str, float]] = []
        self.converged_at: int | None = None
        self.metric: str | None = None
        self.mode = "max"

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "converged_at": self.converged_at}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.converged_at = state_dict.get("converged_at")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.metric, self.mode = pl_module.monitor

    def improvement(self, values: list[float]) -> tuple[int, float] | None:
        """(window, mean of the last window minus the one before, in the improving direction), or None if the run is
        too short to judge."""
        n = len(values)
        w = max(2, math.ceil(n / 4))
        if n < 2 * w:
            return None
        last, before = values[-w:], values[-2 * w : -w]
        delta = sum(last) / w - sum(before) / w
        return w, delta if self.mode == "max" else -delta

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        fitting = trainer.state.fn == "fit"  # not trainer.validate after fit (it restores the best checkpoint)
        if not fitting or trainer.sanity_checking or self.metric is None or self.metric not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.metric])
        self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, "value": value})
        judged = self.improvement([h["value"] for h in self.history])
        if judged is None or trainer.current_epoch + 1 < self.min_epochs:
            return
        if judged[1] < self.min_delta:
            self.converged_at = trainer.current_epoch
            trainer.should_stop = True

    def summary(self, trainer: L.Trainer) -> dict[str, Any]:
        """What results.json records: converged or not, when, the rule and the whole curve."""
        judged = self.improvement([h["value"] for h in self.history])
        return {
            "converged": self.converged_at is not None,
            "stopped": "converged" if self.converged_at is not None else "max_epochs",
            "epochs": trainer.current_epoch,
            "steps": trainer.global_step,
            "metric": self.metric,
            "mode": self.mode,
            "rule": f"mean of the last quarter of validations improves on the quarter before by < {self.min_delta:g} "
            f"(min_epochs={self.min_epochs})",
            "last_window_improvement": None if judged is None else round(judged[1], 6),
            "history": self.history,
        }
