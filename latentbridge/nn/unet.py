"""The Post-processing baseline's network (paper 4.1, Table 3): a U-Net (Ronneberger et al. 2015) on the decoded
image x_hat, trained with the surrogate loss so that C(P(x_hat)) matches C(x).

The classic U-Net (base 64, four 2x down/up steps, double 3x3 conv + BN + ReLU, transposed-conv upsampling) with
3 input and 3 output channels has 31,037,763 parameters: Table 3's 31.04M. Design choice (the paper is silent):
the output is a residual, P(x_hat) = clamp(x_hat + U(x_hat), 0, 1), and the last convolution starts at zero,
so training starts from the Reconstruction baseline.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """x_hat (B, 3, H, W) in [0, 1], H and W multiples of 2**depth -> post-processed image in [0, 1]."""

    def __init__(self, base_channels: int = 64, depth: int = 4, channels: int = 3) -> None:
        super().__init__()
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.inc = double_conv(channels, widths[0])
        self.down = nn.ModuleList(double_conv(widths[i], widths[i + 1]) for i in range(depth))
        levels = list(reversed(range(depth)))
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in levels)
        self.up_conv = nn.ModuleList(double_conv(2 * widths[i], widths[i]) for i in levels)
        self.out = nn.Conv2d(widths[0], channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x_hat: Tensor) -> Tensor:
        m = 2**self.depth
        if x_hat.shape[-2] % m or x_hat.shape[-1] % m:
            raise ValueError(f"U-Net of depth {self.depth} needs H, W divisible by {m}, got {tuple(x_hat.shape[-2:])}")
        skips = [self.inc(x_hat)]
        for down in self.down:
            skips.append(down(self.pool(skips[-1])))
        h = skips.pop()
        for up, conv in zip(self.up, self.up_conv, strict=True):
            h = conv(torch.cat([skips.pop(), up(h)], dim=1))
        return (x_hat + self.out(h)).clamp(0, 1)


__all__ = ["UNet"]
