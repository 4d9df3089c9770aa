"""The bitstream that crosses the network (paper Fig. 2: edge encoder -> server). A server recovers y_hat from it
without any pixels; the reported rate everywhere is 8 * len(bytes) / (H * W) of the original image.

Layout (all integers big-endian):
    magic b"LBRB" | version u8 | header length u32 | header (UTF-8 JSON) | payload | CRC-32 u32 of all before
The header names the codec, a hash of its config, the rate point, the original size and the padding, the
entropy models' latent shapes and the byte length of every compressai string; the payload is those strings.
Every check runs before any entropy decoding, so a damaged or foreign file is refused, never decoded.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from latentbridge.errors import LatentBridgeError
from models.codec_adapter import CodecAdapter

MAGIC = b"LBRB"
VERSION = 1
_HEAD = struct.Struct(">4sBI")
_CRC = struct.Struct(">I")
MAX_HEADER = 1 << 20


class BitstreamError(LatentBridgeError):
    """The bytes are not a LatentBridge bitstream this codec can decode."""


def codec_config_hash(name: str, arch: dict[str, Any], lmbda: float | None) -> str:
    """16 hex digits identifying a codec configuration (name, architecture, rate point)."""
    canon = json.dumps({"name": name, "arch": dict(sorted(arch.items())), "lmbda": lmbda}, sort_keys=True)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


@dataclass
class Bitstream:
    """A decoded container: header fields plus compressai's strings and shapes."""

    codec: str
    config_hash: str
    lmbda: float | None
    height: int
    width: int
    pad_bottom: int
    pad_right: int
    shape: Any
    strings: list[list[bytes]]

    def to_bytes(self) -> bytes:
        header = {
            "codec": self.codec,
            "config_hash": self.config_hash,
            "lmbda": self.lmbda,
            "size": [self.height, self.width],
            "padding": [self.pad_bottom, self.pad_right],
            "shape": _shape_to_json(self.shape),
            "lengths": [[len(s) for s in group] for group in self.strings],
        }
        head = json.dumps(header, separators=(",", ":")).encode()
        body = _HEAD.pack(MAGIC, VERSION, len(head)) + head + b"".join(s for g in self.strings for s in g)
        return body + _CRC.pack(zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data: bytes) -> Bitstream:
        if len(data) < _HEAD.size + _CRC.size:
            raise BitstreamError(f"bitstream too short ({len(data)} bytes)")
        magic, version, head_len = _HEAD.unpack_from(data)
        if magic != MAGIC:
            raise BitstreamError("not a LatentBridge bitstream (bad magic)")
        if version != VERSION:
            raise BitstreamError(f"bitstream format version {version}, this build reads version {VERSION}")
        (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
        if zlib.crc32(data[: -_CRC.size]) != crc:
            raise BitstreamError("bitstream is corrupt or truncated (checksum mismatch)")
        start = _HEAD.size
        if head_len > MAX_HEADER or start + head_len > len(data) - _CRC.size:
            raise BitstreamError("bitstream header length is out of range")
        try:
            h = json.loads(data[start : start + head_len].decode())
            lengths = [[int(n) for n in group] for group in h["lengths"]]
            height, width = (int(v) for v in h["size"])
            pad_bottom, pad_right = (int(v) for v in h["padding"])
            fields = (str(h["codec"]), str(h["config_hash"]), h["lmbda"], _shape_from_json(h["shape"]))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise BitstreamError(f"bitstream header is malformed ({type(e).__name__})") from None
        payload = data[start + head_len : -_CRC.size]
        if any(n < 0 for g in lengths for n in g) or sum(map(sum, lengths)) != len(payload):
            raise BitstreamError("bitstream payload length does not match its header")
        if not (0 < height <= 1 << 16 and 0 < width <= 1 << 16 and 0 <= pad_bottom < 64 and 0 <= pad_right < 64):
            raise BitstreamError(f"bitstream holds an impossible image size {height}x{width}")
        strings, pos = [], 0
        for group in lengths:
            row = []
            for n in group:
                row.append(payload[pos : pos + n])
                pos += n
            strings.append(row)
        codec, config_hash, lmbda, shape = fields
        return cls(codec, config_hash, lmbda, height, width, pad_bottom, pad_right, shape, strings)


def _shape_to_json(shape: Any) -> Any:
    if isinstance(shape, dict):
        return {k: _shape_to_json(v) for k, v in shape.items()}
    if isinstance(shape, torch.Size) or (isinstance(shape, (list, tuple)) and all(isinstance(v, int) for v in shape)):
        return {"size": [int(v) for v in shape]}
    if isinstance(shape, (list, tuple)):
        return [_shape_to_json(v) for v in shape]
    raise TypeError(f"cannot serialize latent shape {shape!r}")


def _shape_from_json(obj: Any) -> Any:
    if isinstance(obj, dict) and set(obj) == {"size"}:
        return torch.Size([int(v) for v in obj["size"]])
    if isinstance(obj, dict):
        return {str(k): _shape_from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_shape_from_json(v) for v in obj]
    raise TypeError("shape")


def pad_to_multiple(x: Tensor, multiple: int = 64) -> tuple[Tensor, int, int]:
    """Replicate-pad the bottom and right edges so H and W are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    pb, pr = (-h) % multiple, (-w) % multiple
    return (F.pad(x, (0, pr, 0, pb), mode="replicate") if pb or pr else x), pb, pr


@torch.no_grad()
def encode_image(codec: CodecAdapter, x: Tensor, lmbda: float | None) -> bytes:
    """One image x (1, 3, H, W) in [0, 1], any size -> the bytes sent. Entropy tables must be up to date
    (``codec.model.update(force=True)`` after training)."""
    if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"encode_image takes one RGB image (1, 3, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    padded, pb, pr = pad_to_multiple(x, codec.pad_multiple)
    out = codec.compress(padded)
    bs = Bitstream(
        codec.name,
        codec_config_hash(codec.name, codec.arch, lmbda),
        lmbda,
        h,
        w,
        pb,
        pr,
        out["shape"],
        [list(g) for g in out["strings"]],
    )
    return bs.to_bytes()


def parse_for(codec: CodecAdapter, data: bytes, lmbda: float | None) -> Bitstream:
    """Parse and check that the bitstream was made by this codec at this rate point."""
    bs = Bitstream.from_bytes(data)
    if bs.codec != codec.name:
        raise BitstreamError(f"bitstream was coded by codec '{bs.codec}', this decoder is '{codec.name}'")
    if bs.lmbda != lmbda:
        raise BitstreamError(f"bitstream is rate point lambda={bs.lmbda}, this decoder is lambda={lmbda}")
    if bs.config_hash != codec_config_hash(codec.name, codec.arch, lmbda):
        raise BitstreamError(f"bitstream was coded by another '{codec.name}' configuration (config hash differs)")
    return bs


@torch.no_grad()
def decode_latent(codec: CodecAdapter, data: bytes, lmbda: float | None) -> tuple[Tensor, Bitstream]:
    """Bytes -> y_hat (of the padded image) without any pixels: the neck path's input."""
    bs = parse_for(codec, data, lmbda)
    try:
        return codec.decompress_latent(bs.strings, bs.shape), bs
    except (RuntimeError, ValueError, IndexError, KeyError, TypeError) as e:
        raise BitstreamError(f"bitstream does not fit codec '{codec.name}' ({type(e).__name__})") from None


@torch.no_grad()
def decode_image(codec: CodecAdapter, data: bytes, lmbda: float | None) -> Tensor:
    """Bytes -> x_hat (1, 3, H, W), cropped back to the original size."""
    y_hat, bs = decode_latent(codec, data, lmbda)
    return codec.synthesize(y_hat)[..., : bs.height, : bs.width]


def bits_per_pixel_of(data: bytes, height: int, width: int) -> float:
    """The real rate: 8 * bytes / (H * W) of the original image."""
    return 8.0 * len(data) / (height * width)
