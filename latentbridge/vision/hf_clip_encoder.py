"""A second vision-encoder backend: CLIP from Hugging Face transformers (``CLIPModel``), behind the interface of
``latentbridge.vision.open_clip_encoder.VisionEncoder`` (preprocess / embed / run_blocks / pool, forward,
forward_from_block, the
text side), so a transform-neck can be trained against the very tower an MLLM uses (LLaVA-1.5:
openai/clip-vit-large-patch14-336, 24x24 grid: codec inputs of 384x384 give a 24x24 latent grid).

transformers 5.x facts this relies on: ``hidden_states[i]`` is the input of ``encoder.layers[i]`` and
``hidden_states[0] = pre_layrnorm(embeddings)``; ``CLIPModel.vision_model`` is a ``CLIPVisionModel`` with
``embeddings``, ``pre_layrnorm``, ``encoder.layers``, ``post_layernorm``; a layer is called as
``layer(hidden_states, attention_mask)``. Text prompts are tokenized with open_clip's tokenizer: OpenAI CLIP's BPE,
shipped inside open_clip (works offline); the pooled text feature is read at the end-of-text token as in HF.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import Tensor, nn

from latentbridge.core.errors import CheckpointError, ConfigError
from latentbridge.vision.insertion import Geometry
from latentbridge.vision.open_clip_encoder import VisionEncoder


class HFVisionEncoder(VisionEncoder):
    """``transformers.CLIPModel`` as the vision encoder C (image tower + projection; text tower for class prompts)."""

    def check(self) -> None:
        trained_at = self.clip.config.vision_config.image_size
        if self.image_size != trained_at:
            raise ConfigError(f"vision.image_size: {self.image_size}, but {self.name} was trained at {trained_at}")

    # -- geometry -----------------------------------------------------------------------------------------
    @property
    def visual(self) -> nn.Module:
        return self.clip.vision_model

    def geometry(self) -> Geometry:
        cfg = self.clip.config.vision_config
        g = self.image_size // int(cfg.patch_size)
        return Geometry(
            int(cfg.hidden_size), int(cfg.num_attention_heads), len(self.visual.encoder.layers), (g, g),
            int(self.clip.config.projection_dim),
        )  # fmt: skip

    # -- image side, in named steps -----------------------------------------------------------------------
    def embed(self, images: Tensor) -> Tensor:
        """Normalized images -> hidden_states[0]: patch embedding, class token, positions, pre_layrnorm."""
        return self.visual.pre_layrnorm(self.visual.embeddings(images))

    def run_blocks(self, tokens: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        """Encoder layers ``start:stop``: hidden_states[start] -> hidden_states[stop]."""
        for layer in self.visual.encoder.layers[start:stop]:
            tokens = layer(tokens, None)
        return tokens

    def pool(self, tokens: Tensor) -> Tensor:
        """post_layernorm on the class token, then visual_projection (CLIPModel.get_image_features); the ``reference``
        pipeline applies post_layernorm twice (paper 1's reference code)."""
        pooled = self.visual.post_layernorm(tokens[:, 0])
        if self.pipeline == "reference":
            pooled = self.visual.post_layernorm(pooled)
        return self.clip.visual_projection(pooled)

    # -- text side ----------------------------------------------------------------------------------------
    def encode_text(self, texts: Sequence[str]) -> Tensor:
        ids = self.tokenizer(list(texts)).to(self.clip.logit_scale.device)
        out = self.clip.text_model(input_ids=ids)
        return F.normalize(self.clip.text_projection(out.pooler_output), dim=-1)

    @torch.no_grad()
    def class_embeddings(self, classnames: Sequence[str], templates: Sequence[Any]) -> Tensor:
        """(m, D): per class the normalized mean of its normalized prompt embeddings (open_clip's recipe)."""
        rows = []
        for c in classnames:
            texts = [t.format(c) if isinstance(t, str) else t(c) for t in templates]
            rows.append(F.normalize(self.encode_text(texts).mean(0), dim=-1))
        return torch.stack(rows)


def build_hf_vision_encoder(
    model_name: str,
    image_size: int,
    config: dict[str, Any] | None = None,
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
    pipeline: str = "clip",
    **_: Any,
) -> HFVisionEncoder:
    """A Hugging Face CLIP by hub id or local directory (``model_name``), or random weights from ``config`` (a
    ``CLIPConfig`` dict: tests, complexity counts)."""
    from transformers import CLIPConfig, CLIPModel

    from latentbridge.vision.open_clip_encoder import to_plain

    if config is not None:
        clip = CLIPModel(CLIPConfig(**to_plain(config)))
    else:
        try:
            clip = CLIPModel.from_pretrained(model_name)
        except Exception as e:  # offline, missing files, not a CLIP checkpoint
            msg = str(e).splitlines()[0] if str(e) else ""
            raise CheckpointError(
                f"vision.model_name: could not load Hugging Face CLIP '{model_name}' ({type(e).__name__}: "
                f"{msg[:200]}); offline? point it at a local directory"
            ) from None
    clip.eval()
    return HFVisionEncoder(clip, hf_tokenizer(clip), image_size, mean, std, name=model_name, pipeline=pipeline)


def hf_tokenizer(clip: Any) -> Any:
    """OpenAI CLIP's BPE (open_clip's, offline) at the text tower's context length."""
    return open_clip.tokenizer.SimpleTokenizer(context_length=clip.config.text_config.max_position_embeddings)


__all__ = ["HFVisionEncoder", "build_hf_vision_encoder", "hf_tokenizer"]
