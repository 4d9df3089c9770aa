"""Phase 0: train a codec for human perception (paper 4.1; compressai's convention).

loss = lambda * 255^2 * MSE(x, x_hat) + bpp, with the entropy bottleneck's quantile (aux) loss on its own
optimizer, stepped explicitly. No ELIC weights are published, so d1 starts from this.
"""

from __future__ import annotations

from typing import Any, ClassVar

import lightning as L
import torch
from compressai.losses import RateDistortionLoss
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.functional.image import peak_signal_noise_ratio

from models.codec_adapter import CodecAdapter, codec_checkpoint


class CodecPretraining(L.LightningModule):
    """Rate-distortion training of one rate point (``lmbda``); export() gives the codec checkpoint."""

    monitor: ClassVar[tuple[str, str]] = ("val/rd_loss", "min")

    def __init__(
        self,
        codec: CodecAdapter,
        lmbda: float,
        lr: float = 1e-4,
        aux_lr: float = 1e-3,
        clip_max_norm: float = 1.0,
        milestones: tuple[int, ...] = (),
        gamma: float = 0.1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["codec"])
        self.codec = codec
        self.rd_loss = RateDistortionLoss(lmbda=lmbda)
        self.automatic_optimization = False
        self.val_metrics = torch.nn.ModuleDict({k: MeanMetric() for k in ("rd_loss", "bpp", "psnr")})

    def configure_optimizers(self) -> Any:
        main = [p for n, p in self.codec.named_parameters() if not n.endswith(".quantiles")]
        aux = [p for n, p in self.codec.named_parameters() if n.endswith(".quantiles")]
        opt = torch.optim.Adam(main, lr=self.hparams.lr)
        aux_opt = torch.optim.Adam(aux, lr=self.hparams.aux_lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=list(self.hparams.milestones), gamma=self.hparams.gamma
        )
        return [opt, aux_opt], [sched]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        if "image" not in batch:
            return
        opt, aux_opt = self.optimizers()
        x = batch["image"]
        out = self.rd_loss(self.codec(x), x)
        opt.zero_grad()
        self.manual_backward(out["loss"])
        if self.hparams.clip_max_norm:
            self.clip_gradients(opt, gradient_clip_val=self.hparams.clip_max_norm, gradient_clip_algorithm="norm")
        opt.step()
        aux_loss = self.codec.aux_loss()
        aux_opt.zero_grad()
        self.manual_backward(aux_loss)
        aux_opt.step()
        bs = x.shape[0]
        self.log("train/rd_loss", out["loss"], prog_bar=True, batch_size=bs)
        self.log("train/bpp", out["bpp_loss"], batch_size=bs)
        self.log("train/mse", out["mse_loss"], batch_size=bs)
        self.log("train/aux_loss", aux_loss, batch_size=bs)

    def on_train_epoch_end(self) -> None:
        self.lr_schedulers().step()  # one scheduler, for the main optimizer (manual optimization)

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        if "image" not in batch:
            return
        x = batch["image"]
        out = self.codec(x)  # eval mode: quantized as coded, so its likelihoods and x_hat are those of y_hat
        rd = self.rd_loss(out, x)
        values = {
            "rd_loss": rd["loss"],
            "bpp": rd["bpp_loss"],
            "psnr": peak_signal_noise_ratio(out["x_hat"].clamp(0, 1), x, data_range=1.0),
        }
        for k, v in values.items():
            self.val_metrics[k].update(v, weight=x.shape[0])
            self.log(f"val/{k}", self.val_metrics[k], on_epoch=True, batch_size=x.shape[0], prog_bar=k != "rd_loss")

    def export(self) -> dict[str, Any]:
        """The codec checkpoint that ``codec.checkpoint`` points at (entropy tables updated)."""
        return codec_checkpoint(self.codec, lmbda=self.hparams.lmbda)
