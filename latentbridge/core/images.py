"""Reading user images: any PIL-readable file (grey, palette, RGBA, 16-bit) -> RGB, with one-line errors."""

from __future__ import annotations

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


def read_image(path: Path) -> torch.Tensor:
    """An image file -> (1, 3, H, W) in [0, 1]; a missing, unreadable or oversized file is a DataError."""
    try:
        with Image.open(path) as img:
            img.load()
            rgb = to_rgb(img)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from None
    if max(rgb.size) > MAX_SIDE:
        raise DataError(f"{path}: {rgb.size[0]}x{rgb.size[1]} is larger than {MAX_SIDE} pixels per side")
    return to_tensor(rgb).unsqueeze(0)
