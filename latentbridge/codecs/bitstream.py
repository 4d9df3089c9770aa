"""The bitstream that crosses the network (paper Fig. 2: edge encoder -> server). A server recovers y_hat from it
without any pixels; the rate reported everywhere is 8 * len(bytes) / (H * W) of the original image.

Layout (big-endian; about 25 bytes of overhead, which matters at the low rates of small images):
    magic b"LB" | version u8 | codec id u8 | config hash 4 bytes | rate float32 | height u16 | width u16
    | number of entropy models u8 | per model: number of strings u8, each string's length (LEB128 varint)
    | payload (compressai's strings) | CRC-32 u32 of all before
The rate field is the rate point lambda of a fixed-rate codec (checked against the decoder's), and the quantiser
gain g of a variable-rate codec (paper 2; ``codecs/vbr.py``): the decoder codes with exactly that float32, so it
needs nothing else, and a gain that is not finite or outside the codec's ladder is refused before entropy decoding.
The padding (bottom / right, to the codec's ``pad_multiple``) and the latent shapes follow from the size and
the codec, so they are derived, not stored. Every check runs before entropy decoding: a damaged or foreign file
is refused.

Hostile input (issue: split inference as a service). The CRC only catches accidents: anyone can write a header.
Before any allocation or entropy decoding the decoder checks the image size against ``max_pixels``, the string
table against the codec's exact structure (``CodecAdapter.string_symbols``: how many entropy models, one string
each) and every string's length against what a coding of its symbols can take. compressai's rANS decoder is told
no string length and reads on past a short string (a 25-byte stream claiming 256x256 with empty strings used to
end the process with SIGSEGV): it decodes a zero-padded copy, sized from the symbol count and the string length
so that it cannot run past it (``guarded``). A decoded latent that is not finite is refused. Optional
authenticity: with a shared key, HMAC-SHA256 of everything before it follows the payload (``key=``); the CRC
stays for damage.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from latentbridge.codecs.adapter import CODECS, CodecAdapter
from latentbridge.core.errors import LatentBridgeError

MAGIC = b"LB"
VERSION = 2
CODEC_IDS = {name: spec.codec_id for name, spec in CODECS.items()}  # one registry: codecs/adapter.py
_FIXED = struct.Struct(">2sBB4sfHH")
_CRC = struct.Struct(">I")
_MAC_SIZE = 32  # HMAC-SHA256
#: the largest image a decoder accepts by default (H x W of the original image): a 16-megapixel photo
MAX_PIXELS = 4096 * 4096


class BitstreamError(LatentBridgeError):
    """The bytes are not a LatentBridge bitstream this codec can decode."""


def codec_config_hash(name: str, arch: dict[str, Any], lmbda: float | None, ladder: Any = None) -> bytes:
    """4 bytes identifying a codec configuration (name, architecture, rate point, or rate ladder: not the rate a
    variable-rate stream was coded at)."""
    fields: dict[str, Any] = {"name": name, "arch": dict(sorted(arch.items())), "lmbda": lmbda}
    if ladder is not None:
        fields["ladder"] = ladder.as_dict()
    canon = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(canon.encode()).digest()[:4]


def config_hash_of(codec: CodecAdapter, lmbda: float | None) -> bytes:
    """The config hash of ``codec`` (fixed-rate: at rate point ``lmbda``)."""
    if codec.variable_rate:
        return codec_config_hash(codec.name, codec.arch, None, codec.ladder)
    return codec_config_hash(codec.name, codec.arch, lmbda)


def header_rate(codec: CodecAdapter, rate: float | None) -> float:
    """The header's rate field: lambda (fixed-rate) or the gain g (variable-rate), as float32."""
    if codec.variable_rate:
        if rate is None or not math.isfinite(float(rate)):
            raise ValueError(f"codec '{codec.name}' is variable-rate: encode with a finite gain, got {rate}")
        lo, hi = codec.ladder.gain_range
        if not lo <= _as_f32(rate) <= hi:
            raise ValueError(f"gain {rate:g} is outside [{lo:g}, {hi:g}] of codec '{codec.name}'")
    else:
        codec.check_gain(None)
    return _as_f32(rate)


def _as_f32(v: float | None) -> float:
    return struct.unpack(">f", struct.pack(">f", math.nan if v is None else float(v)))[0]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


@dataclass
class Bitstream:
    """A parsed container: header fields and compressai's strings."""

    codec_id: int
    config_hash: bytes
    lmbda: float
    height: int
    width: int
    strings: list[list[bytes]]

    def to_bytes(self, key: bytes | None = None) -> bytes:
        """The container; with ``key``, an HMAC-SHA256 tag of everything before it follows the payload."""
        if len(self.strings) > 255 or any(len(g) > 255 for g in self.strings):
            raise ValueError("too many entropy-coded strings for the bitstream format")
        head = _FIXED.pack(MAGIC, VERSION, self.codec_id, self.config_hash, self.lmbda, self.height, self.width)
        table = bytes([len(self.strings)]) + b"".join(
            bytes([len(g)]) + b"".join(_varint(len(s)) for s in g) for g in self.strings
        )
        body = head + table + b"".join(s for g in self.strings for s in g)
        if key is not None:
            body += hmac.new(key, body, hashlib.sha256).digest()
        return body + _CRC.pack(zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data: bytes, key: bytes | None = None) -> Bitstream:
        """Parse a container (bounded: every length is checked against the bytes there are); with ``key``, the
        HMAC tag must match."""
        if len(data) < _FIXED.size + 1 + _CRC.size + (_MAC_SIZE if key is not None else 0):
            raise BitstreamError(f"bitstream too short ({len(data)} bytes)")
        magic, version, codec_id, config_hash, lmbda, height, width = _FIXED.unpack_from(data)
        if magic != MAGIC:
            raise BitstreamError("not a LatentBridge bitstream (bad magic)")
        if version != VERSION:
            raise BitstreamError(f"bitstream format version {version}, this build reads version {VERSION}")
        (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
        body = data[: -_CRC.size]
        if zlib.crc32(body) != crc:
            raise BitstreamError("bitstream is corrupt or truncated (checksum mismatch)")
        if key is not None:
            body, tag = body[:-_MAC_SIZE], body[-_MAC_SIZE:]
            if not hmac.compare_digest(tag, hmac.new(key, body, hashlib.sha256).digest()):
                raise BitstreamError("bitstream failed authentication (HMAC mismatch: another key, or forged)")
        if height == 0 or width == 0:
            raise BitstreamError(f"bitstream holds an impossible image size {height}x{width}")
        pos, lengths = _FIXED.size, []
        try:
            for _ in range(body[pos : pos + 1][0]):
                pos += 1
                row = []
                for _ in range(body[pos]):
                    n, shift = 0, 0
                    while True:
                        pos += 1
                        n |= (body[pos] & 0x7F) << shift
                        if not body[pos] & 0x80:
                            break
                        shift += 7
                        if shift > 28:
                            raise BitstreamError("bitstream length table is malformed")
                    row.append(n)
                lengths.append(row)
            pos += 1
        except IndexError:
            raise BitstreamError("bitstream length table is truncated") from None
        if sum(map(sum, lengths)) != len(body) - pos:
            hint = "" if key is not None else " (an authenticated stream needs the decoder's key)"
            raise BitstreamError(f"bitstream payload length does not match its header{hint}")
        strings = []
        for row in lengths:
            group = []
            for n in row:
                group.append(body[pos : pos + n])
                pos += n
            strings.append(group)
        return cls(codec_id, config_hash, lmbda, height, width, strings)


def pad_to_multiple(x: Tensor, multiple: int = 64) -> tuple[Tensor, int, int]:
    """Replicate-pad the bottom and right edges so H and W are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    pb, pr = (-h) % multiple, (-w) % multiple
    return (F.pad(x, (0, pr, 0, pb), mode="replicate") if pb or pr else x), pb, pr


def _coding_gain(codec: CodecAdapter, rate: float | None) -> float | None:
    """What the codec codes with: the header's gain for a variable-rate codec, nothing for a fixed-rate one."""
    return header_rate(codec, rate) if codec.variable_rate else None


@torch.no_grad()
def encode_image(codec: CodecAdapter, x: Tensor, rate: float | None, key: bytes | None = None) -> bytes:
    """One image x (1, 3, H, W) in [0, 1], any size up to 65535 a side -> the bytes sent. ``rate``: the rate point
    lambda of a fixed-rate codec, the gain g of a variable-rate one (``codec.ladder.gain(q)``); ``key``: sign it
    (HMAC-SHA256). Entropy tables must be up to date (``codec.model.update(force=True)`` after training)."""
    if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"encode_image takes one RGB image (1, 3, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if not (0 < h <= 65535 and 0 < w <= 65535):
        raise ValueError(f"image size {h}x{w} is outside the bitstream's 1..65535 range")
    field = header_rate(codec, rate)
    padded, _, _ = pad_to_multiple(x, codec.pad_multiple)
    out = codec.compress(padded, _coding_gain(codec, rate))
    if _shape_key(out["shape"]) != _shape_key(codec.coded_shape(*padded.shape[-2:])):
        raise RuntimeError(f"codec '{codec.name}' coded shape {out['shape']} differs from its derived shape")
    bs = Bitstream(CODEC_IDS[codec.name], config_hash_of(codec, rate), field, h, w, [list(g) for g in out["strings"]])
    return bs.to_bytes(key)


@torch.no_grad()
def encode_batch(
    codec: CodecAdapter, x: Tensor, rate: float | None, key: bytes | None = None
) -> tuple[list[bytes], Any]:
    """A batch of equal-size images (B, 3, H, W) -> each image's bytes (identical to ``encode_image`` of that image
    alone) and, from the same network pass, the coded latent and its likelihoods (``LatentOutput``)."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"encode_batch takes RGB images (B, 3, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if not (0 < h <= 65535 and 0 < w <= 65535):
        raise ValueError(f"image size {h}x{w} is outside the bitstream's 1..65535 range")
    field = header_rate(codec, rate)
    padded, _, _ = pad_to_multiple(x, codec.pad_multiple)
    strings, latent = codec.compress_batch(padded, _coding_gain(codec, rate))
    head = (CODEC_IDS[codec.name], config_hash_of(codec, rate), field, h, w)
    return [Bitstream(*head, [list(g) for g in s]).to_bytes(key) for s in strings], latent


def _shape_key(shape: Any) -> Any:
    if isinstance(shape, dict):
        return {k: _shape_key(v) for k, v in shape.items()}
    if isinstance(shape, (list, tuple)) and shape and not isinstance(shape[0], int):
        return [_shape_key(v) for v in shape]
    return tuple(int(v) for v in shape)


def parse_for(
    codec: CodecAdapter,
    data: bytes,
    lmbda: float | None = None,
    max_pixels: int = MAX_PIXELS,
    key: bytes | None = None,
) -> Bitstream:
    """Parse and check that the bitstream was made by this codec (a fixed-rate one: at rate point ``lmbda``; a
    variable-rate one: at a finite gain inside its ladder), for an image of at most ``max_pixels``, with exactly
    the codec's string table and strings no longer than a coding of their symbols; with ``key``, authenticated."""
    bs = Bitstream.from_bytes(data, key)
    names = {v: k for k, v in CODEC_IDS.items()}
    if bs.codec_id != CODEC_IDS[codec.name]:
        coded_by = names.get(bs.codec_id, f"unknown codec id {bs.codec_id}")
        raise BitstreamError(f"bitstream was coded by codec '{coded_by}', this decoder is '{codec.name}'")
    if codec.variable_rate:
        lo, hi = codec.ladder.gain_range
        if not (math.isfinite(bs.lmbda) and lo <= bs.lmbda <= hi):
            raise BitstreamError(f"bitstream gain {bs.lmbda:g} is outside [{lo:g}, {hi:g}] of codec '{codec.name}'")
    else:
        theirs, ours = bs.lmbda, _as_f32(lmbda)
        if not (theirs == ours or (math.isnan(theirs) and math.isnan(ours))):
            raise BitstreamError(f"bitstream is rate point lambda={theirs:.6g}, this decoder is lambda={ours:.6g}")
    if bs.config_hash != config_hash_of(codec, lmbda):
        raise BitstreamError(f"bitstream was coded by another '{codec.name}' configuration (config hash differs)")
    if bs.height * bs.width > max_pixels:
        raise BitstreamError(f"bitstream claims a {bs.height}x{bs.width} image, more than max_pixels={max_pixels}")
    symbols = string_symbols(codec, bs)
    if [len(g) for g in bs.strings] != [1] * len(symbols):
        raise BitstreamError(
            f"bitstream string table {[len(g) for g in bs.strings]} is not codec '{codec.name}''s "
            f"({len(symbols)} entropy-coded strings, one each)"
        )
    for i, ((string,), n) in enumerate(zip(bs.strings, symbols)):
        if len(string) < 8 or len(string) % 4:  # the rANS coder writes 32-bit words and flushes 64 bits of state
            raise BitstreamError(f"bitstream string {i} ({len(string)} bytes) is not a rANS coding (32-bit words, >=8)")
        if len(string) > _max_string(n):
            raise BitstreamError(f"bitstream string {i} ({len(string)} bytes) is longer than any coding of {n} symbols")
    return bs


def string_symbols(codec: CodecAdapter, bs: Bitstream) -> list[int]:
    """The symbol count of each string of this stream's (padded) image."""
    m = codec.pad_multiple
    return codec.string_symbols(bs.height + (-bs.height) % m, bs.width + (-bs.width) % m)


def _max_string(symbols: int) -> int:
    """The longest string a coding of ``symbols`` symbols can be: 16-bit precision, so at most 2 bytes a symbol
    but for rare bypass-coded outliers; 4 bytes a symbol + 1 KiB is far above anything the encoder writes."""
    return 4 * symbols + 1024


def guarded(string: bytes, symbols: int) -> bytes:
    """``string`` followed by zeros that compressai's rANS decoder cannot run past. It reads one 32-bit word per
    symbol at most (plus two to start), and its bypass mode (outliers) reads 4 bits per step while the bits it
    reads are all ones, then as many 4-bit groups as those steps counted: with zeros after the string the steps
    end within the string's bits, and the groups they count take at most ~15 bytes per byte of the string."""
    return string + bytes(4 * (symbols + symbols // 4 + 8) + 16 * len(string) + 256)


@torch.no_grad()
def decode_latent(
    codec: CodecAdapter,
    data: bytes,
    lmbda: float | None = None,
    max_pixels: int = MAX_PIXELS,
    key: bytes | None = None,
    accept: Callable[[Bitstream], None] | None = None,
) -> tuple[Tensor, Bitstream]:
    """Bytes -> y_hat (of the padded image) without any pixels: the neck path's input. A variable-rate stream
    carries its gain: ``lmbda`` is for fixed-rate codecs only. Safe on hostile bytes: a ``BitstreamError`` (one
    line) or a latent, never a crash (``parse_for``, ``guarded``). ``accept`` sees the checked header before any
    entropy decoding and raises ``BitstreamError`` for one the caller cannot use (e.g. a size its neck cannot take)."""
    bs = parse_for(codec, data, lmbda, max_pixels, key)
    if accept is not None:
        accept(bs)
    m = codec.pad_multiple
    shape = codec.coded_shape(bs.height + (-bs.height) % m, bs.width + (-bs.width) % m)
    gain = bs.lmbda if codec.variable_rate else None
    strings = [[guarded(s, n)] for (s,), n in zip(bs.strings, string_symbols(codec, bs))]
    try:
        y_hat = codec.decompress_latent(strings, shape, gain)
    except (RuntimeError, ValueError, IndexError, KeyError, TypeError, OverflowError) as e:
        raise BitstreamError(f"bitstream does not fit codec '{codec.name}' ({type(e).__name__})") from None
    if not torch.isfinite(y_hat).all():
        raise BitstreamError("bitstream decodes to a latent that is not finite (not a coding of an image)")
    return y_hat, bs


@torch.no_grad()
def decode_image(
    codec: CodecAdapter,
    data: bytes,
    lmbda: float | None = None,
    max_pixels: int = MAX_PIXELS,
    key: bytes | None = None,
) -> Tensor:
    """Bytes -> x_hat (1, 3, H, W), cropped back to the original size."""
    y_hat, bs = decode_latent(codec, data, lmbda, max_pixels, key)
    return codec.synthesize(y_hat)[..., : bs.height, : bs.width]


def bits_per_pixel_of(data: bytes, height: int, width: int) -> float:
    """The real rate: 8 * bytes / (H * W) of the original image."""
    return 8.0 * len(data) / (height * width)
