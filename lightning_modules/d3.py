"""Scenario d3, machine perception (paper Table 1, 3.2, 3.5): phase 2 updates the encoder side of the codec
(g_a and the entropy model) and the transform-neck for machine perception only, L_d3 = R + lambda * L_dist
(joint loss with gamma = 0); the decoder g_s is unused and stays frozen. Starts from the phase-1 (d1) neck."""

from __future__ import annotations

from typing import Any, ClassVar

from latentbridge.core.errors import ConfigError
from lightning_modules.d2 import D2Module


class D3Module(D2Module):
    """d3: encoder + entropy model + neck trained with R + lambda * L_dist; g_s frozen."""

    scenario_name: ClassVar[str] = "d3"
    freeze_decoder: ClassVar[bool] = True
    loss_option: ClassVar[str] = "d3"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.loss_fn.needs_reconstruction:
            raise ConfigError("loss.gamma: d3 does not train for reconstruction (paper Table 1); set it to 0 (loss=d3)")
