"""The rate range of a rate-conditioned model (one transform-neck for every rate): the one check, shared by the neck
(``nn/rate_conditioned_neck.py``) and the decoder side that refuses a stream before entropy decoding
(``codecs/family.py``)."""

from __future__ import annotations

import math

#: relative slack on the range's ends (rates travel as float32 in bitstream headers)
RATE_TOLERANCE = 1e-5


def check_rate(rate: float, low: float, high: float) -> float:
    """``rate`` if it lies in [low, high] (up to ``RATE_TOLERANCE``); a ValueError naming the rate and the range."""
    if not (math.isfinite(rate) and low * (1 - RATE_TOLERANCE) <= rate <= high * (1 + RATE_TOLERANCE)):
        raise ValueError(f"rate {rate:g} is outside the range this neck was trained on [{low:g}, {high:g}]")
    return rate
