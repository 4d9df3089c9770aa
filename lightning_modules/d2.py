"""Scenario d2, multi-task (paper Table 1, 3.2, 3.5): phase 2 updates the whole codec and the transform-neck
jointly for human and machine perception, L_d2 = R + lambda * (gamma * MSE(x, x_hat) + delta * L_dist), starting
from the phase-1 (d1) transform-neck (``scenario.init_from``) and the phase-0 codec."""

from __future__ import annotations

from typing import ClassVar

from latentbridge.losses.joint import JointLoss
from lightning_modules.bridge import BridgeModule


class D2Module(BridgeModule):
    """d2: codec (g_a, g_s, entropy model) and neck trained with the joint loss."""

    trainable: ClassVar[tuple[str, ...]] = ("codec", "neck")
    scenario_name: ClassVar[str] = "d2"
    loss_types: ClassVar[tuple[type, ...]] = (JointLoss,)
    loss_option: ClassVar[str] = "d2"
