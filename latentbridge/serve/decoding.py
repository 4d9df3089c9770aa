"""Entropy decoding in worker processes (issue: the service under attack).

compressai's rANS decoder holds the GIL for a whole call (most of it converting the CDF tables to C++), so threads
never decode in parallel and, worse, every decode stalls the event loop and the model's thread of the server
process. ``DecodePool`` runs ``Service.decode``'s work in ``workers`` processes of their own, each holding a CPU
copy of the run's codec: the server process keeps only HTTP, batching and the forward. Decoding on the CPU is also
what keeps a server bit-exact with CPU encoders (the entropy model's scales decide which symbols are read).

A worker gets the codec as a LatentBridge codec checkpoint (bytes, read with ``weights_only=True``) and the
service's limits; it returns the latent as a numpy array (pickled by value, not through shared memory) with the
header, or the ``BitstreamError`` it raised.
"""

from __future__ import annotations

import io
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

_WORKER: dict[str, Any] = {}


def _codec_of(blob: bytes) -> Any:
    """A codec from its checkpoint bytes, on the CPU, entropy tables built."""
    from latentbridge.codecs.adapter import build_codec

    ckpt = torch.load(io.BytesIO(blob), weights_only=True)
    codec = build_codec(ckpt["name"], arch=ckpt["arch"], lmbda=ckpt.get("lmbda"), ladder=ckpt.get("ladder")).eval()
    codec.model.load_state_dict(ckpt["state_dict"])
    codec.update_tables()
    return codec


def _start(
    blobs: list[bytes],
    lmbda: float | None,
    max_pixels: int,
    key: bytes | None,
    accepts: dict[str, Any],
    rate_range: tuple[float, float] | None = None,
    family: bool = False,
) -> None:
    """Worker initializer: the codec (a rate-conditioned run: every family member, or its variable-rate codec, and
    the neck's rate range), one intra-op thread."""
    from latentbridge.codecs.family import CodecFamily

    torch.set_num_threads(1)
    codecs = [_codec_of(b) for b in blobs]
    codec = CodecFamily(codecs) if family else codecs[0]
    _WORKER.update(codec=codec, lmbda=lmbda, max_pixels=max_pixels, key=key, accepts=accepts, rate_range=rate_range)


def _decode(data: bytes, path: str) -> tuple[Any, Any] | Exception:
    """(y_hat as numpy, header) or the ``LatentBridgeError`` that refused the stream."""
    from latentbridge.codecs.bitstream import Bitstream, decode_latent
    from latentbridge.codecs.family import stream_coder
    from latentbridge.core.errors import LatentBridgeError

    w = _WORKER
    try:
        codec, lmbda = w["codec"], w["lmbda"]
        if w["rate_range"] is not None:  # as Service.decode: the header's rate picks the codec, or is refused
            codec, lmbda, _ = stream_coder(codec, Bitstream.from_bytes(data, w["key"]), w["rate_range"])
        y_hat, header = decode_latent(codec, data, lmbda, w["max_pixels"], w["key"], w["accepts"][path].check)
    except LatentBridgeError as e:
        return e
    return y_hat.numpy(), header


class DecodePool:
    """``workers`` processes decoding for one service; ``decode(data, path)`` is what ``Service.decode`` computes."""

    def __init__(self, service: Any, workers: int) -> None:
        from latentbridge.codecs.adapter import codec_checkpoint
        from latentbridge.codecs.family import CodecFamily

        codec = service.module.codec
        family = isinstance(codec, CodecFamily)
        blobs = []
        for member in codec.members if family else [codec]:
            buffer = io.BytesIO()
            torch.save(codec_checkpoint(member, lmbda=member.lmbda), buffer)
            blobs.append(buffer.getvalue())
        rate_range = service.module.neck.rate_range if service.rate_conditioned else None
        args = (blobs, service.lmbda, service.max_pixels, service.key, dict(service.accepts), rate_range, family)
        self.pool = ProcessPoolExecutor(workers, mp.get_context("spawn"), initializer=_start, initargs=args)
        self.service = service

    def decode(self, data: bytes, path: str = "neck") -> Any:
        """Runs in a thread of the server process: waits for a worker (without the GIL) and rebuilds ``Decoded``."""
        from latentbridge.codecs.bitstream import bits_per_pixel_of
        from latentbridge.serve.service import Decoded

        out = self.pool.submit(_decode, data, path).result()
        if isinstance(out, Exception):
            raise out
        y_hat, header = out
        bpp = bits_per_pixel_of(data, header.height, header.width)
        if not self.service.rate_conditioned:
            return Decoded(torch.from_numpy(y_hat), header, len(data), bpp)
        codec, _, rate = self.service.module.stream_coder(header)  # the header alone (checked in the worker)
        return Decoded(torch.from_numpy(y_hat), header, len(data), bpp, codec, rate)

    def warm_up(self) -> None:
        """Start every worker now (spawning takes seconds), not on the first requests."""
        list(self.pool.map(_noop, range(self.pool._max_workers)))

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _noop(_: int) -> None:
    return None
