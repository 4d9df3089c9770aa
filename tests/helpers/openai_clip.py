"""OpenAI's CLIP code (the ``openai-clip`` distribution, a test dependency) as the reference for our teachers.

Its ``clip/__init__.py`` imports ``pkg_resources`` (gone from recent setuptools), so ``clip/model.py`` is loaded on its
own. Models are built with OpenAI's class directly in float32 (``build_model`` would convert them to float16), from
its own seeded initialization with every parameter perturbed (LayerNorms included, so each one counts)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import Any

import torch


def openai_model_module() -> Any:
    path = importlib.metadata.distribution("openai-clip").locate_file("clip/model.py")
    spec = importlib.util.spec_from_file_location("openai_clip_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def openai_clip(seed: int, embed_dim: int, image_size: int, layers: int, width: int, patch: int,
                context: int = 16, vocab: int = 49408, text_width: int = 64, text_layers: int = 2) -> Any:  # fmt: skip
    """OpenAI's ``CLIP`` (ViT image tower; heads = width // 64, QuickGELU), seeded, every tensor perturbed."""
    model_py = openai_model_module()
    torch.manual_seed(seed)
    model = model_py.CLIP(embed_dim, image_size, layers, width, patch, context, vocab, text_width, text_width // 64,
                          text_layers).float().eval()  # fmt: skip
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return model


def hidden_states(model: Any, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """OpenAI's C(x) and the tokens after every block of its image tower (batch first), through forward hooks."""
    states: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda m, i, o: states.append(o.permute(1, 0, 2).detach()))
             for b in model.visual.transformer.resblocks]  # fmt: skip
    with torch.no_grad():
        out = model.encode_image(image)
    for h in hooks:
        h.remove()
    return out, states


def to_hf_clip(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """OpenAI's image-tower keys -> ``transformers.CLIPModel``'s (q, k, v split from in_proj; proj transposed)."""
    out = {
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "visual_projection.weight": state["visual.proj"].t().contiguous(),
    }
    for ours, hf in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        for k in ("weight", "bias"):
            out[f"vision_model.{hf}.{k}"] = state[f"visual.{ours}.{k}"]
    for i in range(layers):
        src, dst = f"visual.transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}."
        for k in ("weight", "bias"):
            q, kk, v = state[f"{src}attn.in_proj_{k}"].chunk(3)
            out |= {f"{dst}self_attn.q_proj.{k}": q, f"{dst}self_attn.k_proj.{k}": kk, f"{dst}self_attn.v_proj.{k}": v}
            out[f"{dst}self_attn.out_proj.{k}"] = state[f"{src}attn.out_proj.{k}"]
            out[f"{dst}layer_norm1.{k}"] = state[f"{src}ln_1.{k}"]
            out[f"{dst}layer_norm2.{k}"] = state[f"{src}ln_2.{k}"]
            out[f"{dst}mlp.fc1.{k}"] = state[f"{src}mlp.c_fc.{k}"]
            out[f"{dst}mlp.fc2.{k}"] = state[f"{src}mlp.c_proj.{k}"]
    return out
