"""lmms-eval integration (paper 4.1-4.2: MLLM tasks on compressed inputs): the registered lmms-eval model
``latentbridge`` runs every harness image through codec -> real bitstream -> transform-neck -> LLaVA-1.5 (tokens
injected at block k of its vision tower, ``latentbridge/mllm/llava_reader.py``) and records the bits of every sample.

    lmms-eval --model latentbridge --tasks pope,coco_karpathy_test \\
      --model_args pretrained=llava-hf/llava-1.5-7b-hf,run=logs/paper_d1_llava/runs/<run>,path=neck,bits_file=bits.json

``path``: ``neck`` (the proposed method), ``reconstruction`` (g_s(y_hat) through LLaVA's own pixel path: the
*Reconstruction* baseline) or ``uncompressed`` (the upper bound, 24 bpp); ``preedit`` (paper 2): a paper-2 run's
edge (pre-editor, variable-rate codec at ``rate``: a lambda of its ladder or ``q=<0..1>``) codes each image at its
native resolution, and the decoded image, at that resolution, goes through LLaVA's own image processor.
``run``: a trained LatentBridge run
whose vision encoder is LLaVA's tower (``experiment=paper_d1_llava``). ``bits_file``: a JSON written atomically
at the end: one record per sample (task, doc id, bytes, coded pixels) and the mean bpp, which
``mllm_evaluate.py`` joins with the harness's scores into rate-accuracy rows and curves.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image
from torchvision.transforms.functional import center_crop, resize, to_pil_image, to_tensor

from latentbridge import routes
from latentbridge.codecs.bitstream import decode_image, decode_latent, encode_image
from latentbridge.core.atomic_io import atomic_write_json
from latentbridge.core.errors import ConfigError
from latentbridge.mllm.llava_reader import LlavaReader, LlavaTower
from latentbridge.runs import open_run

PATHS = ("neck", "reconstruction", "uncompressed", "preedit")


def load_run(run: str | Path) -> tuple[Any, int, float | None]:
    """The trained module of a LatentBridge run (best checkpoint), its codec input size and rate point (None for a
    variable-rate codec)."""
    finished = open_run(run, "run")
    return finished.module, finished.image_size, finished.lmbda


class LatentBridgeLLaVA(lmms):
    """An lmms-eval model: LLaVA-1.5 reading compressed images (neck / reconstruction / uncompressed)."""

    def __init__(
        self,
        pretrained: str = "llava-hf/llava-1.5-7b-hf",
        run: str | None = None,
        path: str = "neck",
        bits_file: str | None = None,
        max_new_tokens: int = 128,
        device: str | None = None,
        dtype: str = "float16",
        reader: LlavaReader | None = None,
        module: Any | None = None,
        image_size: int | None = None,
        lmbda: float | None = None,
        rate: str | float | None = None,
        **_: Any,
    ) -> None:
        super().__init__()
        if path not in PATHS:
            raise ConfigError(f"path: '{path}' is not one of {', '.join(PATHS)}")
        self.reader = reader or LlavaReader.from_pretrained(pretrained, dtype=dtype, device=device)
        self.path, self.max_new_tokens = path, int(max_new_tokens)
        self.module, self.image_size, self.lmbda = module, image_size, lmbda
        if path != "uncompressed" and module is None:
            if run is None:
                raise ConfigError(f"run: path={path} needs a trained LatentBridge run (run=<run dir>)")
            self.module, self.image_size, self.lmbda = load_run(run)
        self.q = None
        if path == "preedit":
            if not getattr(self.module.codec, "variable_rate", False) or not hasattr(self.module, "edge"):
                raise ConfigError("run: path=preedit needs a paper-2 run (experiment=*_p2*)")
            if rate is None:
                raise ConfigError("rate: path=preedit needs the rate to code at (a lambda of the ladder or q=<0..1>)")
            self.q = self.module.codec.ladder.resolve(rate)
            self.lmbda = self.module.codec.ladder.lmbda(self.q)
        if self.module is not None:
            self.module.to(self.device)
            if path == "neck" and self.module.vision.width != self.reader.tower.config.hidden_size:
                raise ConfigError("run: its neck was trained for another vision tower than this LLaVA's")
        self.bits_file = Path(bits_file) if bits_file else None
        self.records: list[dict[str, Any]] = []

    @property
    def device(self) -> torch.device:
        return next(self.reader.model.parameters()).device

    # -- one image -> LLaVA image features, and its bits --------------------------------------------------
    @torch.no_grad()
    def features(self, image: Image.Image) -> tuple[torch.Tensor, int, int]:
        """(image features (1, patches, width), bytes sent, pixels coded), through ``latentbridge.routes``."""
        image = image.convert("RGB")
        if self.path == "uncompressed":  # LLaVA's own processor at the image's native resolution
            pixels = self.reader.processor.image_processor(image, return_tensors="pt").pixel_values
            parts = SimpleNamespace(encoder=LlavaTower(self.reader, None))
            return (
                routes.uncompressed(parts, pixels.to(self.device)),
                3 * image.width * image.height,
                image.width * image.height,
            )
        if self.path == "preedit":
            return self.pixel_path(image)
        module = self.module
        parts = SimpleNamespace(
            codec=module.codec,
            encoder=LlavaTower(self.reader, module.vision.preprocess),
            neck=module.neck,
            post=None,
            skip_blocks=module.skip_blocks,
        )
        x = center_crop(resize(to_tensor(image).unsqueeze(0), self.image_size, antialias=True), self.image_size)
        stream = encode_image(module.codec, x.to(self.device), self.lmbda)
        y_hat, _ = decode_latent(module.codec, stream, self.lmbda)  # the server: bytes only
        feats = routes.latent_route(self.path)(parts, y_hat)
        return feats, len(stream), self.image_size * self.image_size

    @torch.no_grad()
    def pixel_path(self, image: Image.Image) -> tuple[torch.Tensor, int, int]:
        """Paper 2: edge (pre-editor, bytes at gain g(q)) at native resolution; the server decodes the bytes alone and
        gives LLaVA the decoded image through its own processor."""
        module, q = self.module, self.q
        x = to_tensor(image).unsqueeze(0).to(self.device)
        stream = encode_image(module.codec, module.edge(x, q), module.codec.ladder.gain(q))
        x_hat = decode_image(module.codec, stream)
        decoded = to_pil_image(x_hat[0].float().cpu())
        pixels = self.reader.processor.image_processor(decoded, return_tensors="pt").pixel_values
        parts = SimpleNamespace(encoder=LlavaTower(self.reader, None))
        return routes.uncompressed(parts, pixels.to(self.device)), len(stream), image.width * image.height

    # -- the harness's requests ---------------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[str]:
        answers = []
        for req in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            visuals = [v for v in doc_to_visual(self.task_dict[task][split][doc_id]) if isinstance(v, Image.Image)]
            if not visuals:
                raise ConfigError(f"task {task}: doc {doc_id} has no image (LatentBridge evaluates image tasks)")
            feats, nbytes, pixels = self.features(visuals[0])  # LLaVA-1.5 reads one image per prompt
            question = context.replace("<image>", "").strip()
            kwargs = dict(gen_kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            text = self.reader.answer(
                [question], feats, max_new_tokens=int(kwargs.get("max_new_tokens", self.max_new_tokens))
            )[0]
            for stop in until:
                if stop and stop in text:
                    text = text.split(stop)[0]
            answers.append(text)
            self.records.append({"task": task, "doc_id": doc_id, "bytes": nbytes, "pixels": pixels})
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        self.write_bits()
        return answers

    def write_bits(self) -> None:
        if self.bits_file is None:
            return
        bits = sum(8 * r["bytes"] for r in self.records)
        pixels = sum(r["pixels"] for r in self.records)
        summary = {"path": self.path, "lmbda": self.lmbda, "samples": len(self.records), "bpp": bits / max(pixels, 1)}
        atomic_write_json(self.bits_file, {**summary, "records": self.records})

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError("latentbridge: loglikelihood tasks are not supported; use generation tasks")

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("latentbridge: multi-round generation is not supported")


def manifest() -> Any:
    """The ``lmms_eval.models`` entry point: registers ``--model latentbridge``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="latentbridge", simple_class_path="latentbridge.mllm.lmms_model.LatentBridgeLLaVA")


def read_bits(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
