"""Codec adapters: one interface over compressai models (paper 3.2, Fig. 2: g_a, entropy model, g_s).

Every adapter gives
- ``latent(x)``: the quantized latent y_hat that is actually coded, and the likelihoods of y_hat (and z_hat),
- ``synthesize(y_hat)``: x_hat = g_s(y_hat),
- ``forward(x)``: compressai's own training forward (noisy quantization in train mode) for rate-distortion training.

compressai's ``forward()`` does not return y_hat (CompressAI issue #329), so each family says how to get it.
In eval mode compressai's quantizers round (around the predicted means where the family has them), which is
exactly what ``compress()`` codes. In train mode (phase 2 updates the codec) the rate uses compressai's additive
noise while y_hat is rounded with a straight-through gradient ("mixed quantization", as ELIC trains), so the
transform-neck and g_s see the values that will be coded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from compressai.ans import RansDecoder
from compressai.models import CompressionModel
from compressai.ops import quantize_ste
from compressai.registry import MODELS
from torch import Tensor, nn

from latentbridge.codecs.mini import MINI_MODEL
from latentbridge.codecs.tcm import MINI_TCM_MODEL, TCM_MODEL
from latentbridge.codecs.vbr import MINI_VBR_MODEL, VBR_MODEL, RateLadder
from latentbridge.core.atomic_io import read_checkpoint
from latentbridge.core.digest import DERIVED
from latentbridge.core.errors import CheckpointError, ConfigError

CHECKPOINT_FORMAT = "latentbridge-codec/1"
#: entropy-coder tables: derived by ``update(force=True)``, variable-sized, never stored in scenario checkpoints
ENTROPY_TABLES = DERIVED


class LatentOutput(NamedTuple):
    """The coded latent and its likelihoods (``{"y": ..., "z": ...}``)."""

    y_hat: Tensor
    likelihoods: dict[str, Tensor]


def _at_least_float32(y: Tensor) -> Tensor:
    """The entropy model's input: float32 from a reduced-precision g_a (autocast), float64 kept (reference checks)."""
    return y if y.dtype == torch.float64 else y.float()


def bits_per_image(likelihoods: dict[str, Tensor]) -> Tensor:
    """The estimated rate of each image of the batch in bits, -log2 p(y_hat|z_hat) - log2 p(z_hat), shape (B,)."""
    return sum(-torch.log2(lk.clamp_min(1e-9)).flatten(1).sum(1) for lk in likelihoods.values())


def bits_per_pixel(likelihoods: dict[str, Tensor], num_pixels: int) -> Tensor:
    """R = -log2 p(y_hat|z_hat) - log2 p(z_hat), per pixel, averaged over the batch (paper 3.5)."""
    batch = next(iter(likelihoods.values())).shape[0]
    bits = sum(torch.log(lk.clamp_min(1e-9)).sum() for lk in likelihoods.values()) / -math.log(2)
    return bits / (batch * num_pixels)


class CodecAdapter(nn.Module):
    """A compressai model behind the interface the rest of LatentBridge uses."""

    variable_rate: bool = False  # one model for a range of rates: every coding call takes the gain (VbrAdapter)
    ladder: RateLadder | None = None
    stride: int = 16  # spatial downsampling from x to y_hat
    pad_multiple: int = 64  # compressai hyperprior codecs need H, W divisible by 64
    decoder: str = "model.g_s"  # the synthesis transform: unused and frozen in d3 (paper Table 1)
    channels_last: bool = False  # convolutions in NHWC (faster on tensor cores)

    def __init__(self, model: CompressionModel, name: str, arch: dict[str, Any], lmbda: float | None = None) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.arch = dict(arch)
        self.lmbda = lmbda  # the rate point (phase-0 lambda), part of a scenario checkpoint's signature

    @property
    def latent_channels(self) -> int:
        return int(self.arch["M"])

    def _code(self, y: Tensor, gain: Tensor | None = None) -> LatentOutput:
        """The entropy model on y = g_a(x): the coded y_hat and its likelihoods (float32)."""
        raise NotImplementedError

    def check_gain(self, gain: float | Tensor | None) -> Tensor | None:
        """A fixed-rate codec takes no gain; a variable-rate one needs one (a float32 scalar tensor after this)."""
        if not self.variable_rate:
            if gain is not None:
                raise ConfigError(
                    f"codec.name: codec '{self.name}' is fixed-rate (lambda={self.lmbda}); a rate applies to "
                    "variable-rate codecs only (e.g. codec=mini_vbr)"
                )
            return None
        if gain is None:
            raise ConfigError(f"codec.name: codec '{self.name}' is variable-rate; every coding call needs a rate")
        dev = next(self.model.parameters()).device
        return gain.to(dev, torch.float32) if isinstance(gain, Tensor) else torch.tensor(float(gain), device=dev)

    def latent(self, x: Tensor, gain: float | Tensor | None = None) -> LatentOutput:
        """x in [0, 1], (B, 3, H, W) with H, W multiples of ``pad_multiple`` -> coded y_hat (B, M, H/s, W/s).
        Under mixed precision the analysis transform runs in the autocast dtype and the entropy model (hyperprior,
        quantization, likelihoods) in float32: rounding and probabilities in bf16 would code other values."""
        h, w = x.shape[-2:]
        if h % self.pad_multiple or w % self.pad_multiple:
            raise ValueError(f"codec '{self.name}' needs H and W divisible by {self.pad_multiple}, got {h}x{w}")
        gain = self.check_gain(gain)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = self.model.g_a(x)
        with torch.autocast(x.device.type, enabled=False):
            return self._code(_at_least_float32(y), gain)

    def synthesize(self, y_hat: Tensor) -> Tensor:
        """x_hat = g_s(y_hat), clamped to [0, 1]."""
        return self.model.g_s(y_hat).clamp(0, 1)

    def forward(self, x: Tensor, gain: float | Tensor | None = None) -> dict[str, Any]:
        """compressai's forward: ``{"x_hat", "likelihoods"}`` (additive noise in train mode)."""
        self.check_gain(gain)
        return self.model(x)

    def update_tables(self) -> None:
        """The entropy-coder tables of the current weights (compressai's ``update(force=True)``)."""
        self.model.update(force=True)

    def aux_loss(self) -> Tensor:
        """The entropy bottleneck's quantile loss (a sum: it scales with nothing but the model)."""
        return self.model.aux_loss()

    def compress(self, x: Tensor, gain: float | Tensor | None = None) -> dict[str, Any]:
        """Entropy-code x (H, W multiples of ``pad_multiple``): compressai's ``{"strings", "shape"}``.
        Call ``model.update(force=True)`` once after training first."""
        self.check_gain(gain)
        out = self.model.compress(x)
        return {"strings": out["strings"], "shape": out["shape"]}

    def decompress_latent(self, strings: list[list[bytes]], shape: Any, gain: float | Tensor | None = None) -> Tensor:
        """Entropy-decode y_hat only: what the server's transform-neck reads (no g_s, no pixels)."""
        raise NotImplementedError

    @torch.no_grad()
    def compress_batch(
        self, x: Tensor, gain: float | Tensor | None = None
    ) -> tuple[list[list[list[bytes]]], LatentOutput]:
        """A batch of equal-size images (H, W multiples of ``pad_multiple``) -> each image's strings (as
        ``compress`` gives them for that image alone) and, from the same g_a pass, y_hat and the likelihoods (the
        estimated rate). Call ``model.update(force=True)`` once after training first."""
        gain = self.check_gain(gain)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = _at_least_float32(self.model.g_a(x))
        strings = self._compress_y(y, gain)
        per_image = [[[group[i]] for group in strings] for i in range(x.shape[0])]
        return per_image, self._code(y, gain)

    def _compress_y(self, y: Tensor, gain: Tensor | None = None) -> list[list[bytes]]:
        """compressai's ``compress`` after g_a: ``[y strings, z strings]`` (or the family's groups)."""
        raise NotImplementedError

    def coded_shape(self, height: int, width: int) -> Any:
        """The ``shape`` compress() returns for a padded H x W image (derived, so bitstreams need not carry it):
        the hyper-latent grid (the padding multiple is the hyper-latent's stride)."""
        return torch.Size([height // self.pad_multiple, width // self.pad_multiple])

    def string_symbols(self, height: int, width: int) -> list[int]:
        """How many symbols each entropy-coded string of one padded H x W image codes, in the order the container
        stores them (y, then z): what a bitstream's string table must match, and the bound on what decoding it may
        read (``codecs/bitstream.py``)."""
        y = int(self.arch["M"]) * (height // self.stride) * (width // self.stride)
        return [y, int(self.arch["N"]) * (height // self.pad_multiple) * (width // self.pad_multiple)]


class HyperpriorAdapter(CodecAdapter):
    """Ballé et al. 2018 scale hyperprior (``bmshj2018-hyperprior``): y_hat = round(y)."""

    def _code(self, y: Tensor, gain: Tensor | None = None) -> LatentOutput:
        m = self.model
        z_hat, z_lik = m.entropy_bottleneck(m.h_a(torch.abs(y)))
        y_hat, y_lik = m.gaussian_conditional(y, m.h_s(z_hat))
        if self.training:
            y_hat = quantize_ste(y)
        return LatentOutput(y_hat, {"y": y_lik, "z": z_lik})

    def decompress_latent(self, strings: list[list[bytes]], shape: Any, gain: float | Tensor | None = None) -> Tensor:
        self.check_gain(gain)
        m = self.model
        z_hat = decompress_bottleneck(m.entropy_bottleneck, strings[1], shape)
        indexes = m.gaussian_conditional.build_indexes(m.h_s(z_hat))
        return entropy_decompress(m.gaussian_conditional, strings[0], indexes, z_hat.dtype)

    def _compress_y(self, y: Tensor, gain: Tensor | None = None) -> list[list[bytes]]:
        m = self.model
        z = m.h_a(torch.abs(y))
        z_strings = compress_bottleneck(m.entropy_bottleneck, z)
        z_hat = m.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
        indexes = m.gaussian_conditional.build_indexes(m.h_s(z_hat))
        return [entropy_compress(m.gaussian_conditional, y, indexes), z_strings]


class MeanScaleAdapter(CodecAdapter):
    """Minnen et al. 2018 mean-scale hyperprior (``mbt2018-mean``, the mini codec): y_hat = round(y - mu) + mu."""

    def _code(self, y: Tensor, gain: Tensor | None = None) -> LatentOutput:
        m = self.model
        z_hat, z_lik = m.entropy_bottleneck(m.h_a(y))
        scales, means = m.h_s(z_hat).chunk(2, 1)
        y_hat, y_lik = m.gaussian_conditional(y, scales, means=means)
        if self.training:
            y_hat = quantize_ste(y - means) + means
        return LatentOutput(y_hat, {"y": y_lik, "z": z_lik})

    def decompress_latent(self, strings: list[list[bytes]], shape: Any, gain: float | Tensor | None = None) -> Tensor:
        self.check_gain(gain)
        m = self.model
        z_hat = decompress_bottleneck(m.entropy_bottleneck, strings[1], shape)
        scales, means = m.h_s(z_hat).chunk(2, 1)
        indexes = m.gaussian_conditional.build_indexes(scales)
        return entropy_decompress(m.gaussian_conditional, strings[0], indexes, means=means)

    def _compress_y(self, y: Tensor, gain: Tensor | None = None) -> list[list[bytes]]:
        m = self.model
        z = m.h_a(y)
        z_strings = compress_bottleneck(m.entropy_bottleneck, z)
        z_hat = m.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
        scales, means = m.h_s(z_hat).chunk(2, 1)
        g = 1.0 if gain is None else gain  # a variable-rate codec codes (y - mu) g with scales sigma g
        indexes = m.gaussian_conditional.build_indexes(scales * g)
        return [entropy_compress(m.gaussian_conditional, y * g, indexes, means * g), z_strings]


class ElicAdapter(CodecAdapter):
    """ELIC (He et al. 2022; paper 4.1): uneven channel groups + checkerboard context in a latent codec.
    compressai's latent codecs already return a straight-through rounded y_hat in train mode."""

    def _code(self, y: Tensor, gain: Tensor | None = None) -> LatentOutput:
        out = self.model.latent_codec(y)
        return LatentOutput(out["y_hat"], _flatten_likelihoods(out["likelihoods"]))

    def decompress_latent(self, strings: list[list[bytes]], shape: Any, gain: float | Tensor | None = None) -> Tensor:
        self.check_gain(gain)
        return self.model.latent_codec.decompress(strings, shape)["y_hat"]

    def _compress_y(self, y: Tensor, gain: Tensor | None = None) -> list[list[bytes]]:
        return self.model.latent_codec.compress(y)["strings"]

    def coded_shape(self, height: int, width: int) -> Any:
        grid = (height // self.stride, width // self.stride)
        return {"y": [torch.Size([g, *grid]) for g in self.model.groups], "hyper": super().coded_shape(height, width)}

    def string_symbols(self, height: int, width: int) -> list[int]:
        """Two strings per channel group of y (the checkerboard's anchor and non-anchor halves; the padded grid has
        even sides), then z."""
        half = (height // self.stride) * (width // self.stride) // 2
        z = int(self.arch["N"]) * (height // self.pad_multiple) * (width // self.pad_multiple)
        return [int(g) * half for g in self.model.groups for _ in range(2)] + [z]


class VbrAdapter(MeanScaleAdapter):
    """A variable-rate mean-scale hyperprior (paper 2's "adaptive layer", ``codecs/vbr.py``): y is coded as the
    symbols s = round((y - mu) g) with scales sigma g; y_hat = sign(s) (|s| + o(sigma g, g)) / g + mu, o the learned
    reconstruction offset (0 where s = 0). z is coded at a fixed step (compressai's ``vr_entbttlnck=False``), so the
    entropy tables are built once for every rate. In train mode the rate uses additive noise on y g and y_hat is
    rounded with a straight-through gradient (compressai's stage-2 training path)."""

    variable_rate = True

    def _hyper(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        m = self.model
        z = m.h_a(y)
        z_hat, z_lik = m.entropy_bottleneck(z)
        if self.training:  # compressai's stage 2: z rounded around the medians, straight-through
            medians = m.entropy_bottleneck._get_medians()
            z_hat = quantize_ste(z - medians) + medians
        scales, means = m.h_s(z_hat).chunk(2, 1)
        return z_hat, z_lik, scales, means

    def _reconstruct(self, signs: Tensor, q_abs: Tensor, scales: Tensor, means: Tensor, gain: Tensor) -> Tensor:
        """y_hat = sign (|s| + o) / g + mu from the symbols' signs and magnitudes (compressai's operations)."""
        m = self.model
        stdev = m.gaussian_conditional.lower_bound_scale(scales * gain)
        pairs = torch.stack((stdev, gain.detach().expand_as(stdev)), dim=4)
        offsets = -m.QuantABCD(pairs).squeeze(4)
        offsets = torch.where(q_abs < 1e-4, torch.zeros_like(offsets), offsets)  # no offset where s = 0
        return signs * (q_abs + offsets) * (1.0 / gain.detach()) + means

    def _code(self, y: Tensor, gain: Tensor | None = None) -> LatentOutput:
        m = self.model
        _, z_lik, scales, means = self._hyper(y)
        centred = (y - means) * gain
        if self.training:  # compressai's stage 2: the sign of the unrounded value, |.| rounded straight-through, so
            signs, q_abs = torch.sign(centred).detach(), quantize_ste(centred.abs())  # y gets a gradient at s = 0
        else:
            symbols = torch.round(centred)
            signs, q_abs = torch.sign(symbols), symbols.abs()
        _, y_lik = m.gaussian_conditional(y * gain, scales * gain, means=means * gain)
        return LatentOutput(self._reconstruct(signs, q_abs, scales, means, gain), {"y": y_lik, "z": z_lik})

    def forward(self, x: Tensor, gain: float | Tensor | None = None) -> dict[str, Any]:
        """``{"x_hat", "likelihoods"}`` at ``gain`` (train mode: noisy rate, straight-through y_hat)."""
        y_hat, likelihoods = self.latent(x, gain)
        return {"x_hat": self.model.g_s(y_hat), "likelihoods": likelihoods}

    @torch.no_grad()
    def compress(self, x: Tensor, gain: float | Tensor | None = None) -> dict[str, Any]:
        gain = self.check_gain(gain)
        return {"strings": self._compress_y(self.model.g_a(x).float(), gain), "shape": self.coded_shape(*x.shape[-2:])}

    def decompress_latent(self, strings: list[list[bytes]], shape: Any, gain: float | Tensor | None = None) -> Tensor:
        gain = self.check_gain(gain)
        m = self.model
        z_hat = decompress_bottleneck(m.entropy_bottleneck, strings[1], shape)
        scales, means = m.h_s(z_hat).chunk(2, 1)
        indexes = m.gaussian_conditional.build_indexes(scales * gain)
        symbols = entropy_decompress(m.gaussian_conditional, strings[0], indexes, z_hat.dtype)
        return self._reconstruct(torch.sign(symbols), symbols.abs(), scales, means, gain)


class TcmAdapter(CodecAdapter):
    """TCM (``codecs/tcm.py``; paper 1's Fig. 6c with a Transformer codec): channel-wise slices, each coded around
    its predicted mean and refined by the latent residual prediction. As the reference, all slices of one image go
    into one y string (the coder's stream is read slice by slice while decoding), then the z string."""

    def _code(self, y: Tensor, gain: Tensor | None = None) -> LatentOutput:
        return LatentOutput(*self.model.code(y))

    def _compress_y(self, y: Tensor, gain: Tensor | None = None) -> list[list[bytes]]:
        m = self.model
        m.check_grid(y)
        gc = m.gaussian_conditional
        z = m.h_a(y)
        z_strings = compress_bottleneck(m.entropy_bottleneck, z)
        hyper = m.hyper(decompress_bottleneck(m.entropy_bottleneck, z_strings, z.shape[-2:]))
        symbols: list[Tensor] = []
        indexes: list[Tensor] = []
        slices: list[Tensor] = []
        for i, y_slice in enumerate(y.chunk(m.num_slices, 1)):
            mu, scale, support = m.slice_parameters(i, hyper, slices)
            q = gc.quantize(y_slice, "symbols", mu)
            symbols.append(q.flatten(1))
            indexes.append(gc.build_indexes(scale).flatten(1))
            slices.append(m.refine(i, support, q + mu))
        cdf, lengths, offsets = _coder_tables(gc)
        all_symbols, all_indexes = torch.cat(symbols, 1).int(), torch.cat(indexes, 1).int()
        y_strings = [
            gc.entropy_coder.encode_with_indexes(s.tolist(), k.tolist(), cdf, lengths, offsets)
            for s, k in zip(all_symbols, all_indexes)
        ]
        return [y_strings, z_strings]

    @torch.no_grad()
    def compress(self, x: Tensor, gain: float | Tensor | None = None) -> dict[str, Any]:
        self.check_gain(gain)
        y = _at_least_float32(self.model.g_a(x))
        return {"strings": self._compress_y(y), "shape": self.coded_shape(*x.shape[-2:])}

    def decompress_latent(self, strings: list[list[bytes]], shape: Any, gain: float | Tensor | None = None) -> Tensor:
        self.check_gain(gain)
        m = self.model
        gc = m.gaussian_conditional
        z_hat = decompress_bottleneck(m.entropy_bottleneck, strings[1], shape)
        hyper = m.hyper(z_hat)
        decoders = []
        for string in strings[0]:
            decoders.append(RansDecoder())
            decoders[-1].set_stream(string)
        cdf, lengths, offsets = _coder_tables(gc)
        slices: list[Tensor] = []
        for i in range(m.num_slices):
            mu, scale, support = m.slice_parameters(i, hyper, slices)
            index = gc.build_indexes(scale).int()
            values = [
                torch.tensor(d.decode_stream(k.reshape(-1).tolist(), cdf, lengths, offsets), dtype=mu.dtype)
                for d, k in zip(decoders, index)
            ]
            q = torch.stack(values).reshape(mu.shape).to(mu.device)
            slices.append(m.refine(i, support, gc.dequantize(q, mu)))
        return torch.cat(slices, 1)

    def coded_shape(self, height: int, width: int) -> Any:
        """The hyper-latent grid (stride 64; inputs are padded further, to whole attention windows)."""
        hyper = self.model.downsampling_factor
        return torch.Size([height // hyper, width // hyper])

    def string_symbols(self, height: int, width: int) -> list[int]:
        """One y string for all slices, then z (``Z`` channels at the hyper-latent's stride)."""
        m, s = self.model, self.stride
        return [int(m.M) * (height // s) * (width // s), int(m.Z) * math.prod(self.coded_shape(height, width))]


def _coder_tables(model: Any) -> tuple[list, list, list]:
    """An entropy model's CDF tables as the range coder takes them, converted once per table update (compressai
    converts them for every image: ~40% of the y coding time of one image)."""
    cdf = model._quantized_cdf
    key = (cdf.data_ptr(), tuple(cdf.shape), int(cdf.sum()), int(model._offset.sum()))  # update() replaces them
    cached = model.__dict__.get("_latentbridge_tables")
    if cached is None or cached[0] != key:
        tables = (
            model._quantized_cdf.tolist(),
            model._cdf_length.reshape(-1).int().tolist(),
            model._offset.reshape(-1).int().tolist(),
        )
        model.__dict__["_latentbridge_tables"] = cached = (key, tables)
    return cached[1]


def entropy_compress(model: Any, inputs: Tensor, indexes: Tensor, means: Tensor | None = None) -> list[bytes]:
    """compressai's ``EntropyModel.compress`` (same symbols, same coder calls, same bytes) with the tables
    converted once."""
    symbols = model.quantize(inputs, "symbols", means)
    cdf, lengths, offsets = _coder_tables(model)
    return [
        model.entropy_coder.encode_with_indexes(
            symbols[i].reshape(-1).int().tolist(), indexes[i].reshape(-1).int().tolist(), cdf, lengths, offsets
        )
        for i in range(symbols.size(0))
    ]


def entropy_decompress(
    model: Any, strings: list[bytes], indexes: Tensor, dtype: torch.dtype = torch.float, means: Tensor | None = None
) -> Tensor:
    """compressai's ``EntropyModel.decompress`` (same coder calls, same values) with the tables converted once: a
    server decodes every request with the same tables (they were ~80% of a mini stream's decode time)."""
    if len(strings) != indexes.size(0):
        raise ValueError("Invalid strings or indexes parameters")
    cdf, lengths, offsets = _coder_tables(model)
    outputs = model._quantized_cdf.new_empty(indexes.size())
    for i, string in enumerate(strings):
        values = model.entropy_coder.decode_with_indexes(
            string, indexes[i].reshape(-1).int().tolist(), cdf, lengths, offsets
        )
        outputs[i] = torch.tensor(values, device=outputs.device, dtype=outputs.dtype).reshape(outputs[i].size())
    return model.dequantize(outputs, means, dtype)


def decompress_bottleneck(model: Any, strings: list[bytes], size: Any) -> Tensor:
    """compressai's ``EntropyBottleneck.decompress`` through ``entropy_decompress``."""
    indexes = model._build_indexes((len(strings), model._quantized_cdf.size(0), *size)).to(model._quantized_cdf.device)
    medians = model._extend_ndims(model._get_medians().detach(), len(size))
    medians = medians.expand(len(strings), *([-1] * (len(size) + 1)))
    return entropy_decompress(model, strings, indexes, medians.dtype, medians)


def compress_bottleneck(model: Any, z: Tensor) -> list[bytes]:
    """compressai's ``EntropyBottleneck.compress`` through ``entropy_compress``."""
    indexes = model._build_indexes(z.size())
    medians = model._extend_ndims(model._get_medians().detach(), len(z.size()) - 2)
    return entropy_compress(model, z, indexes, medians.expand(z.size(0), *([-1] * (len(z.size()) - 1))))


def _flatten_likelihoods(lk: dict[str, Any], prefix: str = "") -> dict[str, Tensor]:
    flat: dict[str, Tensor] = {}
    for k, v in lk.items():
        if isinstance(v, dict):
            flat.update(_flatten_likelihoods(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


@dataclass(frozen=True)
class CodecSpec:
    """One codec family: its compressai registry name, adapter, default architecture, zoo name, and the id that
    names it in bitstreams (never reused: a decoder refuses streams of another codec)."""

    model: str
    adapter_cls: type[CodecAdapter]
    codec_id: int
    arch: dict[str, Any] = field(default_factory=dict)
    zoo: str | None = None
    stride: int = 16  # x -> y_hat
    pad_multiple: int = 64  # x -> z_hat: inputs must be multiples of it
    ladder: tuple[float, float, float] | None = None  # variable-rate codecs: default (lmbda_min, lmbda_max, lmbda_ref)

    @property
    def model_cls(self) -> Callable[..., CompressionModel]:
        """The compressai model class, from ``compressai.registry.MODELS``."""
        return MODELS[self.model]


CODECS: dict[str, CodecSpec] = {
    # The mini codec: a small stride-8 mean-scale hyperprior trained here on Fashion-MNIST (README, "mini setup").
    # Id 1 was the stride-16 mini of earlier releases; its streams are refused, not misread.
    "mini": CodecSpec(MINI_MODEL, MeanScaleAdapter, 6, {"N": 48, "M": 64}, stride=8, pad_multiple=16),
    "bmshj2018-hyperprior": CodecSpec(
        "bmshj2018-hyperprior", HyperpriorAdapter, 2, {"N": 128, "M": 192}, "bmshj2018-hyperprior"
    ),
    "mbt2018-mean": CodecSpec("mbt2018-mean", MeanScaleAdapter, 3, {"N": 128, "M": 192}, "mbt2018-mean"),
    "elic2022-official": CodecSpec("elic2022-official", ElicAdapter, 4, {"N": 192, "M": 320}),
    "elic2022-chandelier": CodecSpec("elic2022-chandelier", ElicAdapter, 5, {"N": 192, "M": 320}),
    # Paper 2's variable-rate codecs (codecs/vbr.py): one model for a continuous range of rates.
    "mini-vbr": CodecSpec(
        MINI_VBR_MODEL, VbrAdapter, 7, {"N": 48, "M": 64}, stride=8, pad_multiple=16, ladder=(1.0e-5, 3.2e-3, 3.2e-3)
    ),
    "mbt2018-mean-vbr": CodecSpec(VBR_MODEL, VbrAdapter, 8, {"N": 192, "M": 320}, ladder=(0.0018, 0.18, 0.18)),
    # Paper 1's Transformer codec (Fig. 6c; codecs/tcm.py): TCM, the released N=64 models; inputs in whole windows.
    "tcm2023": CodecSpec(TCM_MODEL, TcmAdapter, 9, {"N": 64, "M": 320}, pad_multiple=128),
    "mini-tcm": CodecSpec(MINI_TCM_MODEL, TcmAdapter, 10, {"N": 16, "M": 64}, pad_multiple=64),
}


def net_aux_parameters(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The trainable parameters of ``module`` split into the main ones and the entropy bottleneck's quantiles
    (trained by the aux loss; compressai's convention). compressai's ``net_aux_optimizer`` does the same split
    but requires every parameter to train and returns two optimizers; LatentBridge freezes parts and gives
    Lightning one optimizer with two parameter groups (Adam is per-parameter: the same updates)."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    return [p for n, p in named if not n.endswith(".quantiles")], [p for n, p in named if n.endswith(".quantiles")]


def codec_spec(name: str) -> CodecSpec:
    """The registry entry for ``name``; an unknown name is a one-line error naming ``codec.name``."""
    if name not in CODECS:
        raise ConfigError(f"codec.name: unknown codec '{name}' (known: {', '.join(sorted(CODECS))})")
    return CODECS[name]


def build_codec(
    name: str,
    arch: dict[str, Any] | None = None,
    checkpoint: str | None = None,
    zoo_quality: int | None = None,
    zoo_metric: str = "mse",
    lmbda: float | None = None,
    channels_last: bool = False,
    ladder: dict[str, float] | None = None,
    **_: Any,
) -> CodecAdapter:
    """Build a codec adapter: from ``checkpoint`` (local file), else the compressai zoo, else random init.

    ``lmbda`` names the rate point of a fixed-rate codec, ``ladder`` (``{lmbda_min, lmbda_max}``) the rate range of a
    variable-rate one; ``channels_last`` puts the convolutions in NHWC (GPU tensor cores); extra
    keys (preparation settings) belong to the config group.
    """
    spec = codec_spec(name)
    arch = {**spec.arch, **dict(arch or {})}
    rates = _ladder(spec, name, lmbda, ladder)
    if checkpoint is None and zoo_quality is not None:
        if spec.zoo is None:
            raise ConfigError(f"codec.zoo_quality: compressai's zoo has no weights for '{name}'; set codec.checkpoint")
        from compressai.zoo import image_models

        try:
            model = image_models[spec.zoo](quality=int(zoo_quality), metric=zoo_metric, pretrained=True)
        except Exception as e:  # network or cache failure
            raise CheckpointError(
                f"codec.zoo_quality: could not load compressai zoo '{spec.zoo}' q={zoo_quality} "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); offline? use codec.checkpoint"
            ) from None
        arch = {"N": model.N if hasattr(model, "N") else arch["N"], "M": model.M if hasattr(model, "M") else arch["M"]}
        return _adapter(spec, model, name, arch, lmbda, rates)
    model = spec.model_cls(**arch)
    adapter = _adapter(spec, model, name, arch, lmbda, rates)
    if checkpoint is not None:
        load_codec_weights(adapter, checkpoint)
    if channels_last:
        adapter.model.to(memory_format=torch.channels_last)
        adapter.channels_last = True
    return adapter


def _ladder(spec: CodecSpec, name: str, lmbda: float | None, ladder: dict[str, float] | None) -> RateLadder | None:
    """The rate range of a variable-rate codec (config, else the registry's default); None for a fixed-rate one."""
    if not spec.adapter_cls.variable_rate:
        if ladder is not None:
            raise ConfigError(f"codec.ladder: codec '{name}' is fixed-rate; a ladder applies to variable-rate codecs")
        return None
    if lmbda is not None:
        raise ConfigError(f"codec.lmbda: codec '{name}' is variable-rate (one model for its codec.ladder); set null")
    keys = ("lmbda_min", "lmbda_max", "lmbda_ref")
    given = dict(ladder) if ladder is not None else dict(zip(keys, spec.ladder))
    if set(given) - set(keys) or not {"lmbda_min", "lmbda_max"} <= set(given):
        raise ConfigError(f"codec.ladder: needs lmbda_min, lmbda_max (and optionally lmbda_ref), got {sorted(given)}")
    return RateLadder(*(float(given[k]) for k in keys if k in given))


def _adapter(
    spec: CodecSpec,
    model: CompressionModel,
    name: str,
    arch: dict[str, Any],
    lmbda: float | None,
    ladder: RateLadder | None = None,
) -> CodecAdapter:
    adapter = spec.adapter_cls(model, name, arch, lmbda)
    adapter.stride, adapter.pad_multiple, adapter.ladder = spec.stride, spec.pad_multiple, ladder
    return adapter


def load_codec_weights(adapter: CodecAdapter, path: str | Path) -> None:
    """Load a codec checkpoint: ours, a Lightning phase-0 checkpoint, a plain compressai state dict, or the reference
    ELIC of paper 1 (Chandelier's checkpoints, a released d1/d2/d3 file's ``state_dict``: ``codecs/published.py``)."""
    path = Path(path)
    obj = read_checkpoint(path, "codec.checkpoint")
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        if obj["name"] != adapter.name or dict(obj["arch"]) != adapter.arch:
            raise CheckpointError(
                f"codec.checkpoint: {path} holds codec '{obj['name']}' {obj['arch']}, "
                f"the config asks for '{adapter.name}' {adapter.arch}"
            )
        ours = adapter.ladder.as_dict() if adapter.ladder else None
        if obj.get("ladder") != ours:
            raise CheckpointError(
                f"codec.checkpoint: {path} was trained for the rate ladder {obj.get('ladder')}, "
                f"the config has codec.ladder={ours}"
            )
        state = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state = obj["state_dict"]
    elif isinstance(obj, dict):
        state = obj
    else:
        raise CheckpointError(f"codec.checkpoint: {path} holds a {type(obj).__name__}, not a state dict")
    from latentbridge.codecs import published

    if published.is_reference_elic(
        state
    ):  # Chandelier's ELIC / the ELIC of a released d1-d3 file (codecs/published.py)
        if adapter.name != "elic2022-chandelier":
            raise CheckpointError(
                f"codec.checkpoint: {path} holds the reference ELIC (VincentChandelier/ELiC-ReImplemetation layout); "
                f"it loads into codec=elic (elic2022-chandelier), not '{adapter.name}'"
            )
        mapped = published.elic_state(state, adapter.model, f"codec.checkpoint: {path}")
        nn.Module.load_state_dict(adapter.model, mapped, strict=False)  # every parameter checked; tables derived
        return
    for prefix in ("codec.model.", "model.", "module."):  # Lightning module / adapter / DataParallel prefixes
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            break
    try:
        adapter.model.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as e:
        first = str(e).replace("\n", " ").replace("\t", "")[:300]
        raise CheckpointError(
            f"codec.checkpoint: {path} is not a checkpoint of codec '{adapter.name}' {adapter.arch}: {first}"
        ) from None


def codec_checkpoint(adapter: CodecAdapter, **meta: Any) -> dict[str, Any]:
    """The dict written for a trained codec (after ``update(force=True)`` so it can ``compress()``)."""
    adapter.model.update(force=True)
    return {
        "format": CHECKPOINT_FORMAT,
        "name": adapter.name,
        "arch": adapter.arch,
        "ladder": adapter.ladder.as_dict() if adapter.ladder else None,
        "state_dict": adapter.model.state_dict(),
        **meta,
    }


def load_codec_checkpoint(path: str | Path) -> tuple[CodecAdapter, float | None]:
    """A trained codec written by phase 0 (``codec_checkpoint``) -> (adapter in eval mode, its lambda)."""
    path = Path(path)
    obj = read_checkpoint(path, "codec checkpoint")
    if not (isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT):
        raise CheckpointError(f"{path} is not a LatentBridge codec checkpoint (train one with experiment=*_codec)")
    codec = build_codec(
        obj["name"], arch=obj["arch"], checkpoint=str(path), lmbda=obj.get("lmbda"), ladder=obj.get("ladder")
    ).eval()
    codec.model.update(force=True)
    return codec, obj.get("lmbda")
