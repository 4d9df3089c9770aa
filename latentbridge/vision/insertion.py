"""What the transform-neck must produce to enter an encoder at its insertion point k (paper 3.3, 4.6).

Every encoder C is split as ``pool(run_blocks(embed(x), k))``; ``insertion(k)`` says what ``run_blocks`` takes at k:
- ``tokens`` (ViTs: open_clip's, Hugging Face CLIP, timm towers such as SigLIP): (B, [1 +] H*W, width), with or
  without a class token first; any H x W works (the neck brings its own positional embedding);
- ``feature_map`` (CNNs: CLIP ConvNeXt): (B, width, H, W) at stage s's resolution, which the latent grid must equal.
``heads``: the attention heads of the neck's block (the encoder's own at k; 64 channels per head for a CNN).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

Layout = Literal["tokens", "feature_map"]


class Geometry(NamedTuple):
    """The tower's shape, as the checks and the reports need it."""

    width: int  # token width (a CNN: channels of its last stage)
    heads: int  # attention heads per block (0: a CNN)
    num_blocks: int  # transformer blocks (a CNN: its blocks over all stages)
    grid_size: tuple[int, int]  # patch grid (a CNN: its last stage's feature map)
    embed_dim: int  # projected embedding


class Insertion(NamedTuple):
    """The input of block k, as the transform-neck builds it."""

    layout: Layout
    width: int
    grid_size: tuple[int, int]
    heads: int
    class_token: bool


__all__ = ["Geometry", "Insertion", "Layout"]
