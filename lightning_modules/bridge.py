"""The shared base of every scenario and baseline (paper Fig. 2, Table 1).

codec (g_a, entropy model) -> y_hat -> transform-neck T -> C' (C with its first k blocks skipped) -> embedding.
A scenario only declares which parts train (``trainable``, ``freeze_decoder``), which loss it accepts
(``loss_types``: the surrogate L_S in phase 1, the joint loss in phase 2) and, for a baseline, its path
(``method_path``, one of ``latentbridge.routes``). Everything else is here, once:

- training: the scenario's loss on its path; automatic optimization with the quantiles as a second parameter
  group (``net_aux.py``), so AMP, clipping, accumulation and DDP are Lightning's;
- validation (``trainer.validate``): zero-shot top-1 of the method's path, of ``reconstruction`` and of
  ``uncompressed``, the likelihood bpp and the PSNR of g_s(y_hat);
- test (``trainer.test``, evaluate.py): every image through a real bitstream (encoded to bytes, y_hat decoded
  from the bytes alone), as NeuralCompression's ILLM measures the real size inside ``test_step``;
- checkpoints that hold only what trains, with the signature they are valid for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from latentbridge import routes
from latentbridge.codecs.adapter import ENTROPY_TABLES, CodecAdapter, bits_per_image
from latentbridge.codecs.bitstream import decode_latent, encode_batch
from latentbridge.core.atomic_io import read_checkpoint
from latentbridge.core.digest import state_digest
from latentbridge.core.errors import CheckpointError, ConfigError
from latentbridge.core.run_dir import checkpoint_of
from latentbridge.losses.joint import JointLoss, JointLossOutput
from latentbridge.losses.surrogate import SurrogateLoss, SurrogateLossOutput
from latentbridge.metrics.image_quality import psnr
from latentbridge.metrics.rate_accuracy import RateAccuracy
from latentbridge.metrics.zero_shot import zero_shot_correct
from latentbridge.nn.transform_neck import TransformNeck
from latentbridge.vision.open_clip_encoder import VisionEncoder
from lightning_modules.net_aux import NetAuxOptimization, OptimizerFactory, SchedulerFactory


class BridgeModule(NetAuxOptimization):
    """Codec + transform-neck + vision encoder, trained on the scenario's path and evaluated on all paths."""

    #: the component groups the scenario is built from (prepared first when missing and they have a recipe)
    uses: ClassVar[tuple[str, ...]] = ("codec", "vision")
    #: the scenario's name in result tables and curves
    scenario_name: ClassVar[str] = "d1"
    #: submodules whose parameters train; everything else is frozen and kept in eval mode
    trainable: ClassVar[tuple[str, ...]] = ("neck",)
    #: keep the codec's synthesis transform g_s frozen even when the codec trains (d3: the decoder is unused)
    freeze_decoder: ClassVar[bool] = False
    #: the scenario's own path to the encoder embedding (``latentbridge.routes``; metrics ``top1_<method_path>``)
    method_path: ClassVar[str] = "neck"
    #: the loss types this scenario accepts, and the ``loss`` option that gives it (for the error message)
    loss_types: ClassVar[tuple[type, ...]] = (SurrogateLoss,)
    loss_option: ClassVar[str] = "surrogate"
    #: constructor arguments that are modules or factories (kept out of hparams: checkpoints load weights_only)
    module_args: ClassVar[tuple[str, ...]] = ("codec", "vision", "neck", "loss", "post", "optimizer", "scheduler")

    def __init__(
        self,
        codec: CodecAdapter,
        vision: VisionEncoder,
        neck: Callable[..., TransformNeck] | None,
        loss: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        post: nn.Module | None = None,
        skip_blocks: int = 2,
        image_size: int = 256,
        aux_lr: float = 1e-3,
        clip_max_norm: float = 0.0,
        init_from: str | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        entry = vision.insertion(skip_blocks)  # what enters block k (one-line error for a k the encoder lacks)
        if image_size % codec.pad_multiple:
            raise ConfigError(f"data.image_size: {image_size} is not a multiple of {codec.pad_multiple}")
        if not isinstance(loss, self.loss_types):
            raise ConfigError(
                f"loss: {type(self).__name__} trains with {' or '.join(t.__name__ for t in self.loss_types)}, "
                f"got {type(loss).__name__} "
                f"(use loss={self.loss_option}, as the experiment=*_{self.scenario_name} presets do)"
            )
        if clip_max_norm < 0:
            raise ConfigError(f"scenario.clip_max_norm: {clip_max_norm} is negative (0 disables clipping)")
        self.save_hyperparameters(ignore=list(self.module_args))
        self.codec, self.vision, self.loss_fn, self.post = codec, vision, loss, post
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.clip_max_norm = float(clip_max_norm)
        grid = image_size // codec.stride
        if neck is not None and entry.layout == "feature_map" and (grid, grid) != tuple(entry.grid_size):
            raise ConfigError(
                f"data.image_size: {image_size} gives {codec.name}'s latent a {grid}x{grid} grid, but block "
                f"{skip_blocks} of {vision.name} takes a {entry.grid_size[0]}x{entry.grid_size[1]} feature map "
                "(change data.image_size, vision.image_size or scenario.skip_blocks)"
            )
        self.neck = (
            neck(
                in_channels=codec.latent_channels,
                width=entry.width,
                heads=entry.heads,
                grid_size=grid,
                class_token=entry.class_token,
                layout=entry.layout,
            )  # fmt: skip
            if neck is not None
            else None
        )
        self.grid = (grid, grid)
        self.skip_blocks = skip_blocks
        for name, param in self.named_parameters():
            param.requires_grad_(self._trains(name))
        self.register_buffer("text_emb", torch.empty(0), persistent=False)
        paths = ("uncompressed", self.method_path, "reconstruction")
        self.metrics = nn.ModuleDict(
            {f"top1_{p}": MeanMetric() for p in paths} | {"bpp": MeanMetric(), "psnr": MeanMetric()}
        )
        self.configure_evaluation()
        self.test_results: dict[str, Any] | None = None
        self.skipped_images = 0
        self.strict_loading = False  # frozen parts are rebuilt from their own source, not stored in checkpoints
        self.train(self.training)  # frozen parts in eval mode from the start (a codec is built in train mode)

    # -- structure ----------------------------------------------------------------------------------------
    @property
    def encoder(self) -> VisionEncoder:
        """The vision encoder C, as ``latentbridge.routes`` calls it."""
        return self.vision

    @property
    def monitor(self) -> tuple[str, str]:
        """The metric that selects the best checkpoint (and that train.py returns to a Hydra sweeper)."""
        return f"val/top1_{self.method_path}", "max"

    def _frozen_prefixes(self) -> tuple[str, ...]:
        return (f"codec.{self.codec.decoder}.",) if self.freeze_decoder else ()

    def _trains(self, name: str) -> bool:
        """Whether the parameter or buffer ``name`` belongs to a trained part."""
        return name.startswith(tuple(f"{n}." for n in self.trainable)) and not name.startswith(self._frozen_prefixes())

    def signature(self) -> dict[str, Any]:
        """What a checkpoint of this module is only valid for."""
        return scenario_signature(type(self).__name__, self.codec, self.vision.name, self.vision.width, self.grid,
                                  self.skip_blocks, self.vision.pipeline)  # fmt: skip

    def train(self, mode: bool = True) -> BridgeModule:
        """Trained parts in ``mode``, frozen parts (and d3's g_s) always in eval mode."""
        super().train(mode)
        for name, child in self.named_children():
            if name not in self.trainable:
                child.eval()
        if self.freeze_decoder:
            self.codec.get_submodule(self.codec.decoder).eval()
        return self

    def on_train_epoch_start(self) -> None:
        """Frozen means eval, in every ``fit``: Lightning >= 2.2 never calls ``train()`` when fit starts (PR #18951;
        it only restores each submodule's mode after validation), so the modes are set here, where the fit loop
        always passes (resumed runs included). A frozen codec in train mode would hand the neck noisy, uncoded
        latents."""
        self.train()

    def configure_model(self) -> None:
        """``scenario.compile``: torch.compile the trained networks other than the codec (the transform-neck, the
        post-processing U-Net, paper 2's pre-editor) and the encoder's blocks in place (parameter names, hence
        checkpoints, unchanged)."""
        if self.hparams.get("compile") and not getattr(self, "_compiled", False):
            for name in self.trainable:
                if name != "codec":
                    self.get_submodule(name).compile()
            for block in self.vision.visual.transformer.resblocks:
                block.compile()
            self._compiled = True

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.init_from and not self.trainer.ckpt_path:
            self.init_from_phase1(self.hparams.init_from)  # a resumed run restores its own neck instead

    def _classes_from_datamodule(self) -> None:
        dm = self.trainer.datamodule
        self.set_classes(dm.classnames, dm.templates)

    # on the training device (setup runs before the model is moved); computed once per process (class_embeddings)
    on_fit_start = on_validation_start = on_test_start = _classes_from_datamodule

    def set_classes(self, classnames: Sequence[str], templates: Sequence[str]) -> None:
        """The class text embeddings of Eq. 2 (fixed: the text encoder never trains)."""
        key = (tuple(classnames), tuple(templates))
        if getattr(self, "_classes", None) == key and self.text_emb.numel() and not self.text_emb.is_inference():
            self.text_emb = self.text_emb.to(self.device)
            return
        self.text_emb = self.vision.class_embeddings(classnames, templates).to(self.device)
        self._classes = key

    # -- the paths (latentbridge.routes) ------------------------------------------------------------------
    def method_embedding(self, y_hat: Tensor, rate: Tensor | float | None = None) -> Tensor:
        """The scenario's own path from the coded latent to the encoder's embedding (d1-d3: the neck path; a
        rate-conditioned neck also takes the rate)."""
        route = routes.latent_route(self.method_path)
        return route(self, y_hat) if rate is None else route(self, y_hat, rate)

    def latent(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and "codec" in self.trainable):
            return self.codec.latent(x)

    @torch.no_grad()
    def teacher_embedding(self, teacher_image: Tensor) -> Tensor:
        """C(x) of the uncompressed image: the distillation target."""
        return routes.uncompressed(self, teacher_image)

    # -- training -----------------------------------------------------------------------------------------
    def training_loss(self, batch: dict[str, Tensor]) -> SurrogateLossOutput | JointLossOutput:
        """Phase 1 (paper 3.5): L_S on the method's path. Phase 2 (d2, d3): the joint loss of Table 1.
        A batch from the latent cache (``datamodules/latent_cache.py``) carries y_hat and C(x) instead of images."""
        if "y_hat" in batch:
            y_hat, likelihoods, teacher = batch["y_hat"].float(), None, batch["target"].float()
        else:
            y_hat, likelihoods = self.latent(batch["image"])
            teacher = batch["target"].float() if "target" in batch else self.teacher_embedding(batch["teacher_image"])
        if isinstance(self.loss_fn, JointLoss):
            x = batch["image"]
            x_hat = self.codec.synthesize(y_hat) if self.loss_fn.needs_reconstruction else None
            return self.loss_fn(likelihoods, x, x_hat, self.method_embedding(y_hat), teacher)
        if not getattr(self.loss_fn, "token_weight", 0.0):
            student = self.method_embedding(y_hat)
            return self.loss_fn(student, teacher, self.text_emb, batch["label"], self.current_epoch)
        tokens = self.neck(y_hat)  # token-level distillation (beyond the paper): the neck's tokens vs block k's
        teacher_tokens = batch["tokens"].float() if "tokens" in batch else self.teacher_tokens(batch["teacher_image"])
        student = self.encoder.from_block(tokens, self.skip_blocks)
        return self.loss_fn(student, teacher, self.text_emb, batch["label"], self.current_epoch, tokens, teacher_tokens)

    @torch.no_grad()
    def teacher_tokens(self, teacher_image: Tensor) -> Tensor:
        """The teacher's hidden states after its first k blocks: what the neck's tokens stand in for."""
        return self.encoder.run_blocks(self.encoder.embed(teacher_image), 0, self.skip_blocks)

    # -- the latent cache: what never changes while the codec and the teacher are frozen -----------------
    @property
    def cacheable(self) -> bool:
        """Whether y_hat is constant during training (the codec does not train): d1 and the baselines."""
        return "codec" not in self.trainable

    def cache_fields(self, split: str) -> tuple[str, ...]:
        """What the cache stores per image of ``split``: C(x) always; y_hat while the codec is frozen, and then for
        validation also the constant paths (Reconstruction embedding, likelihood bits, PSNR); the teacher's tokens
        for token distillation. A training codec (phase 2) leaves the teacher's target only."""
        if not self.cacheable:
            return ("target",)
        fields = ("y_hat", "target")
        if getattr(self.loss_fn, "token_weight", 0.0) and split == "train":
            fields += ("tokens",)
        if split == "val":
            fields += ("recon", "bits", "psnr")
        return fields

    @torch.no_grad()
    def cache_batch(self, batch: dict[str, Any], split: str) -> dict[str, Tensor]:
        """The cached values of one batch of images (the same computations as the uncached steps)."""
        fields = self.cache_fields(split)
        out = {"target": self.teacher_embedding(batch["teacher_image"])}
        if "y_hat" not in fields:
            return out
        x = batch["image"]
        y_hat, likelihoods = self.codec.latent(x)
        out["y_hat"] = y_hat
        if "tokens" in fields:
            out["tokens"] = self.teacher_tokens(batch["teacher_image"])
        if "recon" in fields:
            x_hat = self.codec.synthesize(y_hat)
            out["recon"] = routes.decoded_image(self, x_hat)
            out["bits"] = bits_per_image(likelihoods)
            out["psnr"] = psnr(x_hat, x)
        return out

    def cache_signature(self) -> dict[str, Any]:
        """The frozen parts a cache is valid for: their names, shapes and a digest of their weights. Not the
        scenario: d1, its ablations and Post-processing at one rate point share one cache (the block after which
        teacher tokens are taken counts only when they are stored)."""
        sig = {k: v for k, v in self.signature().items() if k not in ("scenario", "skip_blocks")}
        if not self.cacheable:  # C(x) only: the codec does not enter it
            sig = {k: v for k, v in sig.items() if not k.startswith(("codec", "grid"))}
            return {**sig, "vision_weights": state_digest(self.vision)}
        if "tokens" in self.cache_fields("train"):
            sig["tokens_after_block"] = self.skip_blocks
        return {**sig, "codec_weights": state_digest(self.codec), "vision_weights": state_digest(self.vision)}

    def _count_skipped(self, batch: dict[str, Any]) -> None:
        skipped = int(batch.get("num_skipped", 0))  # a Python int from the collate function: no device sync
        if skipped:
            self.skipped_images += skipped
            self.print(f"skipped {skipped} unreadable image(s); {self.skipped_images} so far this run")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        self._count_skipped(batch)
        if "label" not in batch:  # every image of the batch was unreadable
            return None
        out = self.training_loss(batch)
        total = out.loss
        aux_loss = self.codec.aux_loss() if "codec" in self.trainable else None
        if aux_loss is not None:  # the quantiles are a parameter group of their own: one backward serves both
            total = total + aux_loss
        bs = batch["label"].shape[0]
        self.log("train/loss", out.loss, prog_bar=True, batch_size=bs)
        for k, v in out._asdict().items():
            if k != "loss" and v is not None:  # tensors are logged as they are: no host sync per step
                self.log(f"train/{k}", v, batch_size=bs)
        if aux_loss is not None:
            self.log("train/aux_loss", aux_loss, batch_size=bs)
        if self.skipped_images:
            self.log("data/skipped_images", float(self.skipped_images), batch_size=bs)
        return total

    def configure_optimizers(self) -> Any:
        return self.configure_net_aux(self.optimizer_factory, self.scheduler_factory, self.hparams.aux_lr)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Nothing to move on the CPU (Lightning would walk the whole batch every step: ~5 % of a mini step)."""
        if device.type == "cpu":
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    # -- validation: likelihood rate, three paths ---------------------------------------------------------
    @torch.no_grad()
    def evaluate_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per-sample top-1 of each path and PSNR of g_s(y_hat), and the batch bpp (likelihood estimate). From the
        latent cache only the method's path runs: the other paths are constant while codec and teacher are frozen."""
        labels = batch["label"]
        if "y_hat" in batch:
            y_hat = batch["y_hat"].float()
            embeddings = {"uncompressed": batch["target"], "reconstruction": batch["recon"]}
            bits, image_psnr = batch["bits"], batch["psnr"]
        else:
            x = batch["image"]
            y_hat, likelihoods = self.codec.latent(x)
            x_hat = self.codec.synthesize(y_hat)
            embeddings = {
                "uncompressed": batch["target"]
                if "target" in batch
                else self.teacher_embedding(batch["teacher_image"]),
                "reconstruction": routes.decoded_image(self, x_hat),
            }
            bits = bits_per_image(likelihoods)
            image_psnr = psnr(x_hat, x)
        embeddings[self.method_path] = self.method_embedding(y_hat)
        out = {f"top1_{p}": zero_shot_correct(e.float(), self.text_emb, labels) for p, e in embeddings.items()}
        out["bpp"] = bits.float() / (self.hparams.image_size**2)
        out["psnr"] = image_psnr.float()
        return out

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._count_skipped(batch)
        if "label" not in batch:
            return
        bs = batch["label"].shape[0]
        for k, v in self.evaluate_batch(batch).items():
            self.metrics[k].update(v)  # per-sample values: every image weighs the same
        for k, metric in self.metrics.items():
            prog = k == f"top1_{self.method_path}"
            self.log(f"val/{k}", metric, on_step=False, on_epoch=True, batch_size=bs, prog_bar=prog)

    # -- test: real bitstreams (evaluate.py) --------------------------------------------------------------
    def configure_evaluation(self, few_shot_groups: int = 0, seed: int = 0) -> None:
        """Settings of the next ``trainer.test``: 5-way 1-shot groups (0: skip) and their seed (paper A.1)."""
        self.evaluation = RateAccuracy(("method", "reconstruction", "uncompressed"), few_shot_groups, seed)

    def on_test_epoch_start(self) -> None:
        self.codec.update_tables()  # entropy-coder tables of the current weights
        self.evaluation.reset()

    @torch.no_grad()
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Each image to bytes and back: the server side sees only the bytes (paper Fig. 2)."""
        self._count_skipped(batch)
        if "label" not in batch:
            return
        x = batch["image"]
        codec, header_rate = self.edge_coding()
        streams, coded = encode_batch(codec, x, header_rate)  # one network pass: bytes and the estimated rate
        served = [self.server_latent(s) for s in streams]
        y_hat = torch.cat([y for y, _ in served]).to(x.device)
        rates = None if served[0][1] is None else torch.tensor([r for _, r in served], dtype=torch.float64)
        bits_est = bits_per_image(coded.likelihoods)
        x_hat = codec.synthesize(y_hat)
        embeddings = {
            "method": self.method_embedding(y_hat, None if rates is None else rates.to(x.device)),
            "reconstruction": routes.decoded_image(self, x_hat),
            "uncompressed": self.teacher_embedding(batch["teacher_image"]),
        }
        self.evaluation.update(batch, embeddings, self.text_emb, [len(s) for s in streams], x_hat, bits_est)

    def edge_coding(self) -> tuple[CodecAdapter, float | None]:
        """What the edge codes the test images with: the codec and its header's rate (d1-d3: the run's codec at its
        rate point)."""
        return self.codec, self.codec.lmbda

    def server_latent(self, stream: bytes) -> tuple[Tensor, float | None]:
        """The server's side of one stream, from its bytes alone: y_hat, and the rate its neck is told (None: a neck
        of one rate)."""
        return decode_latent(self.codec, stream, self.codec.lmbda)[0], None

    def on_test_epoch_end(self) -> None:
        self.test_results = self.evaluation.compute()

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
        of the same codec (and rate point), grid, encoder and skipped blocks. Runs at fit start only, so a
        finished phase-2 run loads without its phase-1 run."""
        ckpt = checkpoint_of(path, "scenario.init_from")
        state = read_checkpoint(ckpt, "scenario.init_from")
        if not isinstance(state, dict):
            raise CheckpointError(f"scenario.init_from: {ckpt} is not a Lightning checkpoint")
        self._check_signature(state, "scenario.init_from", ignore=("scenario",))
        neck = {k.removeprefix("neck."): v for k, v in state.get("state_dict", {}).items() if k.startswith("neck.")}
        if not neck or self.neck is None:
            raise CheckpointError(f"scenario.init_from: {ckpt} holds no transform-neck (phase 1 trains one: d1)")
        self.neck.load_state_dict(neck)


def scenario_signature(
    scenario: str, codec: CodecAdapter, vision: str, width: int, grid: Sequence[int], skip_blocks: int, pipeline: str
) -> dict[str, Any]:
    """The signature of a scenario checkpoint (also written by imports of released runs without building one)."""
    return {
        "scenario": scenario,
        "codec": codec.name,
        "codec_arch": dict(codec.arch),
        "codec_lmbda": codec.lmbda,
        "vision": vision,
        "vision_width": int(width),
        "grid": list(grid),
        "skip_blocks": int(skip_blocks),
        **({"vision_pipeline": pipeline} if pipeline != "clip" else {}),
    }
