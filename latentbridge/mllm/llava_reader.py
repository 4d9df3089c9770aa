"""LLaVA-1.5 (``transformers.LlavaForConditionalGeneration``) reading the neck path (paper 3.3 applied to a real
MLLM): the transform-neck's tokens enter the MLLM's own vision tower at block k, the tower runs its remaining layers
up to ``vision_feature_layer`` (LLaVA-1.5: -2, the output of layer 22 of 24), the class token is dropped
(``vision_feature_select_strategy="default"``), the multimodal projector maps the patches into the LLM, and the
image-token placeholders of the prompt are replaced by them. Nothing of the MLLM changes; only the first k tower
layers (and the pixels) are bypassed.

transformers 5.x: the tower is ``model.model.vision_tower`` (a ``CLIPVisionModel``), ``hidden_states[i]`` is the
input of ``encoder.layers[i]``, a layer is called as ``layer(hidden_states, attention_mask)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from latentbridge.core.errors import CheckpointError, ConfigError

#: LLaVA-1.5's conversation template (llava_v1): the prompt a user question is wrapped in
LLAVA15_PROMPT = "USER: <image>\n{question} ASSISTANT:"


class LlavaReader(nn.Module):
    """Generation from image features computed either from pixels (LLaVA's own path) or from block-k tokens."""

    def __init__(self, model: Any, processor: Any | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        self.processor = processor
        cfg = model.config
        self.feature_layer = cfg.vision_feature_layer
        self.select_strategy = cfg.vision_feature_select_strategy
        self.image_token_id = int(cfg.image_token_id)

    @property
    def tower(self) -> nn.Module:
        return self.model.model.vision_tower

    @property
    def num_layers(self) -> int:
        return len(self.tower.encoder.layers)

    def _layers(self) -> list[int]:
        """The hidden-state indices LLaVA reads (``vision_feature_layer``, negative counts from the end)."""
        layers = [self.feature_layer] if isinstance(self.feature_layer, int) else list(self.feature_layer)
        return [i % (self.num_layers + 1) for i in layers]

    # -- image features -----------------------------------------------------------------------------------
    @torch.no_grad()
    def image_features_from_pixels(self, pixel_values: Tensor) -> Tensor:
        """LLaVA's own image path: (B, patches, LLM width)."""
        out = self.model.model.get_image_features(
            pixel_values=pixel_values,
            vision_feature_layer=self.feature_layer,
            vision_feature_select_strategy=self.select_strategy,
            return_dict=True,
        )
        return torch.stack(list(out.pooler_output))

    @torch.no_grad()
    def image_features_from_block(self, tokens: Tensor, start: int) -> Tensor:
        """Tokens standing for hidden_states[start] of the tower (the transform-neck's output) -> the features
        LLaVA's projector would have produced: (B, patches, LLM width)."""
        wanted = self._layers()
        if not 0 <= start <= min(wanted):
            raise ConfigError(
                f"scenario.skip_blocks: {start} is past LLaVA's vision_feature_layer (hidden state {min(wanted)})"
            )
        hidden = {start: tokens}
        h = tokens
        for i in range(start, max(wanted)):
            h = self.tower.encoder.layers[i](h, None)
            hidden[i + 1] = h
        picked = [hidden[i][:, 1:] if self.select_strategy == "default" else hidden[i] for i in wanted]
        return self.model.model.multi_modal_projector(torch.cat(picked, dim=-1))

    # -- generation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self, input_ids: Tensor, attention_mask: Tensor, image_features: Tensor, **generate_kwargs: Any
    ) -> Tensor:
        """Greedy (or any ``generate_kwargs``) generation with the image placeholders of ``input_ids`` replaced by
        ``image_features``; returns only the new tokens, (B, new)."""
        embeds = self.model.get_input_embeddings()(input_ids)
        mask = input_ids == self.image_token_id
        if int(mask.sum()) != image_features.shape[0] * image_features.shape[1]:
            raise ValueError(
                f"the prompts hold {int(mask.sum())} image tokens, the features {image_features.shape[:2]} "
                "(one placeholder per image feature, image_seq_length per image)"
            )
        embeds = embeds.masked_scatter(mask.unsqueeze(-1), image_features.to(embeds.dtype))
        generate_kwargs.setdefault("do_sample", False)
        return self.model.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)

    def answer(self, questions: Sequence[str], image_features: Tensor, max_new_tokens: int = 64) -> list[str]:
        """Prompt in, answer out (batched; left padding), with LLaVA-1.5's conversation template."""
        if self.processor is None:
            raise ConfigError("LlavaReader.answer needs the model's processor (LlavaReader.from_pretrained)")
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"
        n = image_features.shape[1]
        image_token = tokenizer.convert_ids_to_tokens(self.image_token_id)
        texts = [LLAVA15_PROMPT.format(question=q).replace("<image>", image_token * n) for q in questions]
        batch = tokenizer(texts, return_tensors="pt", padding=True).to(image_features.device)
        ids = self.generate(batch.input_ids, batch.attention_mask, image_features, max_new_tokens=max_new_tokens)
        return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]

    @classmethod
    def from_pretrained(cls, model_id: str, dtype: str = "float16", device: str | None = None) -> LlavaReader:
        """Any LLaVA-1.5 hub id (``llava-hf/llava-1.5-7b-hf``) or local directory."""
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        try:
            model = LlavaForConditionalGeneration.from_pretrained(model_id, dtype=getattr(torch, dtype))
            processor = AutoProcessor.from_pretrained(model_id)
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else ""
            raise CheckpointError(
                f"llava: could not load LLaVA '{model_id}' ({type(e).__name__}: {msg[:200]})"
            ) from None
        if device:
            model = model.to(device)
        return cls(model, processor)


__all__ = ["LLAVA15_PROMPT", "LlavaReader"]


class LlavaTower:
    """LLaVA's vision tower + projector as a ``latentbridge.routes.Encoder``: the routes then end in the image
    features LLaVA's LLM reads instead of a CLIP embedding. ``preprocess`` is the trained run's CLIP
    preprocessing (the same tower, at the run's input size)."""

    def __init__(self, reader: LlavaReader, preprocess: Any) -> None:
        self.reader, self._preprocess = reader, preprocess

    @property
    def dtype(self) -> torch.dtype:
        return self.reader.model.dtype

    def preprocess(self, x: Tensor) -> Tensor:
        return self._preprocess(x).to(self.dtype)

    def from_pixels(self, pixel_values: Tensor) -> Tensor:
        return self.reader.image_features_from_pixels(pixel_values.to(self.dtype))

    def from_block(self, tokens: Tensor, start: int) -> Tensor:
        return self.reader.image_features_from_block(tokens.to(self.dtype), start)
