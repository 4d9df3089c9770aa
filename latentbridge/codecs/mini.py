"""The mini codec's architecture: a mean-scale hyperprior (Minnen et al. 2018) at stride 8 for 32x32 images.

Fashion-MNIST is 28x28; the paper's codecs have stride 16 and need inputs that are multiples of 64, which made the
old mini upsample 28 -> 64 px, so coding removed little that mattered to the teacher. This one codes the images at
(nearly) native size: g_a has three stride-2 stages (32x32 -> a 4x4 latent grid, the mini teacher's 4x4 patch grid
at patch 8), and the hyper-analysis one (4x4 -> 2x2 hyper-latent), so inputs need only be multiples of 16.
Registered in compressai's model registry, so the adapter builds it like any compressai model.
"""

from __future__ import annotations

from compressai.layers import GDN
from compressai.models import MeanScaleHyperprior
from compressai.models.utils import conv, deconv
from compressai.registry import register_model
from torch import nn

MINI_MODEL = "latentbridge-mini-s8"


class MiniTransforms:
    """Mixin for a compressai mean-scale model: the mini transforms, 3 stride-2 analysis / synthesis stages and a
    1-stage hyperprior (the fixed-rate mini codec here, the variable-rate one in ``codecs/vbr.py``)."""

    def __init__(self, N: int = 48, M: int = 64, **kwargs: object) -> None:
        super().__init__(N=N, M=M, **kwargs)
        self.g_a = nn.Sequential(conv(3, N), GDN(N), conv(N, N), GDN(N), conv(N, M))
        self.g_s = nn.Sequential(deconv(M, N), GDN(N, inverse=True), deconv(N, N), GDN(N, inverse=True), deconv(N, 3))
        self.h_a = nn.Sequential(conv(M, N, stride=1, kernel_size=3), nn.LeakyReLU(inplace=True), conv(N, N))
        self.h_s = nn.Sequential(deconv(N, M), nn.LeakyReLU(inplace=True), conv(M, M * 2, stride=1, kernel_size=3))

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (3 + 1)


@register_model(MINI_MODEL)
class MiniMeanScaleHyperprior(MiniTransforms, MeanScaleHyperprior):
    """compressai's ``MeanScaleHyperprior`` with 3 analysis / synthesis stages and a 1-stage hyperprior."""
