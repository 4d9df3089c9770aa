"""The shared base of every scenario and baseline (paper Fig. 2, Table 1).

codec (g_a, entropy model) -> y_hat -> transform-neck T -> C' (C with its first k blocks skipped) -> embedding.
A scenario only declares which parts train (``trainable``) and which loss applies (``training_loss``).
Validation reports, for every scenario, zero-shot top-1 of three paths and the rate:
- ``uncompressed``: C(x), the teacher on the original image (the upper bound),
- ``neck``: C'(T(y_hat)), the proposed path,
- ``reconstruction``: C(g_s(y_hat)), the Reconstruction baseline (paper 4.1),
- ``bpp``: the likelihood estimate of the coded y_hat and z_hat.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from latentbridge.errors import CheckpointError, ConfigError
from models.codec_adapter import CodecAdapter, bits_per_pixel
from models.surrogate_loss import SurrogateLoss, SurrogateLossOutput, zero_shot_correct
from models.transform_neck import TransformNeck
from models.vision_encoder import VisionEncoder

PATHS = ("uncompressed", "neck", "reconstruction")


class BridgeModule(L.LightningModule):
    """Codec + transform-neck + vision encoder, evaluated on the three paths."""

    #: submodules whose parameters train; everything else is frozen and kept in eval mode
    trainable: ClassVar[tuple[str, ...]] = ("neck",)
    #: the metric that selects the best checkpoint
    monitor: ClassVar[tuple[str, str]] = ("val/top1_neck", "max")

    def __init__(
        self,
        codec: CodecAdapter,
        vision: VisionEncoder,
        neck: Callable[..., TransformNeck],
        loss: SurrogateLoss,
        skip_blocks: int = 2,
        image_size: int = 256,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= skip_blocks < vision.num_blocks:
            raise ConfigError(f"scenario.skip_blocks: {skip_blocks} not in [0, {vision.num_blocks}) for {vision.name}")
        if image_size % codec.pad_multiple:
            raise ConfigError(f"data.image_size: {image_size} is not a multiple of {codec.pad_multiple}")
        self.save_hyperparameters(ignore=["codec", "vision", "neck", "loss"])
        self.codec, self.vision, self.loss_fn = codec, vision, loss
        grid = image_size // codec.stride
        self.neck = neck(in_channels=codec.latent_channels, width=vision.width, heads=vision.heads, grid_size=grid)
        self.skip_blocks = skip_blocks
        self.optimizer_cfg = {"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, **(optimizer or {})}
        self.scheduler_cfg = {"milestones": [20], "gamma": 0.1, **(scheduler or {})}
        for name, child in self.named_children():
            child.requires_grad_(name in self.trainable)
        self.register_buffer("text_emb", torch.empty(0), persistent=False)
        self.metrics = nn.ModuleDict({f"top1_{p}": MeanMetric() for p in PATHS} | {"bpp": MeanMetric()})
        self.skipped_images = 0
        self.strict_loading = False  # frozen parts are rebuilt from their own source, not stored in checkpoints

    # -- structure ----------------------------------------------------------------------------------------
    def signature(self) -> dict[str, Any]:
        """What a checkpoint of this module is only valid for."""
        return {
            "codec": self.codec.name,
            "codec_arch": dict(self.codec.arch),
            "vision": self.vision.name,
            "vision_width": self.vision.width,
            "grid": list(self.neck.grid_size),
            "skip_blocks": self.skip_blocks,
        }

    def train(self, mode: bool = True) -> BridgeModule:
        super().train(mode)
        for name, child in self.named_children():
            if name not in self.trainable:
                child.eval()
        return self

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        self.set_classes(dm.classnames, dm.templates)

    def set_classes(self, classnames: Sequence[str], templates: Sequence[str]) -> None:
        """The class text embeddings of Eq. 2 (fixed: the text encoder never trains)."""
        self.text_emb = self.vision.class_embeddings(classnames, templates).to(self.device)

    # -- the paths ----------------------------------------------------------------------------------------
    def neck_embedding(self, y_hat: Tensor) -> Tensor:
        """C'(T(y_hat))."""
        return self.vision.forward_from_block(self.neck(y_hat), self.skip_blocks)

    def latent(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and "codec" in self.trainable):
            return self.codec.latent(x)

    @torch.no_grad()
    def teacher_embedding(self, teacher_image: Tensor) -> Tensor:
        """C(x) of the uncompressed image: the distillation target."""
        return self.vision(teacher_image)

    @torch.no_grad()
    def decoded_image_embedding(self, x_hat: Tensor) -> Tensor:
        """C(x_hat) of a decoded [0, 1] image, through CLIP's own preprocessing (any codec, learned or not)."""
        return self.vision(self.vision.preprocess(x_hat))

    @torch.no_grad()
    def reconstruction_embedding(self, y_hat: Tensor) -> Tensor:
        """C(g_s(y_hat)): the Reconstruction baseline."""
        return self.decoded_image_embedding(self.codec.synthesize(y_hat))

    # -- training -----------------------------------------------------------------------------------------
    def training_loss(self, batch: dict[str, Tensor]) -> SurrogateLossOutput:
        """Phase 1 (paper 3.5): the surrogate loss L_S on the neck path."""
        y_hat, _ = self.latent(batch["image"])
        student = self.neck_embedding(y_hat)
        return self.loss_fn(
            student, self.teacher_embedding(batch["teacher_image"]), self.text_emb, batch["label"], self.current_epoch
        )

    def _count_skipped(self, batch: dict[str, Any]) -> None:
        skipped = int(batch["num_skipped"])
        if skipped:
            self.skipped_images += skipped
            self.print(f"skipped {skipped} unreadable image(s); {self.skipped_images} so far this run")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        self._count_skipped(batch)
        if "label" not in batch:  # every image of the batch was unreadable
            return None
        out = self.training_loss(batch)
        bs = batch["label"].shape[0]
        self.log("train/loss", out.loss, prog_bar=True, batch_size=bs)
        for k, v in out._asdict().items():
            if k != "loss":
                self.log(f"train/{k}", float(v), batch_size=bs)
        self.log("data/skipped_images", float(self.skipped_images), batch_size=bs)
        return out.loss

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, **self.optimizer_cfg)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, **self.scheduler_cfg)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # -- evaluation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-sample top-1 of each path and the batch bpp."""
        x, labels = batch["image"], batch["label"]
        y_hat, likelihoods = self.codec.latent(x)
        embeddings = {
            "uncompressed": self.teacher_embedding(batch["teacher_image"]),
            "neck": self.neck_embedding(y_hat),
            "reconstruction": self.reconstruction_embedding(y_hat),
        }
        out = {f"top1_{p}": zero_shot_correct(e, self.text_emb, labels) for p, e in embeddings.items()}
        out["bpp"] = bits_per_pixel(likelihoods, x.shape[-2] * x.shape[-1])
        return out

    def _eval_step(self, batch: dict[str, Any], prefix: str) -> None:
        self._count_skipped(batch)
        if "label" not in batch:
            return
        bs = batch["label"].shape[0]
        for k, v in self.evaluate_batch(batch).items():
            self.metrics[k].update(v, weight=bs if v.ndim == 0 else 1)
            self.log(
                f"{prefix}/{k}", self.metrics[k], on_step=False, on_epoch=True, batch_size=bs, prog_bar=k == "top1_neck"
            )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    # -- checkpoints: only what trains, plus the signature it is valid for --------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = tuple(f"{n}." for n in self.trainable)
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith(keep)}
        checkpoint["latentbridge"] = self.signature()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        theirs, ours = checkpoint.get("latentbridge"), self.signature()
        if theirs is None:
            raise CheckpointError("ckpt_path: not a LatentBridge scenario checkpoint (no 'latentbridge' signature)")
        diff = {k: (theirs.get(k), v) for k, v in ours.items() if theirs.get(k) != v}
        if diff:
            k, (a, b) = next(iter(diff.items()))
            raise CheckpointError(f"ckpt_path: checkpoint was trained with {k}={a}, this config has {k}={b}")
        keep = tuple(f"{n}." for n in self.trainable)
        expected = {k for k in self.state_dict() if k.startswith(keep)}
        missing = expected - set(checkpoint["state_dict"])
        if missing:
            raise CheckpointError(f"ckpt_path: checkpoint lacks {len(missing)} trained tensors, e.g. {min(missing)}")
