"""Phase 0: train a codec for human perception (paper 4.1; compressai's convention).

loss = lambda * 255^2 * MSE(x, x_hat) + bpp, with the entropy bottleneck's quantile (aux) loss on its own
parameter group (``net_aux.py``). No ELIC weights are published, so d1 starts from this.

A variable-rate codec (paper 2, ``codecs/vbr.py``) trains for every rate at once: each batch draws its rate point
q ~ U[0, 1] and uses lambda(q) of the codec's ladder (as compressai's own MOO training draws its levels, but
continuous); validation averages the loss over q in ``val_rates``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from compressai.losses import RateDistortionLoss
from torch import Tensor
from torchmetrics import MeanMetric

from latentbridge.codecs.adapter import CodecAdapter, codec_checkpoint
from latentbridge.core.errors import ConfigError
from latentbridge.metrics.image_quality import psnr_metric
from lightning_modules.net_aux import NetAuxOptimization, OptimizerFactory, SchedulerFactory


class CodecPretraining(NetAuxOptimization):
    """Rate-distortion training of one rate point (``lmbda``); export() gives the codec checkpoint."""

    monitor: ClassVar[tuple[str, str]] = ("val/rd_loss", "min")
    uses: ClassVar[tuple[str, ...]] = ("codec",)

    def __init__(
        self,
        codec: CodecAdapter,
        lmbda: float | None,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        aux_lr: float = 1e-3,
        clip_max_norm: float = 1.0,
        val_rates: tuple[float, ...] = (0.0, 0.5, 1.0),
        fixed_rate: float | None = None,
    ) -> None:
        """``fixed_rate`` (a lambda of a variable-rate codec's ladder): train that architecture at this one rate (the
        fixed-rate models of paper 2's finding F1: the same architecture, recipe and budget, one rate each)."""
        super().__init__()
        if not codec.variable_rate and not (lmbda is not None and lmbda > 0):
            raise ConfigError(f"codec.lmbda: {lmbda} is not a positive rate-distortion weight")
        if fixed_rate is not None and not codec.variable_rate:
            raise ConfigError("scenario.fixed_rate: for variable-rate codecs (a fixed-rate codec has codec.lmbda)")
        self.save_hyperparameters(ignore=["codec", "optimizer", "scheduler"])
        self.codec = codec
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.clip_max_norm = float(clip_max_norm)
        self.rd_loss = RateDistortionLoss(lmbda=lmbda or 1.0)
        self.fixed_q = None if fixed_rate is None else codec.ladder.q(float(fixed_rate))
        self.val_q = [float(q) for q in val_rates] if codec.variable_rate else [None]
        if self.fixed_q is not None:
            self.val_q = [self.fixed_q]
        self.val_metrics = torch.nn.ModuleDict({k: MeanMetric() for k in ("rd_loss", "bpp")})
        self.val_psnr = psnr_metric()

    def configure_optimizers(self) -> Any:
        return self.configure_net_aux(self.optimizer_factory, self.scheduler_factory, self.hparams.aux_lr)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        if "image" not in batch:
            return None
        x = batch["image"]
        q = self.fixed_q if self.fixed_q is not None else float(torch.rand(())) if self.codec.variable_rate else None
        out = self.rd(x, q)
        aux_loss = self.codec.aux_loss()  # the quantiles only: their own parameter group
        bs = x.shape[0]
        self.log("train/rd_loss", out["loss"], prog_bar=True, batch_size=bs)
        self.log("train/bpp", out["bpp_loss"], batch_size=bs)
        self.log("train/mse", out["mse_loss"], batch_size=bs)
        self.log("train/aux_loss", aux_loss, batch_size=bs)
        return out["loss"] + aux_loss

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        if "image" not in batch:
            return
        x = batch["image"]
        bs = x.shape[0]
        for q in self.val_q:  # eval mode: quantized as coded, so the likelihoods and x_hat are those of y_hat
            rd = self.rd(x, q)
            self.val_metrics["rd_loss"].update(rd["loss"], weight=bs)
            self.val_metrics["bpp"].update(rd["bpp_loss"], weight=bs)
            self.val_psnr.update(rd["x_hat"].clamp(0, 1), x)
        for k, metric in {**self.val_metrics, "psnr": self.val_psnr}.items():
            self.log(f"val/{k}", metric, on_epoch=True, batch_size=bs, prog_bar=k != "rd_loss")

    def rd(self, x: Tensor, q: float | None) -> dict[str, Tensor]:
        """compressai's ``RateDistortionLoss`` at the codec's lambda, or at lambda(q) of a variable-rate ladder."""
        if q is None:
            out = self.codec(x)
            return {**self.rd_loss(out, x), "x_hat": out["x_hat"]}
        ladder = self.codec.ladder
        out = self.codec(x, ladder.gain(q))
        return {**RateDistortionLoss(lmbda=ladder.lmbda(q))(out, x), "x_hat": out["x_hat"]}

    def export(self) -> dict[str, Any]:
        """The codec checkpoint that ``codec.checkpoint`` points at (entropy tables updated)."""
        return codec_checkpoint(self.codec, lmbda=self.hparams.lmbda)
