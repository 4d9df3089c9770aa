"""ViT towers that open_clip builds from timm (paper 4.6: encoders that are not OpenAI's CLIP ViT): SigLIP
(``ViT-SO400M-14-SigLIP-384``: no class token, pooled by its attention head ``map``) and any open_clip model whose
image tower is a timm ``VisionTransformer`` with at most one prefix token.

``embed`` = patch embedding, positions (and the class token if any), ``norm_pre``; ``run_blocks`` = timm's blocks;
``pool`` = ``norm``, timm's head (attention pool / class token / mean, ``fc_norm``), then open_clip's projection:
C(x) = pool(run_blocks(embed(x))) is open_clip's ``encode_image`` exactly (tests/test_encoders.py).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from latentbridge.core.errors import ConfigError
from latentbridge.vision.insertion import Geometry, Insertion
from latentbridge.vision.open_clip_encoder import VisionEncoder, build_vision_encoder


def projected_dim(head: nn.Module, default: int) -> int:
    """The output width of open_clip's head over a timm trunk (its last Linear), ``default`` if it has none."""
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    return int(linears[-1].out_features) if linears else int(default)


class TimmViTEncoder(VisionEncoder):
    """A timm ViT inside open_clip (``clip.visual.trunk``) behind the encoder interface."""

    def check(self) -> None:
        from timm.models.vision_transformer import VisionTransformer

        trunk = getattr(self.visual, "trunk", None)
        if not isinstance(trunk, VisionTransformer):
            raise ConfigError(f"vision.model_name: '{self.name}' has no timm VisionTransformer image tower")
        if trunk.num_prefix_tokens > 1:
            n = trunk.num_prefix_tokens
            raise ConfigError(f"vision.model_name: '{self.name}' has {n} prefix tokens (1 at most)")

    @property
    def trunk(self) -> nn.Module:
        return self.visual.trunk

    def geometry(self) -> Geometry:
        t = self.trunk
        ph, pw = t.patch_embed.patch_size
        grid = (self.image_size // ph, self.image_size // pw)
        heads = int(t.blocks[0].attn.num_heads)
        return Geometry(int(t.embed_dim), heads, len(t.blocks), grid, projected_dim(self.visual.head, t.num_features))

    def insertion(self, start: int) -> Insertion:
        """The tokens entering block ``start``: a class token first only if the tower has one (SigLIP: none)."""
        ins = super().insertion(start)
        return ins._replace(class_token=self.trunk.num_prefix_tokens == 1)

    def embed(self, images: Tensor) -> Tensor:
        t = self.trunk
        return t.norm_pre(t.patch_drop(t._pos_embed(t.patch_embed(images))))

    def run_blocks(self, tokens: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        for block in self.trunk.blocks[start:stop]:
            tokens = block(tokens)
        return tokens

    def pool(self, tokens: Tensor) -> Tensor:
        return self.visual.head(self.trunk.forward_head(self.trunk.norm(tokens)))


def build_timm_vit_encoder(model_name: str, image_size: int, **kwargs: Any) -> TimmViTEncoder:
    """An open_clip model with a timm ViT image tower (``build_vision_encoder``'s arguments)."""
    return build_vision_encoder(model_name, image_size, **kwargs, encoder_class=TimmViTEncoder)


__all__ = ["TimmViTEncoder", "build_timm_vit_encoder", "projected_dim"]
