"""The transform-neck T (paper 3.3, Fig. 2): maps the coded latent y_hat into what enters block k of C.

Linear projection of each latent position (M -> width), a learned class token, a learned positional embedding
over 1 + H*W positions, ln_pre, then one pre-LN residual attention block (LN -> MHA -> +; LN -> MLP -> +).
For ELIC (M=320) into CLIP ViT-L/14 (width 1024, 16 heads) at 256x256 (16x16 latent grid): 13,191,168
parameters (paper Table 3: 13.19M). Encoders that are not CLIP ViTs (paper 4.6) declare what block k takes
(``latentbridge/vision/insertion.py``): ``class_token=False`` (SigLIP) drops the class token and its position;
``layout="feature_map"`` (ConvNeXt) returns the tokens as a (B, width, H, W) map, one position per latent position.
"""

from __future__ import annotations

import torch
from open_clip.transformer import LayerNorm, QuickGELU, ResidualAttentionBlock
from torch import Tensor, nn

LAYOUTS = ("tokens", "feature_map")


class TransformNeck(nn.Module):
    """y_hat (B, M, H, W) -> tokens (B, 1 + H*W, width), class token first; or (B, H*W, width) without a class token;
    or a (B, width, H, W) feature map."""

    def __init__(
        self,
        in_channels: int,
        width: int,
        heads: int,
        grid_size: int | tuple[int, int],
        mlp_ratio: float = 4.0,
        depth: int = 1,
        class_token: bool = True,
        layout: str = "tokens",
    ) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"transform-neck layout '{layout}' is not one of {', '.join(LAYOUTS)}")
        if layout == "feature_map" and class_token:
            raise ValueError("transform-neck: a feature map has no class token")
        self.grid_size = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
        self.layout = layout
        scale = width**-0.5
        self.proj = nn.Linear(in_channels, width)
        self.class_embedding = nn.Parameter(scale * torch.randn(width)) if class_token else None
        positions = int(class_token) + self.grid_size[0] * self.grid_size[1]
        self.positional_embedding = nn.Parameter(scale * torch.randn(positions, width))
        self.ln_pre = LayerNorm(width)
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, act_layer=QuickGELU, batch_first=True) for _ in range(depth)
        )

    def forward(self, y_hat: Tensor) -> Tensor:
        self.check_grid(y_hat)
        return self.output(self.run_blocks(self.embed(y_hat)))

    def check_grid(self, y_hat: Tensor) -> None:
        if tuple(y_hat.shape[-2:]) != self.grid_size:
            raise ValueError(
                f"transform-neck expects a {self.grid_size[0]}x{self.grid_size[1]} latent grid, got "
                f"{y_hat.shape[-2]}x{y_hat.shape[-1]} (data.image_size / the codec's stride sets the grid)"
            )

    def embed(self, y_hat: Tensor) -> Tensor:
        """Projection, class token, positions, ln_pre: the tokens entering the neck's block."""
        x = self.proj(y_hat.flatten(2).transpose(1, 2))  # (B, H*W, width)
        if self.class_embedding is not None:
            cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat([cls, x], dim=1)
        return self.ln_pre(x + self.positional_embedding.to(x.dtype))

    def run_blocks(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def output(self, x: Tensor) -> Tensor:
        """Tokens as block k takes them (a feature map for a CNN)."""
        if self.layout == "feature_map":
            return x.transpose(1, 2).reshape(x.shape[0], -1, *self.grid_size)
        return x
