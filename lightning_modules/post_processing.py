"""The Post-processing baseline (paper 4.1, Table 3): the codec stays frozen, its decoded image x_hat = g_s(y_hat)
goes through a U-Net P trained with the surrogate loss L_S, then through the full vision encoder: C(P(x_hat))
(``latentbridge.routes.post_processing``). No transform-neck. The Reconstruction baseline, C(x_hat) with nothing
trained, is reported by every run."""

from __future__ import annotations

from typing import ClassVar

from lightning_modules.bridge import BridgeModule


class PostProcessingModule(BridgeModule):
    """Post-processing: only the U-Net (``post``) trains, with L_S (same schedule as d1)."""

    trainable: ClassVar[tuple[str, ...]] = ("post",)
    scenario_name: ClassVar[str] = "post_processing"
    method_path: ClassVar[str] = "post_processing"
