"""Reading user images: any PIL-readable file (grey, palette, RGBA, 16-bit) -> RGB, with one-line errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.functional import to_tensor

from latentbridge.core.errors import DataError

#: the largest side accepted from a user file (the bitstream carries sizes up to 65535)
MAX_SIDE = 16384


def to_rgb(img: Image.Image) -> Image.Image:
    """Grey, palette, 16-bit and RGBA images -> RGB (alpha composited on black, 16-bit scaled to 8 bits)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v / 256).convert("L")
    return img.convert("RGB")


#: what Pillow raises for a file it cannot read (a decompression bomb: a small file claiming a huge image)
UNREADABLE = (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError)


def read_image(path: Path, max_pixels: int | None = None) -> torch.Tensor:
    """An image file -> (1, 3, H, W) in [0, 1]; a missing, unreadable or oversized file is a DataError. The size is
    checked from the file's header before any pixel is decoded (``max_pixels``: H x W at most; and ``MAX_SIDE``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limits apply below
            with Image.open(path) as img:
                w, h = img.size
                if max(w, h) > MAX_SIDE:
                    raise DataError(f"{path}: {w}x{h} is larger than {MAX_SIDE} pixels per side")
                if max_pixels is not None and w * h > max_pixels:
                    raise DataError(f"{path}: {w}x{h} is {w * h} pixels, more than max_pixels={max_pixels}")
                img.load()
                rgb = to_rgb(img)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: refused by Pillow as a decompression bomb ({e})") from None
    except UNREADABLE as e:
        raise DataError(f"{path}: not a readable image ({e})") from None
    return to_tensor(rgb).unsqueeze(0)
