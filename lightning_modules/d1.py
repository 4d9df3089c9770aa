"""Scenario d1 (paper Table 1, 3.2): the codec is pre-trained for human perception and frozen; only the
transform-neck trains, with the surrogate loss L_S (phase 1, Eq. 4). Image reconstruction is unaffected."""

from __future__ import annotations

from typing import ClassVar

from lightning_modules.bridge import BridgeModule


class D1Module(BridgeModule):
    """d1: codec frozen (eval mode, no gradients), neck trained with L_S."""

    trainable: ClassVar[tuple[str, ...]] = ("neck",)
    scenario_name: ClassVar[str] = "d1"
