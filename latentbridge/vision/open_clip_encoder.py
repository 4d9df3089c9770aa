"""The vision encoder C of the MLLM (paper 3.3-3.4), over open_clip, split into small named steps.

``embed`` (patch embedding, class token, positional embedding, ln_pre) -> ``run_blocks(start, stop)`` ->
``pool`` (ln_post on the class token, then the projection). C(x) = pool(run_blocks(embed(x))) and the partial
encoder C'(tokens) = pool(run_blocks(tokens, start=k)). ``pipeline="clip"`` (ours): CLIP's own forward (ln_post
once, so C and C' share one definition of the output feature) after CLIP's preprocessing (bicubic resize clipped to
the image range, as CLIP's 8-bit pipeline is); ``pipeline="reference"``: paper 1's reference code exactly (its
``CLIP_modify`` applies ln_post twice; it resizes float tensors without clipping), for runs that must reproduce it.
The text side builds the class text embeddings of the cross-entropy term (Eq. 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import Tensor, nn

from latentbridge.core.atomic_io import read_checkpoint
from latentbridge.core.digest import state_digest
from latentbridge.core.errors import CheckpointError, ConfigError
from latentbridge.vision.insertion import Geometry, Insertion

TEACHER_FORMAT = "latentbridge-clip/1"
PIPELINES = ("clip", "reference")
_CLASS_EMBEDDINGS: dict[tuple, Tensor] = {}  # class_embeddings of frozen text towers, per process


class VisionEncoder(nn.Module):
    """CLIP image tower (with its text tower for class prompts) behind LatentBridge's interface. A backend says
    where its tower is (``visual``) and what shape it has (``geometry``); the rest is shared."""

    def __init__(
        self,
        clip: Any,
        tokenizer: Any,
        image_size: int,
        mean: Sequence[float] = OPENAI_DATASET_MEAN,
        std: Sequence[float] = OPENAI_DATASET_STD,
        name: str = "clip",
        pipeline: str = "clip",
    ) -> None:
        super().__init__()
        if pipeline not in PIPELINES:
            raise ConfigError(f"vision.pipeline: '{pipeline}' is not one of {', '.join(PIPELINES)}")
        self.clip = clip
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.name = name
        self.pipeline = pipeline
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.check()

    def check(self) -> None:
        """Refuse towers this interface cannot split into named steps."""
        if getattr(self.visual, "attn_pool", None) is not None:
            raise ConfigError(f"vision: '{self.name}' uses attentional pooling; only class-token ViTs are supported")

    # -- geometry -----------------------------------------------------------------------------------------
    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    def geometry(self) -> Geometry:
        v = self.visual
        return Geometry(
            int(v.class_embedding.shape[-1]),
            int(v.transformer.resblocks[0].attn.num_heads),
            len(v.transformer.resblocks),
            tuple(v.grid_size),
            int(v.proj.shape[-1]),
        )

    def insertion(self, start: int) -> Insertion:
        """What enters block ``start``: the ViT's tokens, class token first (``insertion.py``)."""
        g = self.geometry()
        if not 0 <= start < g.num_blocks:
            raise ConfigError(f"scenario.skip_blocks: {start} not in [0, {g.num_blocks}) for {self.name}")
        return Insertion("tokens", g.width, g.grid_size, g.heads, class_token=True)

    width = property(lambda self: self.geometry().width)
    heads = property(lambda self: self.geometry().heads)
    num_blocks = property(lambda self: self.geometry().num_blocks)
    grid_size = property(lambda self: self.geometry().grid_size)
    embed_dim = property(lambda self: self.geometry().embed_dim)

    # -- image side, in named steps -----------------------------------------------------------------------
    def preprocess(self, x: Tensor) -> Tensor:
        """CLIP's own preprocessing on a [0, 1] batch: bicubic resize (short side), center crop, normalize."""
        h, w = x.shape[-2:]
        if (h, w) != (self.image_size, self.image_size):
            s = self.image_size / min(h, w)
            x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bicubic", antialias=True, align_corners=False)
            top, left = (x.shape[-2] - self.image_size) // 2, (x.shape[-1] - self.image_size) // 2
            x = x[..., top : top + self.image_size, left : left + self.image_size]
        if self.pipeline == "clip":
            x = x.clamp(0, 1)
        return (x - self.mean) / self.std

    def embed(self, images: Tensor) -> Tensor:
        """Normalized images -> tokens entering block 0: conv1, class token, positional embedding, ln_pre."""
        return self.visual._embeds(images)

    def run_blocks(self, tokens: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        """Transformer blocks ``start:stop`` (batch-first tokens)."""
        for block in self.visual.transformer.resblocks[start:stop]:
            tokens = block(tokens)
        return tokens

    def pool(self, tokens: Tensor) -> Tensor:
        """ln_post on the class token, then the projection: the embedding C outputs (``reference``: ln_post twice)."""
        if self.pipeline == "reference":
            return self.visual.ln_post(self.visual.ln_post(tokens[:, 0])) @ self.visual.proj
        pooled, _ = self.visual._pool(tokens)
        return pooled @ self.visual.proj

    def forward(self, images: Tensor) -> Tensor:
        """C(x): normalized images -> projected embedding."""
        return self.pool(self.run_blocks(self.embed(images)))

    def forward_from_block(self, tokens: Tensor, start: int) -> Tensor:
        """C'(tokens): the encoder with its first ``start`` blocks skipped (paper 3.3)."""
        return self.pool(self.run_blocks(tokens, start=start))

    # the interface of latentbridge.routes
    def from_pixels(self, images: Tensor) -> Tensor:
        """C(x) of normalized images (``routes.Encoder``)."""
        return self(images)

    def from_block(self, tokens: Tensor, start: int) -> Tensor:
        """C' from block ``start`` (``routes.Encoder``)."""
        return self.forward_from_block(tokens, start)

    # -- text side ----------------------------------------------------------------------------------------
    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Prompts -> normalized text embeddings (gradients flow when the text tower trains)."""
        device = self.clip.logit_scale.device
        return self.clip.encode_text(self.tokenizer(list(texts)).to(device), normalize=True)

    @torch.no_grad()
    def class_embeddings(self, classnames: Sequence[str], templates: Sequence[str], cache: bool = True) -> Tensor:
        """(m, D) normalized class embeddings, each the mean over the templates (open_clip's zero-shot recipe).
        Kept per (text tower weights, class list, templates) in this process (ImageNet: 80,000 prompts once, not
        once per stage and per evaluated rate point); ``cache=False`` while the text tower trains."""
        device = self.clip.logit_scale.device
        if not cache:
            return self._class_embeddings(classnames, templates, device)
        key = (self.name, state_digest(self.clip), tuple(classnames), tuple(templates))
        if key not in _CLASS_EMBEDDINGS:
            _CLASS_EMBEDDINGS[key] = self._class_embeddings(classnames, templates, device).cpu()
        with torch.inference_mode(False):  # usable by autograd even when first computed inside validation
            return _CLASS_EMBEDDINGS[key].to(device).clone()

    def _class_embeddings(self, classnames: Sequence[str], templates: Sequence[str], device: Any) -> Tensor:
        w = open_clip.build_zero_shot_classifier(self.clip, self.tokenizer, classnames, templates, device=device)
        return w.t().contiguous()


def build_vision_encoder(
    model_name: str,
    image_size: int,
    pretrained: str | None = None,
    arch: dict[str, Any] | None = None,
    checkpoint: str | None = None,
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
    pipeline: str = "clip",
    tokenizer: str | None = None,
    encoder_class: type[VisionEncoder] | None = None,
    **_: Any,
) -> VisionEncoder:
    """open_clip model by name (``pretrained``: an open_clip tag such as ``openai``, or a local file), or a custom
    architecture ``arch`` (``open_clip.CLIP(**arch)``; the mini teacher) loaded from ``checkpoint``, behind
    ``encoder_class`` (default: this ViT interface; ConvNeXt and timm ViT towers pass theirs). A model whose
    activation is not the one its pretrained tag was trained with is refused (OpenAI's weights need QuickGELU:
    ``ViT-L-14-quickgelu``; open_clip itself only warns)."""
    clip, tokenizer = create_clip(model_name, pretrained, arch, checkpoint, tokenizer)
    cls = encoder_class or VisionEncoder
    return cls(clip, tokenizer, image_size, mean, std, name=model_name, pipeline=pipeline)


def create_clip(
    model_name: str,
    pretrained: str | None = None,
    arch: dict[str, Any] | None = None,
    checkpoint: str | None = None,
    tokenizer: str | None = None,
) -> tuple[Any, Any]:
    """(open_clip model in eval mode, its tokenizer): by name (``pretrained``: a tag or a local file), or ``arch``
    (``open_clip.CLIP(**arch)``; the mini teachers) loaded from ``checkpoint``. Shared by every open_clip tower.
    ``tokenizer``: a Hugging Face tokenizer (hub id or local directory) instead of the model's own."""
    if arch is not None:
        arch = to_plain(arch)
        clip = open_clip.CLIP(**arch)
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=arch["text_cfg"].get("context_length", 77))
        if checkpoint is not None:
            load_teacher_weights(clip, checkpoint, arch)
    else:
        if model_name not in open_clip.list_models():
            raise ConfigError(
                f"vision.model_name: unknown open_clip model '{model_name}' (e.g. ViT-L-14, ViT-L-14-336, ViT-B-16)"
            )
        check_activation(model_name, pretrained)
        try:
            clip = open_clip.create_model(model_name, pretrained=pretrained or None)
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else ""
            raise CheckpointError(
                f"vision.pretrained: could not load '{pretrained}' weights for {model_name} ({type(e).__name__}: "
                f"{msg[:200]}); offline? point vision.pretrained at a local file"
            ) from None
        try:
            own = tokenizer is None
            tokenizer = open_clip.get_tokenizer(model_name) if own else hf_tokenizer(model_name, tokenizer)
        except Exception as e:  # Hugging Face tokenizers (SigLIP's) download on first use
            msg = str(e).splitlines()[0] if str(e) else ""
            raise CheckpointError(
                f"vision.model_name: could not load {model_name}'s tokenizer ({type(e).__name__}: {msg[:200]}); "
                "offline? it downloads once from the Hugging Face hub"
            ) from None
    clip.eval()
    return clip, tokenizer


def hf_tokenizer(model_name: str, name_or_dir: str) -> Any:
    """open_clip's wrapper of a Hugging Face tokenizer at ``model_name``'s context length and text options."""
    text_cfg = (open_clip.get_model_config(model_name) or {}).get("text_cfg", {})
    return open_clip.tokenizer.HFTokenizer(
        name_or_dir, context_length=text_cfg.get("context_length", 77), **text_cfg.get("tokenizer_kwargs", {})
    )


def check_activation(model_name: str, pretrained: str | None) -> None:
    """The model config's activation must be the one the pretrained tag's weights were trained with."""
    if not pretrained or Path(pretrained).is_file():
        return
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not tag_cfg:
        return  # unknown tag: open_clip refuses it with its own message
    wants = bool(tag_cfg.get("quick_gelu", False))
    has = bool((open_clip.get_model_config(model_name) or {}).get("quick_gelu", False))
    if wants != has:
        act = ("QuickGELU", "nn.GELU")
        other = f"{model_name}-quickgelu" if wants else model_name.removesuffix("-quickgelu")
        raise ConfigError(
            f"vision.model_name: '{model_name}' builds {act[not has]}, but the '{pretrained}' weights were trained "
            f"with {act[not wants]}; use vision.model_name={other}"
        )


def to_plain(obj: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists (open_clip checks ``isinstance(cfg, dict)``)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return obj


def load_teacher_weights(clip: open_clip.CLIP, path: str | Path, arch: dict[str, Any]) -> None:
    """Load a teacher written by the mini CLIP pre-training (or a plain open_clip state dict)."""
    path = Path(path)
    obj = read_checkpoint(path, "vision.checkpoint")
    if isinstance(obj, dict) and obj.get("format") == TEACHER_FORMAT:
        if to_plain(obj["arch"]) != arch:
            raise CheckpointError(f"vision.checkpoint: {path} was trained with another architecture than vision.arch")
        obj = obj["state_dict"]
    try:
        clip.load_state_dict(obj)
    except (RuntimeError, KeyError, ValueError, AttributeError) as e:
        first = str(e).replace("\n", " ")[:300]
        raise CheckpointError(f"vision.checkpoint: {path} does not match vision.arch: {first}") from None
