"""Phase 2, joint optimization of codec and transform-neck (paper 3.5, Table 1).

- d2 (multi-task):        L_d2 = R + lambda * (gamma * d_recon(x, x_hat) + delta * L_dist)
- d3 (machine perception): L_d3 = R + lambda * delta * L_dist   (gamma = 0: the decoder is unused)

R is the estimated rate of y_hat and z_hat in bits per pixel, d_recon the MSE of [0, 1] images and L_dist the
distillation term of Eq. 1 (MSE between C'(T(y_hat)) and C(x)).

Scale (a design choice; the paper gives only gamma:delta = 60:1): gamma = 255^2 puts d_recon on the 0-255 scale
of compressai's phase-0 loss (lambda * 255^2 * MSE + bpp), so at gamma alone d2 keeps the rate point of the codec it
starts from; delta = gamma / 60. The paper writes L_d3 without delta; we keep delta (the d2 value by default) so the
same lambda spends a comparable rate in d2 and d3 — with delta = 1 the rate term dominates and d3 collapses to near
zero bits (configurable: ``scenario.loss.delta``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from latentbridge.codecs.adapter import bits_per_pixel
from latentbridge.core.errors import ConfigError


class JointLossOutput(NamedTuple):
    """Typed loss output: the total and each term (all logged)."""

    loss: Tensor
    rate: Tensor
    recon: Tensor
    dist: Tensor


class JointLoss(nn.Module):
    """R + lambda * (gamma * MSE(x, x_hat) + delta * L_dist). ``gamma = 0`` is d3."""

    def __init__(self, lmbda: float, gamma: float = 255.0**2, delta: float = 255.0**2 / 60, **unknown: float) -> None:
        super().__init__()
        if unknown:
            raise ConfigError(
                f"loss: {', '.join(sorted(unknown))} not settings of the phase-2 joint loss (lmbda, gamma, delta); "
                "a preset for phase 1 is composed with a phase-2 scenario? use experiment=mini_d2 / mini_d3"
            )
        for key, value, ok in (("lmbda", lmbda, lmbda > 0), ("gamma", gamma, gamma >= 0), ("delta", delta, delta >= 0)):
            if not ok:
                raise ConfigError(f"loss.{key}: {value} is out of range (lmbda > 0, gamma >= 0, delta >= 0)")
        self.lmbda, self.gamma, self.delta = float(lmbda), float(gamma), float(delta)

    @property
    def needs_reconstruction(self) -> bool:
        """Whether x_hat = g_s(y_hat) enters the loss (d2) or the decoder is unused (d3)."""
        return self.gamma > 0

    def forward(
        self,
        likelihoods: dict[str, Tensor],
        x: Tensor,
        x_hat: Tensor | None,
        student: Tensor,
        teacher: Tensor,
    ) -> JointLossOutput:
        """likelihoods of the coded latents, x in [0, 1], x_hat = g_s(y_hat) (None in d3), student = C'(T(y_hat)),
        teacher = C(x) (no gradient)."""
        rate = bits_per_pixel(likelihoods, x.shape[-2] * x.shape[-1])
        dist = F.mse_loss(student, teacher.detach())
        if self.needs_reconstruction:
            if x_hat is None:
                raise ValueError("JointLoss with gamma > 0 needs x_hat")
            recon = F.mse_loss(x_hat, x)
        else:
            recon = dist.new_zeros(())
        loss = rate + self.lmbda * (self.gamma * recon + self.delta * dist)
        return JointLossOutput(loss, rate.detach(), recon.detach(), dist.detach())


__all__ = ["JointLoss", "JointLossOutput"]
