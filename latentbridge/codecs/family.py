"""A family of fixed-rate codecs: one architecture trained at several rate points (paper 1 4.1: ELIC at four
lambdas), held together so that one rate-conditioned transform-neck (``nn/rate_conditioned_neck.py``) can be trained
over, and serve, all of them. Each member codes exactly as it does alone: a member's stream is that codec's stream
(its lambda in the header), so an edge device needs only its own member.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from latentbridge.codecs.adapter import CodecAdapter
from latentbridge.codecs.bitstream import Bitstream, BitstreamError
from latentbridge.codecs.vbr import float32
from latentbridge.core.errors import ConfigError
from latentbridge.core.rates import check_rate


class CodecFamily(nn.Module):
    """Fixed-rate codecs of one name and architecture at distinct rate points, ordered by lambda."""

    variable_rate = False
    lmbda = None  # no single rate point: ``rates`` lists them

    def __init__(self, members: Sequence[CodecAdapter]) -> None:
        super().__init__()
        members = sorted(members, key=lambda c: float(c.lmbda))
        if not members:
            raise ConfigError("scenario.rates: a codec family needs at least one rate point")
        first = members[0]
        for m in members:
            if m.variable_rate or m.lmbda is None:
                raise ConfigError(f"codec.name: '{m.name}' is variable-rate; a codec family holds fixed-rate codecs")
            if (m.name, m.arch) != (first.name, first.arch):
                raise ConfigError(f"codec: a family holds one architecture, got '{first.name}' and '{m.name}'")
        lmbdas = [float(m.lmbda) for m in members]
        if len(set(lmbdas)) != len(lmbdas):
            raise ConfigError(f"scenario.rates: {lmbdas} repeats a rate point")
        self.members = nn.ModuleList(members)
        self.rates: tuple[float, ...] = tuple(lmbdas)
        self.name, self.arch = first.name, dict(first.arch)
        self.stride, self.pad_multiple, self.decoder = first.stride, first.pad_multiple, first.decoder

    @property
    def latent_channels(self) -> int:
        return int(self.arch["M"])

    def index(self, lmbda: float) -> int:
        """The member coding at rate point ``lmbda`` (as float32, what a header carries); ValueError naming the rate
        and the family's rates otherwise."""
        for i, r in enumerate(self.rates):
            if float32(r) == float32(lmbda):
                return i
        covered = ", ".join(f"{r:g}" for r in self.rates)
        raise ValueError(f"rate lambda={lmbda:g} is not one this run covers (lambda {covered})")

    def member(self, lmbda: float) -> CodecAdapter:
        return self.members[self.index(lmbda)]

    def update_tables(self) -> None:
        """Every member's entropy-coder tables."""
        for m in self.members:
            m.update_tables()


def stream_coder(
    codec: CodecFamily | CodecAdapter, header: Bitstream, rate_range: tuple[float, float]
) -> tuple[CodecAdapter, float | None, float]:
    """For a rate-conditioned run (one neck over ``rate_range``), from a parsed header alone: the codec that decodes
    the stream, the rate point ``decode_latent`` checks it against (the member's lambda; None for a variable-rate
    codec, whose stream carries its gain) and the rate (lambda) the neck is told: that member's lambda, or
    lambda = g^2 lambda_ref of the header's gain g. A rate the run does not cover is a ``BitstreamError`` naming
    it (before any entropy decoding)."""
    try:
        if isinstance(codec, CodecFamily):
            member = codec.member(header.lmbda)  # its own lambda (the header's is its float32)
            return member, float(member.lmbda), float(member.lmbda)
        gain = float(header.lmbda)
        rate = gain * gain * codec.ladder.lmbda_ref if math.isfinite(gain) and gain > 0 else math.nan
        return codec, None, check_rate(rate, *rate_range)
    except ValueError as e:
        raise BitstreamError(str(e)) from None


__all__ = ["CodecFamily", "stream_coder"]
