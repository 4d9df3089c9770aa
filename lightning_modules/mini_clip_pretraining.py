"""The mini teacher: a tiny CLIP trained here, contrastively, on Fashion-MNIST with class-name prompts.

Stands in for OpenAI CLIP in the offline mini setup. Fashion-MNIST captions are class prompts, so a batch holds
many images per caption: the contrastive objective is taken against the m de-duplicated class captions (one
random template per class per step), i.e. image-to-text InfoNCE with the learned temperature of CLIP.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric

from latentbridge.metrics.zero_shot import zero_shot_correct
from latentbridge.vision.open_clip_encoder import TEACHER_FORMAT, VisionEncoder, to_plain


class MiniClipPretraining(L.LightningModule):
    """Trains both towers of ``vision.clip``; validation reports zero-shot top-1 with all templates averaged."""

    monitor: ClassVar[tuple[str, str]] = ("val/top1", "max")
    uses: ClassVar[tuple[str, ...]] = ("vision",)

    def __init__(
        self, vision: VisionEncoder, arch: dict[str, Any], lr: float = 1e-3, weight_decay: float = 0.1, seed: int = 0
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["vision"])
        self.vision = vision.train()  # built in eval mode (as a frozen teacher); here both towers train
        self.top1 = MeanMetric()
        self.rng = random.Random(seed)

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        self.classnames, self.templates = list(dm.classnames), list(dm.templates)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        if "label" not in batch:
            return None
        clip = self.vision.clip
        images = F.normalize(clip.encode_image(batch["teacher_image"]), dim=-1)
        prompts = [self.rng.choice(self.templates).format(c) for c in self.classnames]
        texts = self.vision.encode_text(prompts)
        logits = clip.logit_scale.exp().clamp(max=100) * images @ texts.t()
        loss = F.cross_entropy(logits, batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self.text_emb = self.vision.class_embeddings(self.classnames, self.templates, cache=False)  # it trains

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        if "label" not in batch:
            return
        correct = zero_shot_correct(self.vision(batch["teacher_image"]), self.text_emb, batch["label"])
        self.top1.update(correct)
        self.log("val/top1", self.top1, on_epoch=True, prog_bar=True, batch_size=correct.shape[0])

    def configure_optimizers(self) -> Any:
        decay = [p for n, p in self.vision.named_parameters() if p.ndim >= 2 and "embedding" not in n]
        rest = [p for n, p in self.vision.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": rest, "weight_decay": 0.0}],
            lr=self.hparams.lr,
        )
        total = self.trainer.estimated_stepping_batches
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=self.hparams.lr, total_steps=max(1, int(total)), pct_start=0.1
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def export(self) -> dict[str, Any]:
        """The teacher checkpoint that ``vision.checkpoint`` points at."""
        return {
            "format": TEACHER_FORMAT,
            "arch": to_plain(self.hparams.arch),
            "state_dict": self.vision.clip.state_dict(),
        }
