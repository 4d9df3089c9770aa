"""Token distortion: the distance between two sets of vision-transformer tokens.

Shared by paper 1's optional token-level distillation (the transform-neck's tokens entering block k matched to the
teacher's hidden states after block k, all tokens; beyond the paper, off by default) and paper 2's token-distortion
loss L_tk (design ``paper2.md`` 2.5): ``(1 / (N C)) sum_i ||n(t_i) - n(t'_i)||^2`` with ``n`` a parameter-free
LayerNorm over channels, i.e. the mean over tokens of 2 (1 - Pearson rho). Pre-LN blocks read LN(t), so this is
the distortion the next block sees (up to its affine), and CLIP's few huge-magnitude channels do not dominate it.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

TokenNorm = Literal["layernorm", "none"]


def token_distortion(tokens: Tensor, target: Tensor, norm: TokenNorm = "layernorm") -> Tensor:
    """Mean squared distance of (B, N, C) tokens to the target tokens (no gradient to the target)."""
    if tokens.shape != target.shape:
        raise ValueError(f"token shapes differ: {tuple(tokens.shape)} vs target {tuple(target.shape)}")
    target = target.detach().to(tokens.dtype)
    if norm == "layernorm":
        c = tokens.shape[-1]
        tokens, target = F.layer_norm(tokens, (c,), eps=1e-6), F.layer_norm(target, (c,), eps=1e-6)
    elif norm != "none":
        raise ValueError(f"unknown token norm '{norm}' (layernorm, none)")
    return F.mse_loss(tokens, target)
