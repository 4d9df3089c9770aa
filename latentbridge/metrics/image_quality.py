"""Reconstruction quality of decoded images in [0, 1] (paper 4.3, Fig. 4): PSNR and MS-SSIM via torchmetrics.

One definition everywhere: PSNR is computed per image and averaged over images (the convention of learned-
compression papers), MS-SSIM only for images larger than 160 px a side (torchmetrics' default kernel).
"""

from __future__ import annotations

from torch import Tensor
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure, peak_signal_noise_ratio
from torchmetrics.image import PeakSignalNoiseRatio

MS_SSIM_MIN_SIDE = 160


def psnr(x_hat: Tensor, x: Tensor) -> Tensor:
    """Per-image PSNR in dB, shape (B,)."""
    return peak_signal_noise_ratio(x_hat.float(), x.float(), data_range=1.0, reduction="none", dim=(1, 2, 3))


def psnr_metric() -> PeakSignalNoiseRatio:
    """The streaming (and DDP-synchronized) mean of per-image PSNR."""
    return PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3))


def ms_ssim(x_hat: Tensor, x: Tensor) -> Tensor | None:
    """Per-image MS-SSIM, shape (B,); None for images of 160 px a side or less."""
    if min(x.shape[-2:]) <= MS_SSIM_MIN_SIDE:
        return None
    return multiscale_structural_similarity_index_measure(x_hat.float(), x.float(), data_range=1.0, reduction="none")
