"""The shared base of every scenario and baseline (paper Fig. 2, Table 1).

codec (g_a, entropy model) -> y_hat -> transform-neck T -> C' (C with its first k blocks skipped) -> embedding.
A scenario only declares which parts train (``trainable``, ``freeze_decoder``), which loss applies (the ``loss``
it is built with: the surrogate L_S in phase 1, the joint loss in phase 2) and, for a baseline, its path
(``method_path``, ``method_embedding``). Validation reports, for every scenario, zero-shot top-1 of three paths,
the rate and the PSNR of g_s(y_hat):
- ``uncompressed``: C(x), the teacher on the original image (the upper bound),
- the method's path: ``neck`` = C'(T(y_hat)) for d1-d3, ``post_processing`` = C(P(g_s(y_hat))) for that baseline,
- ``reconstruction``: C(g_s(y_hat)), the Reconstruction baseline (paper 4.1; nothing trained),
- ``bpp``: the likelihood estimate of the coded y_hat and z_hat.

Optimization is explicit (manual): Adam on the trainable parameters and, when the codec trains, a separate Adam on
its entropy bottleneck's quantiles driven by compressai's aux loss.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from latentbridge.atomic_io import read_checkpoint
from latentbridge.errors import CheckpointError, ConfigError
from models.codec_adapter import ENTROPY_TABLES, CodecAdapter, bits_per_pixel
from models.joint_loss import JointLoss, JointLossOutput
from models.surrogate_loss import SurrogateLoss, SurrogateLossOutput, zero_shot_correct
from models.transform_neck import TransformNeck
from models.vision_encoder import VisionEncoder


def resolve_checkpoint(path: str | Path, key: str) -> Path:
    """A checkpoint file, or a finished run directory (its results.json names the best checkpoint)."""
    path = Path(path)
    if path.is_dir():
        results = path / "results.json"
        if not results.is_file():
            raise CheckpointError(f"{key}: {path} is a directory without results.json (not a finished run)")
        found = json.loads(results.read_text())
        ckpt = found.get("best_checkpoint") or found.get("last_checkpoint")
        if not ckpt:
            raise CheckpointError(f"{key}: {results} names no checkpoint")
        path = Path(ckpt)
    if not path.is_file():
        raise CheckpointError(f"{key}: {path} does not exist")
    return path


class BridgeModule(L.LightningModule):
    """Codec + transform-neck + vision encoder, evaluated on the three paths."""

    #: the scenario's name in result tables and curves
    scenario_name: ClassVar[str] = "d1"
    #: submodules whose parameters train; everything else is frozen and kept in eval mode
    trainable: ClassVar[tuple[str, ...]] = ("neck",)
    #: keep the codec's synthesis transform g_s frozen even when the codec trains (d3: the decoder is unused)
    freeze_decoder: ClassVar[bool] = False
    #: the name of the scenario's own path to the encoder embedding (metrics ``top1_<method_path>``)
    method_path: ClassVar[str] = "neck"
    #: the loss types this scenario accepts (phase 1: the surrogate loss; phase 2: the joint loss)
    loss_types: ClassVar[tuple[type, ...]] = (SurrogateLoss,)
    #: constructor arguments that are modules (kept out of hparams: checkpoints load with weights_only)
    module_args: ClassVar[tuple[str, ...]] = ("codec", "vision", "neck", "loss")

    def __init__(
        self,
        codec: CodecAdapter,
        vision: VisionEncoder,
        neck: Callable[..., TransformNeck] | None,
        loss: nn.Module,
        skip_blocks: int = 2,
        image_size: int = 256,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        aux_lr: float = 1e-3,
        clip_max_norm: float = 0.0,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= skip_blocks < vision.num_blocks:
            raise ConfigError(f"scenario.skip_blocks: {skip_blocks} not in [0, {vision.num_blocks}) for {vision.name}")
        if image_size % codec.pad_multiple:
            raise ConfigError(f"data.image_size: {image_size} is not a multiple of {codec.pad_multiple}")
        if not isinstance(loss, self.loss_types):
            wanted = " or ".join(t.__name__ for t in self.loss_types)
            raise ConfigError(f"scenario.loss: {type(self).__name__} trains with {wanted}, got {type(loss).__name__}")
        self.save_hyperparameters(ignore=list(self.module_args))
        self.codec, self.vision, self.loss_fn = codec, vision, loss
        grid = image_size // codec.stride
        self.neck = (
            neck(in_channels=codec.latent_channels, width=vision.width, heads=vision.heads, grid_size=grid)
            if neck is not None
            else None
        )
        self.grid = (grid, grid)
        self.skip_blocks = skip_blocks
        self.optimizer_cfg = {"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, **(optimizer or {})}
        self.scheduler_cfg = {"milestones": [20], "gamma": 0.1, **(scheduler or {})}
        self.automatic_optimization = False
        for name, param in self.named_parameters():
            param.requires_grad_(self._trains(name))
        self.register_buffer("text_emb", torch.empty(0), persistent=False)
        paths = ("uncompressed", self.method_path, "reconstruction")
        self.metrics = nn.ModuleDict(
            {f"top1_{p}": MeanMetric() for p in paths} | {"bpp": MeanMetric(), "psnr": MeanMetric()}
        )
        self.skipped_images = 0
        self.strict_loading = False  # frozen parts are rebuilt from their own source, not stored in checkpoints
        if init_from:
            self.init_from_phase1(init_from)

    # -- structure ----------------------------------------------------------------------------------------
    @property
    def monitor(self) -> tuple[str, str]:
        """The metric that selects the best checkpoint."""
        return f"val/top1_{self.method_path}", "max"

    def _frozen_prefixes(self) -> tuple[str, ...]:
        return (f"codec.{self.codec.decoder}.",) if self.freeze_decoder else ()

    def _trains(self, name: str) -> bool:
        """Whether the parameter or buffer ``name`` belongs to a trained part."""
        return name.startswith(tuple(f"{n}." for n in self.trainable)) and not name.startswith(self._frozen_prefixes())

    def signature(self) -> dict[str, Any]:
        """What a checkpoint of this module is only valid for."""
        return {
            "scenario": type(self).__name__,
            "codec": self.codec.name,
            "codec_arch": dict(self.codec.arch),
            "codec_lmbda": self.codec.lmbda,
            "vision": self.vision.name,
            "vision_width": self.vision.width,
            "grid": list(self.grid),
            "skip_blocks": self.skip_blocks,
        }

    def train(self, mode: bool = True) -> BridgeModule:
        super().train(mode)
        for name, child in self.named_children():
            if name not in self.trainable:
                child.eval()
        if self.freeze_decoder:
            self.codec.get_submodule(self.codec.decoder).eval()
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

    def method_embedding(self, y_hat: Tensor) -> Tensor:
        """The scenario's own path from the coded latent to the encoder's embedding (d1-d3: the neck path)."""
        return self.neck_embedding(y_hat)

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
    def training_loss(self, batch: dict[str, Tensor]) -> SurrogateLossOutput | JointLossOutput:
        """Phase 1 (paper 3.5): L_S on the method's path. Phase 2 (d2, d3): the joint loss of Table 1."""
        x = batch["image"]
        y_hat, likelihoods = self.latent(x)
        student = self.method_embedding(y_hat)
        teacher = self.teacher_embedding(batch["teacher_image"])
        if isinstance(self.loss_fn, JointLoss):
            x_hat = self.codec.synthesize(y_hat) if self.loss_fn.needs_reconstruction else None
            return self.loss_fn(likelihoods, x, x_hat, student, teacher)
        return self.loss_fn(student, teacher, self.text_emb, batch["label"], self.current_epoch)

    def _count_skipped(self, batch: dict[str, Any]) -> None:
        skipped = int(batch["num_skipped"])
        if skipped:
            self.skipped_images += skipped
            self.print(f"skipped {skipped} unreadable image(s); {self.skipped_images} so far this run")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        self._count_skipped(batch)
        if "label" not in batch:  # every image of the batch was unreadable
            return None
        optimizers = self.optimizers()
        opt, *aux_opt = optimizers if isinstance(optimizers, list) else [optimizers]
        out = self.training_loss(batch)
        total = out.loss
        aux_loss = self.codec.aux_loss() if aux_opt else None
        if aux_loss is not None:  # disjoint parameters (quantiles only): one backward serves both optimizers
            total = total + aux_loss
        opt.zero_grad()
        for o in aux_opt:
            o.zero_grad()
        self.manual_backward(total)
        if self.hparams.clip_max_norm:
            self.clip_gradients(opt, gradient_clip_val=self.hparams.clip_max_norm, gradient_clip_algorithm="norm")
        opt.step()
        for o in aux_opt:
            o.step()
        bs = batch["label"].shape[0]
        self.log("train/loss", out.loss, prog_bar=True, batch_size=bs)
        for k, v in out._asdict().items():
            if k != "loss":
                self.log(f"train/{k}", float(v), batch_size=bs)
        if aux_loss is not None:
            self.log("train/aux_loss", aux_loss, batch_size=bs)
        self.log("data/skipped_images", float(self.skipped_images), batch_size=bs)
        return out.loss

    def on_train_epoch_end(self) -> None:
        self.lr_schedulers().step()  # the main optimizer's MultiStepLR, stepped per epoch

    def configure_optimizers(self) -> Any:
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        main = [p for n, p in named if not n.endswith(".quantiles")]
        aux = [p for n, p in named if n.endswith(".quantiles")]
        opt = torch.optim.Adam(main, **self.optimizer_cfg)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, **self.scheduler_cfg)
        if not aux:
            return [opt], [sched]
        return [opt, torch.optim.Adam(aux, lr=self.hparams.aux_lr)], [sched]

    # -- evaluation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-sample top-1 of each path, the batch bpp and the per-sample PSNR of g_s(y_hat)."""
        x, labels = batch["image"], batch["label"]
        y_hat, likelihoods = self.codec.latent(x)
        x_hat = self.codec.synthesize(y_hat)
        embeddings = {
            "uncompressed": self.teacher_embedding(batch["teacher_image"]),
            self.method_path: self.method_embedding(y_hat),
            "reconstruction": self.decoded_image_embedding(x_hat),
        }
        out = {f"top1_{p}": zero_shot_correct(e, self.text_emb, labels) for p, e in embeddings.items()}
        out["bpp"] = bits_per_pixel(likelihoods, x.shape[-2] * x.shape[-1])
        mse = (x_hat - x).pow(2).flatten(1).mean(1).clamp_min(1e-10)
        out["psnr"] = -10 * torch.log10(mse)
        return out

    def _eval_step(self, batch: dict[str, Any], prefix: str) -> None:
        self._count_skipped(batch)
        if "label" not in batch:
            return
        bs = batch["label"].shape[0]
        for k, v in self.evaluate_batch(batch).items():
            self.metrics[k].update(v, weight=bs if v.ndim == 0 else 1)
            self.log(
                f"{prefix}/{k}",
                self.metrics[k],
                on_step=False,
                on_epoch=True,
                batch_size=bs,
                prog_bar=k == f"top1_{self.method_path}",
            )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    # -- checkpoints: only what trains, plus the signature it is valid for --------------------------------
    def _stored(self, key: str) -> bool:
        return key.startswith(tuple(f"{n}." for n in self.trainable)) and not key.endswith(ENTROPY_TABLES)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if self._stored(k)}
        checkpoint["latentbridge"] = self.signature()

    def _check_signature(self, checkpoint: dict[str, Any], key: str, ignore: tuple[str, ...] = ()) -> None:
        theirs, ours = checkpoint.get("latentbridge"), self.signature()
        if theirs is None:
            raise CheckpointError(f"{key}: not a LatentBridge scenario checkpoint (no 'latentbridge' signature)")
        for k, v in ours.items():
            if k not in ignore and theirs.get(k) != v:
                raise CheckpointError(
                    f"{key}: checkpoint was trained with {k}={theirs.get(k)}, this config has {k}={v}"
                )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_signature(checkpoint, "ckpt_path")
        expected = {k for k in self.state_dict() if self._stored(k)}
        missing = expected - set(checkpoint["state_dict"])
        if missing:
            raise CheckpointError(f"ckpt_path: checkpoint lacks {len(missing)} trained tensors, e.g. {min(missing)}")

    def init_from_phase1(self, path: str | Path) -> None:
        """Phase 2 starts from a converged phase-1 transform-neck (paper 3.5): a d1 checkpoint or run directory
        of the same codec (and rate point), grid, encoder and skipped blocks."""
        ckpt = resolve_checkpoint(path, "scenario.init_from")
        state = read_checkpoint(ckpt, "scenario.init_from")
        if not isinstance(state, dict):
            raise CheckpointError(f"scenario.init_from: {ckpt} is not a Lightning checkpoint")
        self._check_signature(state, "scenario.init_from", ignore=("scenario",))
        neck = {k.removeprefix("neck."): v for k, v in state.get("state_dict", {}).items() if k.startswith("neck.")}
        if not neck or self.neck is None:
            raise CheckpointError(f"scenario.init_from: {ckpt} holds no transform-neck (phase 1 trains one: d1)")
        self.neck.load_state_dict(neck)
