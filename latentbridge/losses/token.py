"""Token losses: the distance between two sets of vision-transformer tokens (per token and as a set).

Shared by paper 1's optional token-level distillation (the transform-neck's tokens entering block k matched to the
teacher's hidden states after block k, all tokens; beyond the paper, off by default) and paper 2's token-distortion
loss L_tk (design ``paper2.md`` 2.5): ``(1 / (N C)) sum_i ||n(t_i) - n(t'_i)||^2`` with ``n`` a parameter-free
LayerNorm over channels, i.e. the mean over tokens of 2 (1 - Pearson rho). Pre-LN blocks read LN(t), so this is
the distortion the next block sees (up to its affine), and CLIP's few huge-magnitude channels do not dominate it.
"""

from __future__ import annotations

from typing import Literal

import torch
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


def spectrum(tokens: Tensor) -> Tensor:
    """(B, N, C) tokens -> (B, K) eigenvalues of each image's token covariance, normalised (Diff-eRank, Wei et al.
    2024): centre over tokens, scale each token to unit length, Sigma = Z^T Z / N, p_k = sigma_k(Z)^2 / N (sums to 1
    unless tokens coincide), K = min(N, C). ``svdvals`` only: its gradients are stable at repeated values."""
    z = tokens if tokens.dtype == torch.float64 else tokens.float()  # float32 at least, also under autocast
    with torch.autocast(z.device.type, enabled=False):
        z = z - z.mean(dim=-2, keepdim=True)
        z = z / torch.linalg.vector_norm(z, dim=-1, keepdim=True).clamp_min(1e-6)
        return torch.linalg.svdvals(z).square() / tokens.shape[-2]


def effective_rank(tokens: Tensor) -> Tensor:
    """exp(entropy) of the normalised spectrum (RankMe / Diff-eRank), per image: how many directions the tokens
    spread over (logged for both images: blur lowers it, noise raises it)."""
    p = spectrum(tokens)
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-12)
    return torch.exp(-(p * torch.log(p + 1e-12)).sum(-1))


def rank_loss(tokens: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """Paper 2's rank loss L_rk (our formula; design 2.5): KL(p || p_hat) of the target's and the tokens' normalised
    covariance spectra, averaged over the batch. Zero iff the spectra match; invariant to permuting, rotating
    (T -> TQ), scaling and shifting the tokens, so it measures the spread of the set that L_tk (per token) does not."""
    if tokens.shape != target.shape:
        raise ValueError(f"token shapes differ: {tuple(tokens.shape)} vs target {tuple(target.shape)}")
    p, p_hat = spectrum(target.detach()), spectrum(tokens)
    return (p * torch.log((p + eps) / (p_hat + eps))).sum(-1).mean()
