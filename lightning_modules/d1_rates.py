"""d1 with one transform-neck for every rate (beyond paper 1, which trains one neck per rate point; issue: one neck
for every rate): the codec is frozen as in d1, the rate-conditioned neck (``nn/rate_conditioned_neck.py``) trains
with L_S over all of ``rates`` (lambdas) at once, and is told each stream's rate.

Two kinds of codec:
- a family of fixed-rate codecs (``codecs/family.py``: one per rate, e.g. ELIC at the paper's four lambdas): each
  training batch is coded by one member, drawn per step; the latent cache holds every member's y_hat of each image;
- a variable-rate codec (paper 2's, ``codecs/vbr.py``): each training batch is coded at one lambda drawn log-uniformly
  over [min(rates), max(rates)] (its q per batch), uncached (the latent depends on the continuous rate).
The rate drawn for a step depends only on the step (``rate_seed``): a resumed run, and every DDP rank, draws the same.
Validation runs every image at every rate of ``rates``: ``val/top1_neck`` (the checkpoint monitor) is the mean over
rates, ``val/top1_neck_lambda<r>`` each rate's. The test (evaluate.py) codes real bitstreams at ``eval_rate``; the
neck reads the rate from the stream's header, as the server does (``stream_coder``).
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from torchmetrics import MeanMetric

from latentbridge import routes
from latentbridge.codecs.adapter import CodecAdapter, bits_per_image
from latentbridge.codecs.bitstream import Bitstream, decode_latent
from latentbridge.codecs.family import CodecFamily, stream_coder
from latentbridge.core.errors import ConfigError
from latentbridge.metrics.image_quality import psnr
from latentbridge.metrics.zero_shot import zero_shot_correct
from latentbridge.nn.rate_conditioned_neck import RateConditionedNeck
from lightning_modules.bridge import BridgeModule


def rate_tag(rate: float) -> str:
    """A rate in a metric name: 0.0001 -> "lambda0_0001" (module names cannot hold dots)."""
    return f"lambda{rate:g}".replace(".", "_").replace("-", "m")


class D1RatesModule(BridgeModule):
    """d1 over several rates: codec frozen, one rate-conditioned neck trained with L_S at every rate."""

    scenario_name: ClassVar[str] = "d1_rates"
    trainable: ClassVar[tuple[str, ...]] = ("neck",)

    def __init__(
        self,
        codec: CodecFamily | CodecAdapter,
        vision: Any,
        neck: Any,
        loss: Any,
        optimizer: Any,
        scheduler: Any = None,
        rates: Sequence[float] = (),
        rate_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        rates = tuple(sorted(float(r) for r in rates))
        if not rates or not all(math.isfinite(r) and r > 0 for r in rates):
            raise ConfigError(f"scenario.rates: {list(rates)} must be one or more positive lambdas")
        if isinstance(codec, CodecFamily):
            if codec.rates != rates:
                raise ConfigError(f"scenario.rates: {list(rates)}, but the codec family codes at {list(codec.rates)}")
        elif codec.variable_rate:
            for r in rates:
                codec.ladder.q(r)  # a lambda outside the ladder: one line naming it
        else:
            raise ConfigError(
                f"scenario.rates: codec '{codec.name}' is one fixed-rate codec (lambda={codec.lmbda}); d1_rates trains "
                "over a family of them (built from codec + scenario.rates) or a variable-rate codec (codec=mini_vbr)"
            )
        if getattr(loss, "token_weight", 0.0):
            raise ConfigError("loss.token_weight: token distillation is not implemented for d1_rates (set 0)")
        if not (isinstance(neck, functools.partial) and issubclass(neck.func, RateConditionedNeck)):
            raise ConfigError("neck: d1_rates trains a rate-conditioned neck (use neck=rate_conditioned)")
        neck = functools.partial(neck, rate_range=(rates[0], rates[-1]))
        super().__init__(codec, vision, neck, loss, optimizer, scheduler, **kwargs)
        self.rates = rates
        self.eval_rate = rates[0]
        for r in rates:
            for k in ("top1_neck", "top1_reconstruction", "bpp", "psnr"):
                self.metrics[f"{k}_{rate_tag(r)}"] = MeanMetric()

    @property
    def family(self) -> bool:
        """Whether the codec is a family of fixed-rate codecs (else one variable-rate codec)."""
        return isinstance(self.codec, CodecFamily)

    def signature(self) -> dict[str, Any]:
        return {**super().signature(), "rates": list(self.rates)}

    # -- rates: what a step trains at, how a rate is coded, what a stream says -----------------------------
    def training_rate(self) -> tuple[float, int | None]:
        """This step's rate (and, for a family, its member's index): a function of the step alone."""
        rng = random.Random(self.global_step * 1_000_003 + int(self.hparams.get("rate_seed", 0)))
        if self.family:
            i = rng.randrange(len(self.rates))
            return self.rates[i], i
        lo, hi = math.log(self.rates[0]), math.log(self.rates[-1])
        return math.exp(lo + (hi - lo) * rng.random()), None

    def coder(self, rate: float) -> tuple[CodecAdapter, float | None]:
        """The codec that codes at ``rate`` and its coding gain (a family member and None, or the variable-rate
        codec and g(q(rate)))."""
        if self.family:
            return self.codec.member(rate), None
        return self.codec, self.codec.ladder.gain(self.codec.ladder.q(rate))

    def stream_coder(self, header: Bitstream) -> tuple[CodecAdapter, float | None, float]:
        """From a checked header alone: the codec that decodes the stream, the rate point it is checked against and
        the rate (lambda) the neck is told, here and on the server; a rate this run does not cover is a
        ``BitstreamError`` naming it (``codecs/family.stream_coder``)."""
        return stream_coder(self.codec, header, self.neck.rate_range)

    def check_rate(self, rate: float, key: str) -> float:
        """``rate`` if this run covers it (a family's rate point, or inside the trained range); else a ConfigError
        naming ``key``, the rate and what is covered."""
        try:
            self.coder(rate)
            self.neck.rate_code(torch.tensor([rate], dtype=torch.float64))
        except (ValueError, ConfigError) as e:
            raise ConfigError(f"{key}: {e}") from None
        return rate

    def latent_at(self, x: Tensor, rate: float) -> tuple[Tensor, dict[str, Tensor]]:
        codec, gain = self.coder(rate)
        return codec.latent(x, gain)

    # -- training ---------------------------------------------------------------------------------------------
    def training_loss(self, batch: dict[str, Tensor]) -> Any:
        """L_S on the neck path at this step's rate (from the cache: that member's cached y_hat)."""
        rate, i = self.training_rate()
        if "y_hat" in batch:
            y_hat, teacher = batch["y_hat"][:, i].float(), batch["target"].float()
        else:
            y_hat, _ = self.latent_at(batch["image"], rate)
            teacher = batch["target"].float() if "target" in batch else self.teacher_embedding(batch["teacher_image"])
        student = self.method_embedding(y_hat, rate)
        return self.loss_fn(student, teacher, self.text_emb, batch["label"], self.current_epoch)

    # -- the latent cache: every member's y_hat (a family); C(x) only (a variable-rate codec) --------------
    @property
    def cacheable(self) -> bool:
        return self.family

    def cache_fields(self, split: str) -> tuple[str, ...]:
        if not self.cacheable:
            return ("target",)
        return ("y_hat", "target", "recon", "bits", "psnr") if split == "val" else ("y_hat", "target")

    @torch.no_grad()
    def cache_batch(self, batch: dict[str, Any], split: str) -> dict[str, Tensor]:
        """C(x), and per member (stacked on dim 1): y_hat, and for validation its Reconstruction, bits and PSNR."""
        out = {"target": self.teacher_embedding(batch["teacher_image"])}
        if not self.cacheable:
            return out
        per_rate = [self._paths_at(batch["image"], r, split == "val") for r in self.rates]
        return out | {k: torch.stack([p[k] for p in per_rate], 1) for k in per_rate[0]}

    def _paths_at(self, x: Tensor, rate: float, constant_paths: bool) -> dict[str, Tensor]:
        y_hat, likelihoods = self.latent_at(x, rate)
        if not constant_paths:
            return {"y_hat": y_hat}
        x_hat = self.coder(rate)[0].synthesize(y_hat)
        return {
            "y_hat": y_hat,
            "recon": routes.decoded_image(self, x_hat),
            "bits": bits_per_image(likelihoods),
            "psnr": psnr(x_hat, x),
        }

    # -- validation: every image at every rate ------------------------------------------------------------
    @torch.no_grad()
    def evaluate_batch(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        labels = batch["label"]
        target = batch["target"] if "target" in batch else self.teacher_embedding(batch["teacher_image"])
        out = {"top1_uncompressed": zero_shot_correct(target.float(), self.text_emb, labels)}
        pixels = self.hparams.image_size**2
        for i, r in enumerate(self.rates):
            if "y_hat" in batch:
                paths = {k: batch[k][:, i] for k in ("y_hat", "recon", "bits", "psnr")}
            else:
                paths = self._paths_at(batch["image"], r, True)
            tag = rate_tag(r)
            neck = self.method_embedding(paths["y_hat"].float(), r)
            out[f"top1_neck_{tag}"] = zero_shot_correct(neck.float(), self.text_emb, labels)
            out[f"top1_reconstruction_{tag}"] = zero_shot_correct(paths["recon"].float(), self.text_emb, labels)
            out[f"bpp_{tag}"] = paths["bits"].float() / pixels
            out[f"psnr_{tag}"] = paths["psnr"].float()
        for k in ("top1_neck", "top1_reconstruction", "bpp", "psnr"):  # the means over rates (top1_neck: monitor)
            out[k] = torch.stack([out[f"{k}_{rate_tag(r)}"].float() for r in self.rates]).mean(0)
        return out

    # -- test: real bitstreams at eval_rate (evaluate.py sets it), through BridgeModule.test_step ---------------
    def edge_coding(self) -> tuple[CodecAdapter, float]:
        """The edge codes at ``eval_rate``: its family member and lambda, or the variable-rate codec and g(q)."""
        codec, gain = self.coder(self.eval_rate)
        return codec, self.eval_rate if gain is None else gain

    def server_latent(self, stream: bytes) -> tuple[Tensor, float]:
        """The header names the codec and the rate (as on the server); y_hat from the bytes, and that rate."""
        codec, lmbda, rate = self.stream_coder(Bitstream.from_bytes(stream))
        return decode_latent(codec, stream, lmbda)[0], rate


__all__ = ["D1RatesModule", "rate_tag"]
