"""Variable-rate codecs (paper 2, Li et al. 2024: "a variable bitrate framework"; design ``paper2.md`` 2.3).

One model codes at every rate of a continuous range. The "adaptive layer" is compressai's: a scalar quantiser gain
``g`` (the inverse quantisation step of y, Kamisli et al., DCC 2024, ``compressai.models.vbr``) and a small MLP that
predicts reconstruction offsets from (sigma * g, g). A rate is a point ``q`` in [0, 1] of a ``RateLadder``:
``lambda(q) = lambda_min (lambda_max / lambda_min)^q`` and ``g(q) = sqrt(lambda(q) / lambda_ref)``. With
``lambda_ref = 0.18`` this reproduces compressai's own eight (lambda, Gain) pairs (its ladder, zoo weights). The
mini ladder puts gain 1 at its top (``lambda_ref = lambda_max``): with compressai's reference its gains would be
0.007-0.13, steps so coarse that a mini codec trained on them coded nothing in y at any rate (measured: the same
top-1 at every q). The gain travels in the bitstream header (float32), so a decoder needs nothing else.

compressai's class ignores the requested gain in training mode (``_get_scale`` returns ``Gain[s]``); our subclasses
use it in both modes. The mini one has the mini codec's transforms (``codecs/mini.py``).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from compressai.models.vbr import MeanScaleHyperpriorVbr
from compressai.registry import register_model
from torch import Tensor

from latentbridge.codecs.mini import MiniTransforms
from latentbridge.core.errors import ConfigError

#: compressai's lambda of gain 1.0: its (lambda, Gain) pairs satisfy Gain = sqrt(lambda / 0.18)
COMPRESSAI_LAMBDA_REF = 0.18
VBR_MODEL = "latentbridge-mbt2018-mean-vbr"
MINI_VBR_MODEL = "latentbridge-mini-vbr-s8"


def float32(v: float) -> float:
    """``v`` rounded to float32: the value a bitstream header carries (encoder and decoder use the same)."""
    return struct.unpack(">f", struct.pack(">f", float(v)))[0]


@dataclass(frozen=True)
class RateLadder:
    """The continuous rate range of a variable-rate codec: q in [0, 1] <-> lambda <-> gain, exact inverses."""

    lmbda_min: float
    lmbda_max: float
    lmbda_ref: float = COMPRESSAI_LAMBDA_REF  # the lambda of gain 1

    def __post_init__(self) -> None:
        if not (0 < self.lmbda_min < self.lmbda_max and math.isfinite(self.lmbda_max)):
            raise ConfigError(
                f"codec.ladder: need 0 < lmbda_min < lmbda_max, got lmbda_min={self.lmbda_min}, "
                f"lmbda_max={self.lmbda_max}"
            )
        if not (0 < self.lmbda_ref and math.isfinite(self.lmbda_ref)):
            raise ConfigError(f"codec.ladder.lmbda_ref: {self.lmbda_ref} must be a positive lambda")

    def lmbda(self, q: float) -> float:
        """The rate-distortion weight of rate point q (compressai's convention: lambda * 255^2 * MSE + bpp)."""
        return self.lmbda_min * (self.lmbda_max / self.lmbda_min) ** self.check_q(q)

    def q(self, lmbda: float) -> float:
        """The rate point of a lambda inside the ladder (a lambda outside it: ConfigError naming ``rate``)."""
        lo, hi = self.lmbda_min, self.lmbda_max
        if not (math.isfinite(lmbda) and lo * (1 - 1e-9) <= lmbda <= hi * (1 + 1e-9)):
            raise ConfigError(f"rates: lambda={lmbda:g} is outside this codec's ladder [{lo:g}, {hi:g}]")
        return min(1.0, max(0.0, math.log(lmbda / lo) / math.log(hi / lo)))

    def gain(self, q: float) -> float:
        """The quantiser gain of rate point q, as float32 (what is coded with and written to the header)."""
        return float32(math.sqrt(self.lmbda(q) / self.lmbda_ref))

    def q_of_gain(self, gain: float) -> float:
        """The rate point a header's gain stands for (reports only: decoding uses the gain itself)."""
        return self.q(gain * gain * self.lmbda_ref)

    @property
    def gain_range(self) -> tuple[float, float]:
        """The smallest and largest gain a stream of this ladder may carry."""
        return self.gain(0.0), self.gain(1.0)

    def resolve(self, rate: float | str) -> float:
        """A user's rate -> q: ``"q=0.3"`` (a rate point) or a lambda inside the ladder (``0.0009``)."""
        if isinstance(rate, str) and rate.strip().startswith("q="):
            try:
                return self.check_q(float(rate.strip()[2:]))
            except ValueError:
                raise ConfigError(f"rates: '{rate}' is not q=<number in [0, 1]>") from None
        try:
            value = float(rate)
        except (TypeError, ValueError):
            raise ConfigError(f"rates: '{rate}' is neither a lambda nor q=<number in [0, 1]>") from None
        return self.q(value)

    def as_dict(self) -> dict[str, float]:
        return {
            "lmbda_min": float(self.lmbda_min),
            "lmbda_max": float(self.lmbda_max),
            "lmbda_ref": float(self.lmbda_ref),
        }

    @staticmethod
    def check_q(q: float) -> float:
        """q as a float; one outside [0, 1] (or not finite) is a ConfigError naming ``rates``."""
        q = float(q)
        if not (math.isfinite(q) and 0.0 <= q <= 1.0):
            raise ConfigError(f"rates: q={q} is outside [0, 1]")
        return q


class GainHonouringVbr(MeanScaleHyperpriorVbr):
    """compressai's ``MeanScaleHyperpriorVbr`` whose ``forward`` uses the given ``inputscale`` in training too
    (compressai's returns ``Gain[s]`` there and ignores it: every training step would be at one rate)."""

    def _get_scale(self, stage: int, s: int, inputscale: float | Tensor) -> Tensor:
        if isinstance(inputscale, Tensor) or inputscale != 0:
            return inputscale if isinstance(inputscale, Tensor) else self.Gain.new_tensor(float(inputscale))
        return super()._get_scale(stage, s, inputscale)


register_model(VBR_MODEL)(GainHonouringVbr)


@register_model(MINI_VBR_MODEL)
class MiniMeanScaleHyperpriorVbr(MiniTransforms, GainHonouringVbr):
    """The mini codec's stride-8 transforms (``codecs/mini.py``) with compressai's variable-rate parts."""
