"""One transform-neck for every rate (beyond paper 1, which trains one neck per rate point): the paper's neck
(``transform_neck.py``) with FiLM on the stream's rate after its ln_pre, ``x * (1 + gamma(r)) + beta(r)``, r the
rate's position in the covered range on a log scale (0 at ``rate_range[0]``, 1 at ``rate_range[1]``): the lambda of a
fixed-rate codec or the lambda of a variable-rate codec's gain, both read from the bitstream's rate field. The FiLM
MLP's last layer starts at zero, so training starts from the paper's neck; ``rate_range=None`` *is* the paper's neck
(same parameters, same outputs). A rate outside the range is refused, never extrapolated.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from latentbridge.core.rates import check_rate
from latentbridge.nn.transform_neck import TransformNeck


class RateConditionedNeck(TransformNeck):
    """y_hat (B, M, H, W) and the rate of each stream (B,) -> what block k takes, as ``TransformNeck``."""

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
        rate_range: tuple[float, float] | None = None,
        hidden: int = 64,
    ) -> None:
        super().__init__(in_channels, width, heads, grid_size, mlp_ratio, depth, class_token, layout)
        self.rate_range: tuple[float, float] | None = None
        self.film: nn.Module | None = None
        if rate_range is not None:
            lo, hi = (float(r) for r in rate_range)
            if not 0 < lo <= hi:
                raise ValueError(f"rate-conditioned neck: rate_range {rate_range} must be 0 < low <= high")
            self.rate_range = (lo, hi)
            self.film = nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, 2 * width))
            nn.init.zeros_(self.film[-1].weight)
            nn.init.zeros_(self.film[-1].bias)

    def rate_code(self, rate: Tensor) -> Tensor:
        """r in [0, 1]: the rate's log-position in ``rate_range``; a rate outside it is a ValueError naming both."""
        lo, hi = self.rate_range
        rate = rate.to(torch.float64).reshape(-1)
        for r in (rate.min(), rate.max()) if rate.numel() else ():
            check_rate(float(r), lo, hi)
        if hi == lo:
            return torch.zeros_like(rate, dtype=torch.float32)
        code = (rate.clamp(lo, hi).log() - math.log(lo)) / (math.log(hi) - math.log(lo))
        return code.to(torch.float32)

    def forward(self, y_hat: Tensor, rate: Tensor | float | None = None) -> Tensor:
        if self.film is None:
            return super().forward(y_hat)
        if rate is None:
            raise ValueError("rate-conditioned neck: every call needs the stream's rate")
        self.check_grid(y_hat)
        # float64 from every caller (a float, a header's rate, a tensor): one rate, one code
        rate = torch.as_tensor(rate, dtype=torch.float64, device=y_hat.device).expand(y_hat.shape[0])
        x = self.embed(y_hat)
        gamma, beta = self.film(self.rate_code(rate).to(x.device, x.dtype)[:, None]).chunk(2, dim=-1)
        x = x * (1 + gamma[:, None]) + beta[:, None]
        return self.output(self.run_blocks(x))


__all__ = ["RateConditionedNeck"]
