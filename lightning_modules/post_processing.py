"""The Post-processing baseline (paper 4.1, Table 3): the codec stays frozen, its decoded image x_hat = g_s(y_hat)
goes through a U-Net P trained with the surrogate loss L_S, then through the full vision encoder: C(P(x_hat)).
No transform-neck. The Reconstruction baseline, C(x_hat) with nothing trained, is reported by every run."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from lightning_modules.bridge import BridgeModule


class PostProcessingModule(BridgeModule):
    """Post-processing: only the U-Net trains, with L_S (same schedule as d1)."""

    trainable: ClassVar[tuple[str, ...]] = ("post",)
    scenario_name: ClassVar[str] = "post_processing"
    method_path: ClassVar[str] = "post_processing"
    module_args: ClassVar[tuple[str, ...]] = (*BridgeModule.module_args, "post")

    def __init__(self, *args: Any, post: nn.Module, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.post = post.requires_grad_(True)

    def method_embedding(self, y_hat: Tensor) -> Tensor:
        """C(P(g_s(y_hat))), with gradients into P."""
        x_hat = self.codec.synthesize(y_hat).detach()
        return self.vision(self.vision.preprocess(self.post(x_hat)))
