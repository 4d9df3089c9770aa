"""Paper 2's training objective (Li et al. 2024, abstract: L = lambda_R R + lambda_D D + lambda_T (lambda_tk L_tk +
lambda_rk L_rk); the weights are ours, design ``paper2.md`` 2.5):

    L = R + lambda(q) * [ w_pix * 255^2 * D + kappa * (ltk * L_tk + lrk * L_rk) ]

R: estimated bits per pixel of y_hat and z_hat; D: MSE of the decoded image against the original ([0, 1] images:
edits count as distortion and the decoded image stays viewable; ``distortion_target=edited`` uses
MSE(x_edit, x_hat) + MSE(x, x_edit)); L_tk, L_rk: ``losses/token.py`` on the frozen vision tower's tokens of the
decoded vs the original image; lambda(q): the codec's rate ladder at the batch's rate point. With ltk = lrk = 0 and
w_pix = 1 this is exactly phase 0's ``lambda * 255^2 * MSE + bpp`` (compressai's ``RateDistortionLoss``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from latentbridge.codecs.adapter import bits_per_pixel
from latentbridge.core.errors import ConfigError
from latentbridge.losses.token import TokenNorm, rank_loss, token_distortion


class TokenRateLossOutput(NamedTuple):
    """Typed loss output: the total and each term (None where a term is off)."""

    loss: Tensor
    rate: Tensor
    mse: Tensor
    token: Tensor | None
    rank: Tensor | None


class TokenRateLoss(nn.Module):
    """R + lambda(q) [w_pix 255^2 D + kappa (ltk L_tk + lrk L_rk)]."""

    def __init__(
        self,
        w_pix: float = 1.0,
        kappa: float = 5.0e4,
        ltk: float = 1.0,
        lrk: float = 1.0,
        token_layer: int = -2,
        drop_cls: bool = False,
        token_norm: TokenNorm = "layernorm",
        distortion_target: str = "original",
    ) -> None:
        super().__init__()
        for key, value in (("w_pix", w_pix), ("kappa", kappa), ("ltk", ltk), ("lrk", lrk)):
            if not value >= 0:
                raise ConfigError(f"loss.{key}: {value} must be >= 0")
        if distortion_target not in ("original", "edited"):
            raise ConfigError(f"loss.distortion_target: '{distortion_target}' is not original or edited")
        if token_norm not in ("layernorm", "none"):
            raise ConfigError(f"loss.token_norm: '{token_norm}' is not layernorm or none")
        self.w_pix, self.kappa, self.ltk, self.lrk = float(w_pix), float(kappa), float(ltk), float(lrk)
        self.token_layer, self.drop_cls = int(token_layer), bool(drop_cls)
        self.token_norm, self.distortion_target = token_norm, distortion_target

    @property
    def needs_tokens(self) -> bool:
        """Whether the vision tower runs in training (token terms on)."""
        return self.kappa > 0 and (self.ltk > 0 or self.lrk > 0)

    def forward(
        self,
        likelihoods: dict[str, Tensor],
        x: Tensor,
        x_edit: Tensor,
        x_hat: Tensor,
        lmbda: float,
        tokens_hat: Tensor | None = None,
        tokens: Tensor | None = None,
        coded_pixels: int | None = None,
    ) -> TokenRateLossOutput:
        """x: original, x_edit: pre-edited, x_hat: decoded ([0, 1], same size); tokens of x_hat and of x (target);
        ``coded_pixels``: the pixels of one coded picture (a mosaic's; default: one image's)."""
        rate = bits_per_pixel(likelihoods, coded_pixels or x.shape[-2] * x.shape[-1])
        mse = F.mse_loss(x_hat, x)
        if self.distortion_target == "edited":
            mse = F.mse_loss(x_hat, x_edit) + F.mse_loss(x_edit, x)
        machine = mse.new_zeros(())
        tk = rk = None
        if self.needs_tokens:
            if tokens_hat is None or tokens is None:
                raise ValueError("TokenRateLoss with token terms needs the tokens of x_hat and x")
            if self.ltk > 0:
                tk = token_distortion(tokens_hat, tokens, self.token_norm)
                machine = machine + self.ltk * tk
            if self.lrk > 0:
                rk = rank_loss(tokens_hat, tokens)
                machine = machine + self.lrk * rk
        loss = rate + lmbda * (self.w_pix * 255.0**2 * mse + self.kappa * machine)
        detach = lambda t: None if t is None else t.detach()  # noqa: E731
        return TokenRateLossOutput(loss, rate.detach(), mse.detach(), detach(tk), detach(rk))


__all__ = ["TokenRateLoss", "TokenRateLossOutput"]
