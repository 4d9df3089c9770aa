"""Preprocessing (paper 4.1, REFERENCE): Resize 256 + CenterCrop 256 for the codec; the teacher's own transform
(bicubic resize, center crop, CLIP normalization) for C(x) of the uncompressed image."""

from __future__ import annotations

from collections.abc import Sequence

from torchvision import transforms as T

from latentbridge.core.images import to_rgb


def codec_transform(image_size: int) -> T.Compose:
    """Image -> [0, 1] tensor of image_size x image_size for the codec (Resize + CenterCrop)."""
    return T.Compose([T.Lambda(to_rgb), T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor()])


def teacher_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """Image -> C's input: bicubic resize (short side), center crop, normalization."""
    return T.Compose(
        [
            T.Lambda(to_rgb),
            T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
