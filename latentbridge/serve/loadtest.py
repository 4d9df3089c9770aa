"""The client side of the load and fault test of ``latentbridge-serve`` (``scripts/load_test_serve.py``,
``scripts/benchmark_serving_libraries.py``): streams to send, concurrent clients, latency figures."""

from __future__ import annotations

import random
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(
    url: str, data: bytes, timeout: float = 60.0, content_type: str = "application/octet-stream"
) -> tuple[int, bytes]:
    """POST ``data``; (status, body), status -1 when the server closed the connection."""
    req = urllib.request.Request(url, data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError) as e:  # the server closed early (an oversized body gets 413 + close)
        return -1, str(getattr(e, "reason", e)).encode()


def streams(run: str, count: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    """Valid bitstreams of random images at the run's input size, and hostile ones for the same codec."""
    from latentbridge.codecs import bitstream as B
    from latentbridge.runs import open_run

    finished = open_run(run)
    codec, lmbda, size = finished.module.codec, finished.lmbda, finished.image_size
    g = torch.Generator().manual_seed(seed)
    valid = [B.encode_image(codec, torch.rand(1, 3, size, size, generator=g), lmbda) for _ in range(count)]
    bs = B.Bitstream.from_bytes(valid[0])
    rng = random.Random(seed)
    forged = B.Bitstream(bs.codec_id, bs.config_hash, bs.lmbda, 4096, 4096, [[b""], [b""]]).to_bytes()
    small = B.Bitstream(bs.codec_id, bs.config_hash, bs.lmbda, 256, 256, [[b""], [b""]]).to_bytes()
    garbage = B.Bitstream(bs.codec_id, bs.config_hash, bs.lmbda, size, size, [[rng.randbytes(64)] for _ in range(2)])
    mutated = bytearray(valid[1 % count])
    mutated[len(mutated) // 2] ^= 0x10
    hostile = [forged, small, garbage.to_bytes(), bytes(mutated), b"", b"LB" + rng.randbytes(40)]
    return valid, hostile


def hammer(
    url: str,
    valid: list[bytes],
    hostile: list[bytes],
    clients: int,
    seconds: float,
    every: int,
    content_type: str = "application/octet-stream",
) -> dict[str, Any]:
    """``clients`` threads POST for ``seconds``: valid bodies, and every ``every``-th request a hostile one;
    requests/s and latency percentiles of the valid ones, status counts of the hostile ones."""
    latencies: list[float] = []
    failed_valid: list[str] = []
    hostile_status: dict[str, int] = {}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(k: int) -> None:
        rng = random.Random(k)
        i = 0
        while time.monotonic() < stop:
            i += 1
            if i % every == 0:
                status, _ = post(url, rng.choice(hostile), content_type=content_type)
                name = "closed" if status == -1 else "decoded (200)" if status == 200 else str(status)
                with lock:
                    hostile_status[name] = hostile_status.get(name, 0) + 1
                continue
            t = time.perf_counter()
            status, body = post(url, rng.choice(valid), content_type=content_type)
            dt = time.perf_counter() - t
            with lock:
                if status == 200:
                    latencies.append(dt)
                else:
                    failed_valid.append(f"{status}: {body[:120]!r}")

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    ordered = sorted(latencies)
    pct = (lambda p: ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000) if ordered else (lambda p: None)
    return {
        "valid_requests": len(latencies) + len(failed_valid),
        "valid_ok": len(latencies),
        "failed_valid": failed_valid[:10],
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(pct(0.50), 2) if ordered else None,
        "p99_ms": round(pct(0.99), 2) if ordered else None,
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2) if ordered else None,
        "hostile_status": hostile_status,
    }
