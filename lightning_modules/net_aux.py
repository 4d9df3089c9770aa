"""Optimization of a model with an entropy bottleneck (compressai's convention), under Lightning's automatic
optimization: the main parameters and the bottleneck's quantiles (driven by the aux loss) are two parameter
groups of one optimizer, so AMP unscaling, gradient clipping, accumulation and DDP are Lightning's own.

- Two Adams over disjoint parameters make exactly the updates of one Adam with two groups (Adam is per parameter).
- Gradient clipping (``clip_max_norm``) applies to the main group only, after Lightning has unscaled the
  gradients under 16-bit AMP.
- The learning-rate schedule applies to the main group; the quantiles keep their own constant rate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.optim import Optimizer

from latentbridge.codecs.adapter import net_aux_parameters

OptimizerFactory = Callable[..., Optimizer]
SchedulerFactory = Callable[[Optimizer], Any]


class NetAuxOptimization(L.LightningModule):
    """A LightningModule mixin: ``configure_net_aux`` builds the optimizer; clipping and scheduling as above."""

    clip_max_norm: float = 0.0

    def configure_net_aux(
        self, optimizer: OptimizerFactory, scheduler: SchedulerFactory | None, aux_lr: float
    ) -> dict[str, Any]:
        """One optimizer: group 0 = the trainable main parameters, group 1 = the quantiles (when any train)."""
        main, aux = net_aux_parameters(self)
        groups: list[dict[str, Any]] = [{"params": main}]
        if aux:
            groups.append({"params": aux, "lr": aux_lr, "weight_decay": 0.0})
        opt = optimizer(groups)
        if scheduler is None:
            return {"optimizer": opt}
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler(opt), "interval": "epoch"}}

    def configure_gradient_clipping(
        self, optimizer: Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """Clip the main group's gradient norm (Lightning calls this after unscaling AMP gradients)."""
        limit = gradient_clip_val or self.clip_max_norm
        if limit:
            torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], limit)

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """Step the schedule, then give the quantiles back their own rate."""
        scheduler.step() if metric is None else scheduler.step(metric)
        for group in scheduler.optimizer.param_groups[1:]:
            group["lr"] = group["initial_lr"]
