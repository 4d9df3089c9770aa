"""What the server does with a bitstream, without HTTP (issue: split inference as a service).

A ``Service`` holds one finished run (``open_run``: codec, transform-neck, encoder from block k) on a device:

- ``decode``: bytes -> y_hat through the hardened decoder (``codecs/bitstream.py``: a one-line ``BitstreamError``
  for anything that is not this codec's stream, never a crash; for a rate-conditioned run, d1_rates, the header's
  rate picks the codec, a family member or the variable-rate codec, and a rate outside the neck's is refused before
  entropy decoding), optionally authenticated, and only for an image the
  path can take (``accepts``): the transform-neck was trained for one latent grid, so the neck path takes exactly
  the run's image size, checked on the header before any entropy decoding; the pixel path takes any size up to
  ``max_pixels``;
- ``features``: y_hats -> what the MLLM's projector consumes, by ``routes``: ``neck`` (C'(T(y_hat)), the method) or
  ``reconstruction`` (C(g_s(y_hat)), the baseline served the same way), batched over requests of one image size;
- ``generate``: with an MLLM (LLaVA-1.5 through ``mllm/llava_reader.py``), prompt + features -> answer text.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from latentbridge import routes
from latentbridge.codecs.bitstream import MAX_PIXELS, Bitstream, BitstreamError, bits_per_pixel_of, decode_latent
from latentbridge.core.errors import ConfigError

PATHS = ("neck", "reconstruction")


@dataclass(frozen=True)
class Accepts:
    """The images a path can take: exactly ``size`` (H, W) for a fixed-grid neck, else any size up to
    ``max_pixels`` (the pixel path resizes to its encoder's input)."""

    max_pixels: int
    size: tuple[int, int] | None = None
    reason: str = ""

    def check(self, header: Bitstream) -> None:
        """Refuse a header this path cannot take (before the stream is entropy decoded)."""
        if self.size is not None and (header.height, header.width) != self.size:
            raise BitstreamError(
                f"bitstream is a {header.height}x{header.width} image; this run's {self.reason} takes exactly "
                f"{self.size[0]}x{self.size[1]} images"
            )

    def as_dict(self) -> dict[str, Any]:
        if self.size is not None:
            return {"height": self.size[0], "width": self.size[1]}
        return {"max_pixels": self.max_pixels}


@dataclass
class Decoded:
    """One request's decoded stream: y_hat, the header, the bytes it came in."""

    y_hat: Tensor
    header: Bitstream
    nbytes: int
    bpp: float
    codec: Any = None  # the codec that decoded it (a rate-conditioned run's family member)
    rate: float | None = None  # the rate a rate-conditioned neck is told (from the header)


@dataclass
class Service:
    """A finished run ready to serve (built by ``Service.load``)."""

    run_dir: Path
    module: Any
    lmbda: float | None
    device: torch.device
    max_pixels: int = MAX_PIXELS
    key: bytes | None = None
    reader: Any = None
    parts: dict[str, Any] = field(default_factory=dict)
    accepts: dict[str, Accepts] = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        run_dir: str | Path,
        device: str = "auto",
        max_pixels: int = MAX_PIXELS,
        key: bytes | None = None,
        mllm: str | None = None,
        mllm_dtype: str = "float16",
    ) -> Service:
        """Open the run once (best checkpoint, entropy tables updated, eval mode) on ``device``."""
        from latentbridge.runs import open_run

        finished = open_run(run_dir, "run")
        module = finished.module
        if not hasattr(module, "neck") or module.neck is None:
            raise ConfigError(f"run: {run_dir} has no transform-neck (serve a d1 / d2 / d3 run)")
        dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        module.to(dev).eval()
        service = cls(Path(run_dir), module, finished.lmbda, dev, int(max_pixels), key)
        grid, size = module.neck.grid_size, (finished.image_size, finished.image_size)  # grid = size / stride
        neck = f"transform-neck ({grid[0]}x{grid[1]} latent grid)"
        service.accepts = {"neck": Accepts(int(max_pixels), size, neck), "reconstruction": Accepts(int(max_pixels))}
        if mllm:
            from latentbridge.mllm.llava_reader import LlavaReader

            return service.with_reader(LlavaReader.from_pretrained(mllm, dtype=mllm_dtype, device=str(dev)))
        return service.with_reader(None)

    def with_reader(self, reader: Any) -> Service:
        """Serve the features the run's encoder gives, or (with an MLLM's ``LlavaReader``) its vision tower's:
        what its projector consumes, and what ``generate`` answers from."""
        module, encoder = self.module, self.module.vision
        if reader is not None:
            from latentbridge.mllm.llava_reader import LlavaTower

            if module.vision.width != reader.tower.config.hidden_size:
                raise ConfigError("mllm: the run's neck was trained for another vision tower than this LLaVA's")
            encoder = LlavaTower(reader, module.vision.preprocess)
        self.reader = reader
        neck = SimpleNamespace(codec=module.codec, encoder=encoder, neck=module.neck, post=None, skip_blocks=0)
        neck.skip_blocks = module.skip_blocks
        recon = SimpleNamespace(codec=module.codec, encoder=encoder, neck=None, post=None, skip_blocks=0)
        self.parts = {"neck": neck, "reconstruction": recon}
        return self

    def decode(self, data: bytes, path: str = "neck") -> Decoded:
        """Bytes -> y_hat for ``path`` (hardened; ``BitstreamError`` on bad input, and for a header that ``path``
        cannot take, before entropy decoding)."""
        accepts = self.accepts.get(path) or Accepts(self.max_pixels)
        codec, lmbda, rate = self.module.codec, self.lmbda, None
        if self.rate_conditioned:  # the header names the rate: its codec, refused outside the neck's rates
            codec, lmbda, rate = self.module.stream_coder(Bitstream.from_bytes(data, self.key))
        y_hat, header = decode_latent(codec, data, lmbda, self.max_pixels, self.key, accepts.check)
        bpp = bits_per_pixel_of(data, header.height, header.width)
        return Decoded(y_hat, header, len(data), bpp, codec, rate)

    @property
    def rate_conditioned(self) -> bool:
        """Whether the run's neck is told each stream's rate (d1_rates: one neck for every rate it covers)."""
        return hasattr(self.module, "stream_coder")

    @torch.no_grad()
    def features(self, decoded: list[Decoded], path: str = "neck") -> list[Tensor]:
        """The features of each decoded stream (one forward per group of equal latent shapes), on the CPU."""
        if path not in PATHS:
            raise ValueError(f"path must be one of {', '.join(PATHS)}, got '{path}'")
        route, parts = routes.latent_route(path), self.parts[path]
        out: list[Tensor | None] = [None] * len(decoded)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, d in enumerate(decoded):  # the pixel path of a codec family: one group per member (its own g_s)
            member = id(d.codec) if path == "reconstruction" and self.rate_conditioned else 0
            groups.setdefault((tuple(d.y_hat.shape), member), []).append(i)
        for members in groups.values():
            batch = torch.cat([decoded[i].y_hat for i in members]).to(self.device)
            if path == "reconstruction" and self.rate_conditioned:
                feats = route(SimpleNamespace(**{**vars(parts), "codec": decoded[members[0]].codec}), batch)
            elif self.rate_conditioned:
                rates = torch.tensor([decoded[i].rate for i in members], dtype=torch.float64, device=self.device)
                feats = route(parts, batch, rates)
            else:
                feats = route(parts, batch)
            feats = feats.float().cpu()
            for j, i in enumerate(members):
                out[i] = feats[j : j + 1]
        return out  # type: ignore[return-value]

    def generate(self, features: Tensor, prompt: str, max_new_tokens: int = 64) -> str:
        """The MLLM's answer to ``prompt`` about the image behind ``features`` (neck path)."""
        if self.reader is None:
            raise ConfigError("mllm: this server has no MLLM (start it with mllm=<LLaVA-1.5 id or dir>)")
        return self.reader.answer([prompt], features.to(self.device), max_new_tokens=max_new_tokens)[0]

    def info(self) -> dict[str, Any]:
        """What a client needs to know: codec, rate point, signature, limits, versions."""
        from importlib.metadata import version

        import compressai
        import lightning

        codec = self.module.codec
        return {
            "run": str(self.run_dir),
            "scenario": type(self.module).__name__,
            "codec": {
                "name": codec.name,
                "lmbda": None if self.rate_conditioned else self.lmbda,
                "variable_rate": codec.variable_rate,
                **({"rates": list(self.module.rates)} if self.rate_conditioned else {}),
                "pad_multiple": codec.pad_multiple,
                "stride": codec.stride,
            },
            "vision": self.module.vision.name,
            "skip_blocks": self.module.skip_blocks,
            "signature": {
                k: v if isinstance(v, (int, float, str)) else str(v) for k, v in self.module.signature().items()
            },
            "mllm": None if self.reader is None else str(self.reader.model.config.name_or_path),
            "accepts": {path: a.as_dict() for path, a in self.accepts.items()},
            "limits": {"max_pixels": self.max_pixels, "authenticated": self.key is not None},
            "device": str(self.device),
            "versions": {
                "latentbridge": version("latentbridge"),
                "torch": torch.__version__,
                "compressai": compressai.__version__,
                "lightning": lightning.__version__,
                "python": platform.python_version(),
            },
        }
