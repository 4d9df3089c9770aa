"""Paper 2 (Li et al. 2024): a semantic pre-editing network P in front of a variable-rate codec, trained jointly with
the rate, a pixel distortion and losses on the frozen vision tower's tokens (``losses/token_rate.py``); the decoded
image goes to the large model's own pixel path (no neck).

    edge:   x, q -> x_edit = P(x, q) -> g_a -> y_hat at gain g(q) -> bytes (the gain in the header)
    server: bytes -> y_hat -> g_s -> x_hat -> the vision tower (LLaVA: its image processor) -> the LLM

Schedule (design ``paper2.md`` 2.6): the codec starts from a variable-rate phase-0 checkpoint; during the first
``codec_frozen_epochs`` only the editor trains (the codec stays in train mode, so the rate's gradient reaches the
editor; the codec's own gradients are dropped before each optimizer step), then editor and codec train together.
Each training batch draws its rate point q ~ U[0, 1] (or ``fixed_rate``: a separately trained fixed-rate model
for the comparison of finding F1, validated at its own rate only). Validation runs at ``val_rates``;
``val/objective`` selects checkpoints: the mean over the rates of the log of each rate's objective, so that every
rate counts by its relative change (the raw objectives scale with lambda(q), 320x apart over the mini ladder, and
their sum let the highest rate decide); accuracy alone would prefer checkpoints that spend more bits.
One protocol end to end (``mosaic``): with m > 1, training, validation and ``trainer.test`` all code m x m mosaics
of the images (a 32x32 image alone would pay a 25-byte header on a few bytes of payload at the low rates; in a
mosaic the hyperprior sees 16 images), the rate counted over the mosaic's pixels, every other term per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from latentbridge import routes
from latentbridge.codecs.adapter import CodecAdapter, bits_per_image, codec_checkpoint
from latentbridge.codecs.bitstream import decode_latent, encode_batch
from latentbridge.core.errors import ConfigError
from latentbridge.core.mosaic import shares, tile, untile
from latentbridge.losses.token_rate import TokenRateLoss, TokenRateLossOutput
from latentbridge.metrics.image_quality import psnr
from latentbridge.metrics.rate_accuracy import RateAccuracy
from latentbridge.metrics.zero_shot import zero_shot_correct
from latentbridge.nn.pre_editor import IdentityEditor, PreEditor, editor_checkpoint
from latentbridge.vision.open_clip_encoder import VisionEncoder
from lightning_modules.bridge import BridgeModule
from lightning_modules.net_aux import OptimizerFactory, SchedulerFactory


class PreEditVbrModule(BridgeModule):
    """Pre-editor + variable-rate codec, trained with ``TokenRateLoss``; the decoded image through the encoder."""

    scenario_name: ClassVar[str] = "p2"
    trainable: ClassVar[tuple[str, ...]] = ("editor", "codec")
    method_path: ClassVar[str] = "preedit"
    loss_types: ClassVar[tuple[type, ...]] = (TokenRateLoss,)
    loss_option: ClassVar[str] = "token_rate"
    module_args: ClassVar[tuple[str, ...]] = (*BridgeModule.module_args, "editor")

    def __init__(
        self,
        codec: CodecAdapter,
        vision: VisionEncoder,
        editor: nn.Module | None,
        loss: TokenRateLoss,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        image_size: int = 256,
        aux_lr: float = 1e-3,
        clip_max_norm: float = 1.0,
        codec_frozen_epochs: int = 1,
        val_rates: Sequence[float] = (0.0, 0.5, 1.0),
        fixed_rate: float | None = None,
        compile: bool = False,
        mosaic: int = 1,
    ) -> None:
        if not codec.variable_rate:
            raise ConfigError(f"codec: paper 2 trains a variable-rate codec (e.g. codec=mini_vbr), got '{codec.name}'")
        super().__init__(
            codec, vision, None, loss, optimizer, scheduler, None, 0, image_size, aux_lr, clip_max_norm, None, compile
        )
        if codec_frozen_epochs < 0:
            raise ConfigError(f"scenario.codec_frozen_epochs: {codec_frozen_epochs} is negative")
        self.editor = editor if editor is not None else IdentityEditor()
        for name, param in self.named_parameters():
            param.requires_grad_(self._trains(name))
        if mosaic < 1:
            raise ConfigError(f"scenario.mosaic: {mosaic} must be >= 1")
        self.ladder = codec.ladder
        self.fixed_q = None if fixed_rate is None else self.ladder.q(float(fixed_rate))
        # a fixed-rate model is trained, validated (and so selected) at its own rate only
        self.val_q = [self.fixed_q] if self.fixed_q is not None else [self.ladder.check_q(q) for q in val_rates]
        stop = loss.token_layer % (vision.num_blocks + 1)  # hidden_states[token_layer]: -2 = the last block's input
        self.token_blocks = stop
        per_rate = [f"{k}_{_tag(q)}" for q in self.val_q for k in ("top1", "bpp", "psnr", "objective")]
        self.metrics = nn.ModuleDict({k: MeanMetric() for k in (*per_rate, "top1_uncompressed")})
        self.eval_q = self.val_q[0]
        self.mosaic = int(mosaic)  # m x m mosaics in training, validation and test (evaluate.py checks it matches)

    # -- structure ----------------------------------------------------------------------------------------
    @property
    def monitor(self) -> tuple[str, str]:
        return "val/objective", "min"

    def signature(self) -> dict[str, Any]:
        return {
            "scenario": type(self).__name__,
            "codec": self.codec.name,
            "codec_arch": dict(self.codec.arch),
            "codec_ladder": self.ladder.as_dict(),
            "vision": self.vision.name,
            "vision_width": self.vision.width,
            "token_layer": self.loss_fn.token_layer,
            "drop_cls": self.loss_fn.drop_cls,
            "editor": type(self.editor).__name__,
            "editor_width": int(getattr(self.editor, "width", 0)),
            "editor_conditioning": getattr(self.editor, "rate_conditioning", "none"),
            **({"mosaic": self.mosaic} if self.mosaic > 1 else {}),
        }

    # -- the schedule: editor warm-up, then editor + codec -------------------------------------------------
    def codec_trains(self, epoch: int) -> bool:
        return epoch >= self.hparams.codec_frozen_epochs

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """While the codec is frozen its gradients are dropped before the step (and before clipping), so the
        optimizer skips it (no state, no update: bit-identical) while every parameter still takes part in backward
        (under DDP no parameter goes unused and nothing is re-wrapped at the epoch boundary)."""
        if not self.codec_trains(self.current_epoch):
            for param in self.codec.parameters():
                param.grad = None

    # -- the paths ----------------------------------------------------------------------------------------
    def draw_q(self) -> float:
        """The training batch's rate point: U[0, 1] (one model for every rate) or the fixed one."""
        return self.fixed_q if self.fixed_q is not None else float(torch.rand(()))

    def edge(self, x: Tensor, q: float) -> Tensor:
        """The edge side before coding: P(x, q) (``preedit=none``: x)."""
        return self.editor(x, q)

    def tokens(self, x: Tensor) -> Tensor:
        """The vision tower's tokens of a [0, 1] image at ``loss.token_layer`` (hidden_states indexing)."""
        enc = self.vision
        out = enc.run_blocks(enc.embed(enc.preprocess(x)), 0, self.token_blocks)
        return out[:, 1:] if self.loss_fn.drop_cls else out

    def code(self, x: Tensor, q: float) -> tuple[Tensor, Tensor, dict[str, Tensor], int]:
        """x -> (x_edit, x_hat unclamped, likelihoods, pixels the likelihoods cover per coded picture) at rate point
        q (the codec's train / eval behaviour); with ``mosaic`` m > 1 the images are coded as m x m mosaics and
        x_hat comes back per image."""
        x_edit = self.edge(x, q)
        coded, count = tile(x_edit, self.mosaic) if self.mosaic > 1 else (x_edit, x.shape[0])
        y_hat, likelihoods = self.codec.latent(coded, self.ladder.gain(q))
        x_hat = self.codec.model.g_s(y_hat)
        if self.mosaic > 1:
            x_hat = untile(x_hat, self.mosaic, count)
        return x_edit, x_hat, likelihoods, coded.shape[-2] * coded.shape[-1]

    def objective(self, x: Tensor, q: float) -> tuple[TokenRateLossOutput, Tensor, dict[str, Tensor]]:
        """The loss at rate point q, the decoded image (clamped) and the likelihoods."""
        x_edit, x_hat, likelihoods, pixels = self.code(x, q)
        tokens = tokens_hat = None
        if self.loss_fn.needs_tokens:
            with torch.no_grad():
                tokens = self.tokens(x)
            tokens_hat = self.tokens(x_hat)
        out = self.loss_fn(likelihoods, x, x_edit, x_hat, self.ladder.lmbda(q), tokens_hat, tokens, pixels)
        return out, x_hat.clamp(0, 1), likelihoods

    # -- training -----------------------------------------------------------------------------------------
    def training_loss(self, batch: dict[str, Tensor]) -> TokenRateLossOutput:
        q = self.draw_q()
        self.log("train/q", q, batch_size=batch["image"].shape[0])
        return self.objective(batch["image"], q)[0]

    # -- validation: every val rate -----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x, labels = batch["image"], batch["label"]
        target = batch["target"] if "target" in batch else self.teacher_embedding(batch["teacher_image"])
        out = {"top1_uncompressed": zero_shot(target, self.text_emb, labels)}
        for q in self.val_q:
            loss, x_hat, likelihoods = self.objective(x, q)
            out[f"top1_{_tag(q)}"] = zero_shot(routes.decoded_image(self, x_hat), self.text_emb, labels)
            out[f"bpp_{_tag(q)}"] = _bpp(likelihoods, x.shape[0], self.mosaic, x.shape[-2] * x.shape[-1])
            out[f"psnr_{_tag(q)}"] = psnr(x_hat, x).float()
            out[f"objective_{_tag(q)}"] = loss.loss.expand(labels.shape[0])
        return out

    def on_validation_epoch_end(self) -> None:
        """``val/objective``: the mean over the validation rates of log(objective at that rate): scale-free per rate."""
        objective = sum(self.metrics[f"objective_{_tag(q)}"].compute().log() for q in self.val_q) / len(self.val_q)
        top1 = sum(self.metrics[f"top1_{_tag(q)}"].compute() for q in self.val_q) / len(self.val_q)
        self.log("val/objective", objective, prog_bar=True)
        self.log("val/top1", top1, prog_bar=True)

    # -- test: real bitstreams at eval_q ------------------------------------------------------------------
    def configure_evaluation(self, few_shot_groups: int = 0, seed: int = 0) -> None:
        self.evaluation = RateAccuracy(("method", "uncompressed"), few_shot_groups, seed)

    @torch.no_grad()
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Edge: P(x, q), bytes at gain g(q). Server: the bytes alone -> y_hat -> x_hat -> the encoder."""
        self._count_skipped(batch)
        if "label" not in batch:
            return
        x, q, m = batch["image"], self.eval_q, self.mosaic
        edited, count = tile(self.edge(x, q), m) if m > 1 else (self.edge(x, q), x.shape[0])
        streams, coded = encode_batch(self.codec, edited, self.ladder.gain(q))
        y_hat = torch.cat([decode_latent(self.codec, s)[0] for s in streams]).to(x.device)
        x_hat = self.codec.synthesize(y_hat)[..., : edited.shape[-2], : edited.shape[-1]]
        bits = bits_per_image(coded.likelihoods)
        nbytes: list[float] = [len(s) for s in streams]
        if m > 1:  # each image pays its share of its mosaic
            x_hat = untile(x_hat, m, count)
            nbytes = shares([len(s) for s in streams], m, count)
            bits = torch.tensor(shares(bits.tolist(), m, count), device=x.device)
        embeddings = {
            "method": routes.decoded_image(self, x_hat),
            "uncompressed": self.teacher_embedding(batch["teacher_image"]),
        }
        self.evaluation.update(batch, embeddings, self.text_emb, nbytes, x_hat, bits)

    # -- the artifact: the trained codec (what a decoder needs) with the editor (what the edge adds) -----------
    def export(self) -> dict[str, Any]:
        """``export.pt``: the jointly trained codec as a codec checkpoint (``latentbridge-codec --codec``) that also
        carries the pre-editor (``nn.pre_editor.editor_checkpoint``), tied to this codec's weights."""
        checkpoint = codec_checkpoint(self.codec)
        if isinstance(self.editor, PreEditor):
            checkpoint["editor"] = editor_checkpoint(self.editor, self.codec)
        return checkpoint


def _bpp(likelihoods: dict[str, Tensor], count: int, m: int, pixels: int) -> Tensor:
    """Each image's estimated bits per pixel; in a mosaic every image gets its mosaic's (the rate is shared)."""
    bits = bits_per_image(likelihoods).float() / (pixels * m * m)
    return bits.repeat_interleave(m * m)[:count] if m > 1 else bits


def _tag(q: float) -> str:
    """A rate point in a metric name: q=0.5 -> "q0_5"."""
    return f"q{q:g}".replace(".", "_")


def zero_shot(embedding: Tensor, text_emb: Tensor, labels: Tensor) -> Tensor:
    return zero_shot_correct(embedding.float(), text_emb, labels)
