"""Mosaics: code m x m small images as one picture, so a fixed per-file header (our 25-byte container, JPEG's or
HEIC's hundreds of bytes) is shared by m^2 images and no codec's comparison is decided by its header (paper 2's
anchor comparison at 32x32, design ``paper2.md`` 5.1). Each image is charged an equal share of its mosaic's bytes.
"""

from __future__ import annotations

import torch
from torch import Tensor


def tile(x: Tensor, m: int) -> tuple[Tensor, int]:
    """(B, C, H, W) -> (ceil(B / m^2), C, m H, m W) mosaics, row-major; the last one is filled with copies of the
    last image. Returns the mosaics and the number of real images."""
    b, c, h, w = x.shape
    per = m * m
    fill = (-b) % per
    if fill:
        x = torch.cat([x, x[-1:].expand(fill, c, h, w)])
    grid = x.reshape(-1, m, m, c, h, w).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(-1, c, m * h, m * w), b


def untile(mosaics: Tensor, m: int, count: int) -> Tensor:
    """The inverse of ``tile``: the first ``count`` images."""
    n, c, mh, mw = mosaics.shape
    h, w = mh // m, mw // m
    images = mosaics.reshape(n, c, m, h, m, w).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, h, w)
    return images[:count]


def shares(mosaic_bytes: list[int], m: int, count: int) -> list[float]:
    """Each real image's share of its mosaic's bytes: the mosaic's bytes over the real images in it (the images of a
    partly filled last mosaic pay for its filling too)."""
    per = m * m
    return [mosaic_bytes[i // per] / min(per, count - (i // per) * per) for i in range(count)]
