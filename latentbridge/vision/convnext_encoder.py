"""CLIP ConvNeXt towers (paper 4.6, Fig. 8: Osprey's encoder, open_clip ``convnext_large_d_320``; any open_clip
model whose image tower is a timm ``ConvNeXt``), split at a block like the ViTs.

The blocks of all stages are numbered 0..n-1 (convnext_large: 3 + 3 + 27 + 3 = 36); what enters block k is the
feature map of its stage, after that stage's downsampling: ``embed`` = stem (+ stage 0's downsampling),
``run_blocks(x, start, stop)`` runs blocks start..stop-1 and, where the next block opens a stage, that stage's
downsampling, so ``run_blocks(run_blocks(x, 0, k), k)`` is the whole trunk. ``pool`` = ``norm_pre``, timm's head
(global average pool, LayerNorm) and open_clip's projection MLP: C(x) = open_clip's ``encode_image`` exactly
(tests/test_encoders.py). The transform-neck enters at block k with a (B, C_s, H_s, W_s) feature map: for
convnext_large at 320x320, block 6 opens stage 2 (768 channels, stride 16: 20x20, ELIC's latent grid at 320x320).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from latentbridge.core.errors import ConfigError
from latentbridge.vision.insertion import Geometry, Insertion
from latentbridge.vision.open_clip_encoder import VisionEncoder, build_vision_encoder
from latentbridge.vision.timm_vit_encoder import projected_dim

HEAD_WIDTH = 64  # channels per attention head of the neck's block for a CNN (CLIP ViTs' own head width)


class ConvNeXtEncoder(VisionEncoder):
    """A timm ConvNeXt inside open_clip (``clip.visual.trunk``) behind the encoder interface."""

    def check(self) -> None:
        from timm.models.convnext import ConvNeXt

        if not isinstance(getattr(self.visual, "trunk", None), ConvNeXt):
            raise ConfigError(f"vision.model_name: '{self.name}' has no timm ConvNeXt image tower")

    @property
    def trunk(self) -> nn.Module:
        return self.visual.trunk

    def blocks(self) -> list[tuple[int, int]]:
        """(stage, block within the stage) of each block, in order."""
        return [(s, j) for s, stage in enumerate(self.trunk.stages) for j in range(len(stage.blocks))]

    def geometry(self) -> Geometry:
        t = self.trunk
        last = t.feature_info[-1]
        g = self.image_size // int(last["reduction"])
        return Geometry(int(last["num_chs"]), 0, len(self.blocks()), (g, g), projected_dim(self.visual.head, 0))

    def insertion(self, start: int) -> Insertion:
        """The feature map entering block ``start``: its stage's channels at its stage's stride."""
        blocks = self.blocks()
        if not 0 <= start < len(blocks):
            raise ConfigError(f"scenario.skip_blocks: {start} not in [0, {len(blocks)}) for {self.name}")
        info = self.trunk.feature_info[blocks[start][0]]
        width, reduction = int(info["num_chs"]), int(info["reduction"])
        if self.image_size % reduction:
            raise ConfigError(f"vision.image_size: {self.image_size} is not a multiple of stage stride {reduction}")
        g = self.image_size // reduction
        return Insertion("feature_map", width, (g, g), max(1, width // HEAD_WIDTH), class_token=False)

    def embed(self, images: Tensor) -> Tensor:
        return self.trunk.stages[0].downsample(self.trunk.stem(images))

    def run_blocks(self, tokens: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        blocks, stages = self.blocks(), self.trunk.stages
        stop = len(blocks) if stop is None else stop
        for i in range(start, stop):
            s, j = blocks[i]
            tokens = stages[s].blocks[j](tokens)
            if i + 1 < len(blocks) and blocks[i + 1][1] == 0:
                tokens = stages[blocks[i + 1][0]].downsample(tokens)
        return tokens

    def pool(self, tokens: Tensor) -> Tensor:
        return self.visual.head(self.trunk.forward_head(self.trunk.norm_pre(tokens)))


def build_convnext_encoder(model_name: str, image_size: int, **kwargs: Any) -> ConvNeXtEncoder:
    """An open_clip model with a timm ConvNeXt image tower (``build_vision_encoder``'s arguments)."""
    return build_vision_encoder(model_name, image_size, **kwargs, encoder_class=ConvNeXtEncoder)


__all__ = ["ConvNeXtEncoder", "build_convnext_encoder"]
