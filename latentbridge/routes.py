"""The paths from an image to what the vision encoder (or an MLLM's vision tower) outputs (paper Fig. 1-2, 4.1).

Every user of a path calls it from here: the scenarios' training and validation, evaluation through real
bitstreams, the lmms-eval model, the server benchmark and the path-fidelity diagnostic.

- ``uncompressed``:    C(x), the encoder on the original image (the upper bound).
- ``neck``:            C'(T(y_hat)), the transform-neck's tokens entering the encoder at block k (the method, 3.3);
                       a rate-conditioned neck also takes each stream's rate.
- ``reconstruction``:  C(g_s(y_hat)), the decoded image through the full encoder (the Reconstruction baseline).
- ``post_processing``: C(P(g_s(y_hat))), a U-Net on the decoded image, then the full encoder (that baseline).

A path takes ``parts``, anything with ``codec``, ``encoder`` (``preprocess`` / ``from_pixels`` / ``from_block``),
``neck``, ``post`` and ``skip_blocks``: a scenario module, or a LLaVA tower view (``mllm/llava_reader.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from torch import Tensor, nn

from latentbridge.codecs.adapter import CodecAdapter


class Encoder(Protocol):
    """What a path needs of the encoder: CLIP's own preprocessing, the full forward, and C' from block k."""

    def preprocess(self, x: Tensor) -> Tensor: ...

    def from_pixels(self, images: Tensor) -> Tensor: ...

    def from_block(self, tokens: Tensor, start: int) -> Tensor: ...


class Parts(Protocol):
    codec: CodecAdapter
    encoder: Encoder
    neck: nn.Module | None
    post: nn.Module | None
    skip_blocks: int


def uncompressed(parts: Parts, teacher_image: Tensor) -> Tensor:
    """C(x) of the uncompressed image, already in the encoder's input format (the datamodules' teacher_image)."""
    return parts.encoder.from_pixels(teacher_image)


def decoded_image(parts: Parts, x_hat: Tensor) -> Tensor:
    """C(x_hat) of any decoded [0, 1] image (learned or traditional codec) through the encoder's preprocessing."""
    return parts.encoder.from_pixels(parts.encoder.preprocess(x_hat))


def neck(parts: Parts, y_hat: Tensor, rate: Tensor | None = None) -> Tensor:
    """C'(T(y_hat)): the transform-neck's tokens enter the encoder at block ``skip_blocks`` (paper 3.3). ``rate``:
    each stream's rate, for a rate-conditioned neck (``nn/rate_conditioned_neck.py``)."""
    tokens = parts.neck(y_hat) if rate is None else parts.neck(y_hat, rate)
    return parts.encoder.from_block(tokens, parts.skip_blocks)


def reconstruction(parts: Parts, y_hat: Tensor) -> Tensor:
    """C(g_s(y_hat)): the Reconstruction baseline (paper 4.1; nothing trained)."""
    return decoded_image(parts, parts.codec.synthesize(y_hat))


def post_processing(parts: Parts, y_hat: Tensor) -> Tensor:
    """C(P(g_s(y_hat))): the Post-processing baseline (paper 4.1); gradients reach P only."""
    return decoded_image(parts, parts.post(parts.codec.synthesize(y_hat).detach()))


#: the paths that start from the coded latent y_hat, by name (a scenario's ``method_path`` is one of them)
LATENT_ROUTES: dict[str, Callable[[Any, Tensor], Tensor]] = {
    "neck": neck,
    "reconstruction": reconstruction,
    "post_processing": post_processing,
}


def latent_route(name: str) -> Callable[[Any, Tensor], Tensor]:
    """The path ``name`` from y_hat; an unknown name is a ValueError listing the known ones."""
    if name not in LATENT_ROUTES:
        raise ValueError(f"unknown path '{name}' (known: {', '.join(LATENT_ROUTES)})")
    return LATENT_ROUTES[name]
