"""TCM (Liu et al., CVPR 2023): a mixed Transformer-CNN codec, paper 1's "another codec" (section 4.6, Fig. 6c).

Paper 1 repeats d1 with TIC (Lu et al. 2022); TIC's repository publishes no weights, so a Fig. 6(c) run would
start with weeks of phase-0 training. TCM is the Transformer codec the reference repository vendors, and its
authors publish N=64 weights at six lambdas (jmliu206/LIC_TCM, README "Pretrained Model"): they load here as they
are (same state-dict names). Checked against that code on seeded weights (``tests/test_reference_tcm.py``).

Structure (the names are the reference's, so its checkpoints load):
- g_a / g_s: four stride-2 stages; between them ``ConvTransBlock``s split the channels into a residual-conv half and
  a Swin-attention half (window ``window``, shifted in every second block), merged by 1x1 convolutions;
- h_a / h_mean_s / h_scale_s: a stride-4 hyperprior with the same blocks (window ``hyper_window``), z of ``Z``
  channels, separate mean and scale synthesis;
- a channel-wise autoregressive entropy model over ``num_slices`` slices of y: for slice i, the hyperprior's means
  (scales) and the decoded slices before it pass a ``SWAtten`` (attention-gated residual unit with a Swin block)
  and a 3-layer conv network to the slice's mean (scale); y_hat_i = round(y_i - mu_i) + mu_i + LRP, the latent
  residual prediction 0.5 tanh(f(support, y_hat_i)).
The reference codes all slices of y into one string; so does ``TcmAdapter`` (``codecs/adapter.py``).
Inputs: the latent grid (H/16, W/16) must be a multiple of the attention window and the hyper-transforms' grid
(H/32) of ``hyper_window``. A latent grid of exactly one window is attended as one window here; the reference pads
it inside SWAtten and then fails on mismatched shapes, so it has no output to compare with there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import (
    AttentionBlock,
    ResidualBlock,
    ResidualBlockUpsample,
    ResidualBlockWithStride,
    conv3x3,
    subpel_conv3x3,
)
from compressai.models import CompressionModel
from compressai.models.utils import conv
from compressai.registry import register_model
from torch import Tensor, nn

TCM_MODEL = "tcm2023"
MINI_TCM_MODEL = "latentbridge-mini-tcm"


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ``window`` x ``window`` windows of a (B, H, W, C) map, with a learned
    relative-position bias; ``shifted``: the windows are moved by half a window (cyclic, masked at the wrap)."""

    def __init__(self, dim: int, head_dim: int, window: int, shifted: bool) -> None:
        super().__init__()
        self.heads, self.head_dim, self.window, self.shifted = dim // head_dim, head_dim, window, shifted
        self.embedding_layer = nn.Linear(dim, 3 * dim)  # q, k, v
        self.relative_position_params = nn.Parameter(torch.zeros(self.heads, 2 * window - 1, 2 * window - 1))
        self.linear = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_params, std=0.02)

    def _bias(self) -> Tensor:
        """(heads, P, P): the bias between the window's positions p and q, by their offset."""
        w = self.window
        pos = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij"), -1).reshape(-1, 2)
        rel = pos[:, None, :] - pos[None, :, :] + w - 1
        return self.relative_position_params[:, rel[..., 0], rel[..., 1]]

    def _mask(self, rows: int, cols: int, device: torch.device) -> Tensor:
        """(rows * cols, P, P), True where a shifted window would attend across the wrap of the cyclic shift."""
        w, s = self.window, self.window - self.window // 2
        region = torch.zeros(rows * w, cols * w, dtype=torch.long, device=device)
        region[-w:, :] += (torch.arange(w, device=device) >= s).long()[:, None] * 1  # last row of windows
        region[:, -w:] += (torch.arange(w, device=device) >= s).long()[None, :] * 2  # last column of windows
        tiles = region.reshape(rows, w, cols, w).permute(0, 2, 1, 3).reshape(rows * cols, w * w)
        return tiles[:, :, None] != tiles[:, None, :]

    def forward(self, x: Tensor) -> Tensor:
        b, h, w_, c = x.shape
        win = self.window
        if self.shifted:
            x = torch.roll(x, shifts=(-(win // 2), -(win // 2)), dims=(1, 2))
        rows, cols = h // win, w_ // win
        x = x.reshape(b, rows, win, cols, win, c).permute(0, 1, 3, 2, 4, 5).reshape(b, rows * cols, win * win, c)
        q, k, v = (
            self.embedding_layer(x)
            .reshape(b, rows * cols, win * win, 3 * self.heads, self.head_dim)
            .permute(3, 0, 1, 2, 4)
            .chunk(3, dim=0)
        )  # (heads, B, windows, P, head_dim) each
        sim = torch.einsum("hbwpc,hbwqc->hbwpq", q, k) * self.head_dim**-0.5
        sim = sim + self._bias()[:, None, None]
        if self.shifted:
            sim = sim.masked_fill(self._mask(rows, cols, x.device)[None, None], float("-inf"))
        out = torch.einsum("hbwij,hbwjc->hbwic", sim.softmax(dim=-1), v)
        out = self.linear(out.permute(1, 2, 3, 0, 4).reshape(b, rows * cols, win * win, self.heads * self.head_dim))
        out = out.reshape(b, rows, cols, win, win, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w_, c)
        if self.shifted:
            out = torch.roll(out, shifts=(win // 2, win // 2), dims=(1, 2))
        return out


class SwinLayer(nn.Module):
    """Pre-norm Swin Transformer layer on (B, H, W, C): window attention, then a 4x GELU MLP, both residual."""

    def __init__(self, dim: int, head_dim: int, window: int, shifted: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.msa = WindowAttention(dim, head_dim, window, shifted)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.msa(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ConvTransBlock(nn.Module):
    """TCM's block (its Fig. 2): 1x1 conv, split into a residual-conv half and a Swin half, 1x1 conv, residual."""

    def __init__(self, conv_dim: int, trans_dim: int, head_dim: int, window: int, shifted: bool) -> None:
        super().__init__()
        self.split = (conv_dim, trans_dim)
        self.trans_block = SwinLayer(trans_dim, head_dim, window, shifted)
        self.conv1_1 = nn.Conv2d(conv_dim + trans_dim, conv_dim + trans_dim, 1)
        self.conv1_2 = nn.Conv2d(conv_dim + trans_dim, conv_dim + trans_dim, 1)
        self.conv_block = ResidualBlock(conv_dim, conv_dim)

    def forward(self, x: Tensor) -> Tensor:
        conv_x, trans_x = torch.split(self.conv1_1(x), self.split, dim=1)
        conv_x = self.conv_block(conv_x) + conv_x
        trans_x = self.trans_block(trans_x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x + self.conv1_2(torch.cat((conv_x, trans_x), dim=1))


class SwinPair(nn.Module):
    """A window layer then a shifted-window layer, on (B, C, H, W)."""

    def __init__(self, dim: int, head_dim: int, window: int) -> None:
        super().__init__()
        self.block_1 = SwinLayer(dim, head_dim, window, shifted=False)
        self.block_2 = SwinLayer(dim, head_dim, window, shifted=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.block_1(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)


class SWAtten(AttentionBlock):
    """TCM's entropy-model attention: compressai's attention block (``x + conv_a(x) * sigmoid(conv_b(.))``) whose
    gate reads a Swin pair's output, between 1x1 convolutions to and from ``inter_dim`` channels."""

    def __init__(self, dim: int, head_dim: int, window: int, inter_dim: int) -> None:
        super().__init__(N=inter_dim)
        self.non_local_block = SwinPair(inter_dim, head_dim, window)
        self.in_conv = nn.Conv2d(dim, inter_dim, 1)
        self.out_conv = nn.Conv2d(inter_dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.in_conv(x)
        out = self.conv_a(x) * torch.sigmoid(self.conv_b(self.non_local_block(x))) + x
        return self.out_conv(out)


def _stage(dim: int, head_dim: int, window: int, depth: int) -> list[nn.Module]:
    return [ConvTransBlock(dim, dim, head_dim, window, shifted=bool(i % 2)) for i in range(depth)]


def _slice_network(in_ch: int, out_ch: int, widths: Sequence[int]) -> nn.Sequential:
    """conv3x3 -> GELU -> conv3x3 -> GELU -> conv3x3 (the slice mean / scale / LRP transforms)."""
    return nn.Sequential(
        conv(in_ch, widths[0], stride=1, kernel_size=3),
        nn.GELU(),
        conv(widths[0], widths[1], stride=1, kernel_size=3),
        nn.GELU(),
        conv(widths[1], out_ch, stride=1, kernel_size=3),
    )


@register_model(TCM_MODEL)
class TCM(CompressionModel):
    """TCM with the reference's defaults (``N=64``: the released small models; 128 the large one)."""

    def __init__(
        self,
        N: int = 64,
        M: int = 320,
        Z: int = 192,
        depths: Sequence[int] = (2, 2, 2, 2, 2, 2),
        head_dim: Sequence[int] = (8, 16, 32, 32, 16, 8),
        window: int = 8,
        hyper_window: int = 4,
        hyper_head_dim: int = 32,
        num_slices: int = 5,
        max_support_slices: int = 5,
        atten_head_dim: int = 16,
        atten_window: int | None = None,
        atten_dim: int = 128,
        slice_widths: Sequence[int] = (224, 128),
    ) -> None:
        super().__init__()
        if M % num_slices:
            raise ValueError(f"TCM: M={M} is not divisible by num_slices={num_slices}")
        self.N, self.M, self.Z = N, M, Z
        self.window, self.hyper_window = window, hyper_window
        self.atten_window = window if atten_window is None else atten_window
        self.num_slices, self.max_support_slices = num_slices, max_support_slices
        d, hd, c = list(depths), list(head_dim), 2 * N
        self.g_a = nn.Sequential(
            ResidualBlockWithStride(3, c, 2), *_stage(N, hd[0], window, d[0]),
            ResidualBlockWithStride(c, c, 2), *_stage(N, hd[1], window, d[1]),
            ResidualBlockWithStride(c, c, 2), *_stage(N, hd[2], window, d[2]),
            conv3x3(c, M, stride=2),
        )  # fmt: skip
        self.g_s = nn.Sequential(
            ResidualBlockUpsample(M, c, 2), *_stage(N, hd[3], window, d[3]),
            ResidualBlockUpsample(c, c, 2), *_stage(N, hd[4], window, d[4]),
            ResidualBlockUpsample(c, c, 2), *_stage(N, hd[5], window, d[5]),
            subpel_conv3x3(c, 3, 2),
        )  # fmt: skip
        self.h_a = nn.Sequential(
            ResidualBlockWithStride(M, c, 2), *_stage(N, hyper_head_dim, hyper_window, d[0]), conv3x3(c, Z, stride=2)
        )
        self.h_mean_s = nn.Sequential(
            ResidualBlockUpsample(Z, c, 2), *_stage(N, hyper_head_dim, hyper_window, d[3]), subpel_conv3x3(c, M, 2)
        )
        self.h_scale_s = nn.Sequential(
            ResidualBlockUpsample(Z, c, 2), *_stage(N, hyper_head_dim, hyper_window, d[3]), subpel_conv3x3(c, M, 2)
        )
        part = M // num_slices
        support = [M + part * min(i, max_support_slices) for i in range(num_slices)]
        self.atten_mean = nn.ModuleList(
            nn.Sequential(SWAtten(s, atten_head_dim, self.atten_window, atten_dim)) for s in support
        )
        self.atten_scale = nn.ModuleList(
            nn.Sequential(SWAtten(s, atten_head_dim, self.atten_window, atten_dim)) for s in support
        )
        self.cc_mean_transforms = nn.ModuleList(_slice_network(s, part, slice_widths) for s in support)
        self.cc_scale_transforms = nn.ModuleList(_slice_network(s, part, slice_widths) for s in support)
        self.lrp_transforms = nn.ModuleList(
            _slice_network(M + part * min(i + 1, max_support_slices + 1), part, slice_widths) for i in range(num_slices)
        )
        self.entropy_bottleneck = EntropyBottleneck(Z)
        self.gaussian_conditional = GaussianConditional(None)

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (4 + 2)

    def check_grid(self, y: Tensor) -> None:
        """A latent grid the windows tile (see the module docstring); a ValueError naming both otherwise."""
        h, w = y.shape[-2:]
        win = self.atten_window
        if h % win or w % win or (h // 2) % self.hyper_window or (w // 2) % self.hyper_window:
            raise ValueError(
                f"TCM: a {h}x{w} latent grid does not tile into {win}x{win} attention windows "
                f"(input sides must be multiples of {16 * win})"
            )

    def slice_parameters(self, i: int, hyper: tuple[Tensor, Tensor], decoded: list[Tensor]) -> tuple[Tensor, ...]:
        """Slice i's (mu, scale, mean support) from the hyperprior's (means, scales) and the slices decoded so far."""
        support = decoded[: self.max_support_slices]
        mean_support = self.atten_mean[i](torch.cat([hyper[0], *support], dim=1))
        scale_support = self.atten_scale[i](torch.cat([hyper[1], *support], dim=1))
        return self.cc_mean_transforms[i](mean_support), self.cc_scale_transforms[i](scale_support), mean_support

    def refine(self, i: int, mean_support: Tensor, y_hat_slice: Tensor) -> Tensor:
        """Latent residual prediction: y_hat_i + 0.5 tanh(f(support, y_hat_i))."""
        lrp = self.lrp_transforms[i](torch.cat([mean_support, y_hat_slice], dim=1))
        return y_hat_slice + 0.5 * torch.tanh(lrp)

    def hyper(self, z_hat: Tensor) -> tuple[Tensor, Tensor]:
        return self.h_mean_s(z_hat), self.h_scale_s(z_hat)

    def code(self, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The entropy model on y = g_a(x): the coded y_hat and the likelihoods of y and z. As the reference: z_hat
        and each slice rounded around its medians / mean with straight-through gradients (in eval mode exactly what
        ``compress`` codes), the rate from compressai's additive noise in train mode."""
        self.check_grid(y)
        z = self.h_a(y)
        _, z_lik = self.entropy_bottleneck(z)
        medians = self.entropy_bottleneck._get_medians()
        hyper = self.hyper(_ste_round(z - medians) + medians)
        y_hat_slices: list[Tensor] = []
        y_lik = []
        for i, y_slice in enumerate(y.chunk(self.num_slices, 1)):
            mu, scale, mean_support = self.slice_parameters(i, hyper, y_hat_slices)
            y_lik.append(self.gaussian_conditional(y_slice, scale, means=mu)[1])
            y_hat_slices.append(self.refine(i, mean_support, _ste_round(y_slice - mu) + mu))
        return torch.cat(y_hat_slices, dim=1), {"y": torch.cat(y_lik, dim=1), "z": z_lik}

    def forward(self, x: Tensor) -> dict[str, object]:
        """compressai's training forward: ``{"x_hat", "likelihoods"}``."""
        y_hat, likelihoods = self.code(self.g_a(x))
        return {"x_hat": self.g_s(y_hat), "likelihoods": likelihoods}


@register_model(MINI_TCM_MODEL)
class MiniTCM(TCM):
    """The mini Transformer codec: TCM's structure at 64x64 inputs (a 4x4 latent grid, the mini teacher's token
    grid), narrow, one block per stage, 4x4 windows in the transforms and 2x2 ones on the latent grid; 64 latent
    channels in 4 slices (1.5 M parameters)."""

    def __init__(self, N: int = 16, M: int = 64, Z: int = 48, **kwargs: object) -> None:
        defaults = dict(
            depths=(1, 1, 1, 1, 1, 1), head_dim=(8, 8, 8, 8, 8, 8), window=4, atten_window=2, hyper_window=2,
            hyper_head_dim=8, num_slices=4, max_support_slices=4, atten_head_dim=8, atten_dim=16,
            slice_widths=(32, 32),
        )  # fmt: skip
        super().__init__(N=N, M=M, Z=Z, **{**defaults, **kwargs})


def _ste_round(x: Tensor) -> Tensor:
    return torch.round(x) - x.detach() + x


__all__ = ["MINI_TCM_MODEL", "TCM", "TCM_MODEL", "MiniTCM"]
