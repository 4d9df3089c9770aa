"""The client side of the load and fault test of ``latentbridge-serve`` (``scripts/load_test_serve.py``,
``scripts/benchmark_serving_libraries.py``): streams to send, a well-behaved client, attackers, latency figures.

The question the test answers is what a well-behaved client sees while others attack: its success rate and
latency under each attack, next to the same client's figures on an idle server, in one run. The well-behaved client
runs in this process (one thread, a request every ``think_ms``); attackers run in a process of their own, each from
its own loopback address (127.0.0.10, .11, ...: the server sees distinct clients, as it would on a network), so the
client's figures are not its own process's thread contention.

Attacks (each ``attackers`` clients):
- ``wrong_size``: a well-formed stream of the run's codec (valid checksum and string table) claiming a large image
  (``side`` x ``side``): cheap to send, expensive to decode, and a size the transform-neck cannot take;
- ``poison``: every other request hostile (forged headers, garbage strings that decode, mutated streams, another
  size, empty bodies, random bytes), the rest valid: hostile items in the same batches as valid ones;
- ``flood``: ``flood_connections`` concurrent connections per attacker sending valid streams as fast as answered,
  past the server's queue and per-client bounds.
"""

from __future__ import annotations

import http.client
import multiprocessing as mp
import random
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import torch

ATTACKS = ("wrong_size", "poison", "flood")


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


class Connection:
    """A keep-alive HTTP connection (reopened after the server closes it), optionally from a given source address."""

    def __init__(self, url: str, source: str | None = None, timeout: float = 60.0) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.path = (
            parts.hostname,
            parts.port,
            parts.path + (f"?{parts.query}" if parts.query else ""),
        )
        self.source, self.timeout, self.conn = source, timeout, None

    def post(self, data: bytes) -> tuple[int, bytes]:
        for attempt in range(2):
            if self.conn is None:
                src = (self.source, 0) if self.source else None
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout, source_address=src)
            try:
                self.conn.request("POST", self.path, body=data, headers={"Content-Type": "application/octet-stream"})
                r = self.conn.getresponse()
                body = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.close()
                return r.status, body
            except (OSError, http.client.HTTPException) as e:
                self.close()
                if attempt:
                    return -1, str(e).encode()
        return -1, b""

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


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


def wrong_size(valid: bytes, side: int, seed: int = 0) -> bytes:
    """A well-formed stream of ``valid``'s codec claiming a ``side`` x ``side`` image: valid checksum, the codec's
    string table, 8-byte strings (the shortest rANS coding), so every check but the size passes."""
    from latentbridge.codecs import bitstream as B

    bs = B.Bitstream.from_bytes(valid)
    rng = random.Random(seed)
    strings = [[rng.randbytes(8)] for _ in bs.strings]
    return B.Bitstream(bs.codec_id, bs.config_hash, bs.lmbda, side, side, strings).to_bytes()


def percentiles(latencies: list[float]) -> dict[str, float | None]:
    ordered = sorted(latencies)
    if not ordered:
        return {"p50_ms": None, "p99_ms": None, "mean_ms": None}
    pct = lambda p: round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2)  # noqa: E731
    return {"p50_ms": pct(0.50), "p99_ms": pct(0.99), "mean_ms": round(statistics.fmean(ordered) * 1000, 2)}


def well_behaved(url: str, valid: list[bytes], seconds: float, think_ms: float = 50.0) -> dict[str, Any]:
    """One client sending valid streams, one at a time, a request every ``think_ms``: its success and latency."""
    conn, latencies, failures = Connection(url), [], []
    stop, i = time.monotonic() + seconds, 0
    while time.monotonic() < stop:
        t = time.perf_counter()
        status, body = conn.post(valid[i % len(valid)])
        dt = time.perf_counter() - t
        i += 1
        if status == 200:
            latencies.append(dt)
        else:
            failures.append(f"{status}: {body[:100]!r}")
        time.sleep(max(0.0, think_ms / 1000 - dt))
    conn.close()
    sent = len(latencies) + len(failures)
    return {"sent": sent, "ok": len(latencies), "success": round(len(latencies) / max(1, sent), 4),
            **percentiles(latencies), "failures": failures[:5]}  # fmt: skip


def _attacker(url: str, k: int, bodies: list[bytes], connections: int, stop: Any, out: Any) -> None:
    """Attacker ``k`` (source 127.0.0.<10+k>): ``connections`` closed loops posting ``bodies`` until ``stop``."""
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def loop(j: int) -> None:
        conn, rng = Connection(url, source=f"127.0.0.{10 + k}", timeout=30.0), random.Random(k * 1000 + j)
        while not stop.is_set():
            status, _ = conn.post(rng.choice(bodies))
            with lock:
                counts[str(status)] = counts.get(str(status), 0) + 1
        conn.close()

    threads = [threading.Thread(target=loop, args=(j,)) for j in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(counts)


def _attack_process(url: str, attackers: int, bodies: list[bytes], connections: int, ready: Any, stop: Any,
                    out: Any) -> None:  # fmt: skip
    """The attackers, in a process of their own; ``ready`` once started, until ``stop``."""
    import queue

    inner: Any = queue.Queue()
    threads = [threading.Thread(target=_attacker, args=(url, k, bodies, connections, stop, inner))
               for k in range(attackers)]  # fmt: skip
    for t in threads:
        t.start()
    ready.set()
    for t in threads:
        t.join()
    total: dict[str, int] = {}
    while not inner.empty():
        for status, n in inner.get().items():
            total[status] = total.get(status, 0) + n
    out.put(total)


def attack_bodies(kind: str, valid: list[bytes], hostile: list[bytes], side: int) -> tuple[list[bytes], int]:
    """What attackers of ``kind`` send, and over how many connections each."""
    if kind == "wrong_size":
        return [wrong_size(valid[0], side, s) for s in range(4)], 1
    if kind == "poison":
        return [*hostile, wrong_size(valid[0], side), *valid[: len(hostile) + 1]], 1
    if kind == "flood":
        return list(valid), 16
    raise ValueError(f"unknown attack '{kind}' (one of {', '.join(ATTACKS)})")


def under_attack(
    url: str,
    valid: list[bytes],
    hostile: list[bytes],
    kind: str | None,
    attackers: int,
    seconds: float,
    side: int = 2048,
    flood_connections: int | None = None,
    think_ms: float = 50.0,
) -> dict[str, Any]:
    """The well-behaved client's figures while ``attackers`` clients run attack ``kind`` (None: alone)."""
    if kind is None:
        return {"client": well_behaved(url, valid, seconds, think_ms)}
    bodies, connections = attack_bodies(kind, valid, hostile, side)
    if kind == "flood" and flood_connections:
        connections = flood_connections
    ctx = mp.get_context("spawn")
    out, ready, stop = ctx.Queue(), ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_attack_process, args=(url, attackers, bodies, connections, ready, stop, out))
    proc.start()
    if not ready.wait(timeout=300):
        proc.kill()
        raise RuntimeError("the attackers' process did not start")
    time.sleep(1.0)  # the attack is under way before the client starts measuring
    started = time.monotonic()
    client = well_behaved(url, valid, seconds, think_ms)
    wall = time.monotonic() - started
    stop.set()
    statuses = out.get(timeout=120)
    proc.join(timeout=30)
    attack = {"attackers": attackers, "connections_each": connections, "requests": sum(statuses.values()),
              "requests_per_s": round(sum(statuses.values()) / wall, 1), "status": statuses}  # fmt: skip
    return {"client": client, "attack": attack}


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
    requests/s and latency percentiles of the valid ones, status counts of the hostile ones (throughput figures)."""
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
    return {
        "valid_requests": len(latencies) + len(failed_valid),
        "valid_ok": len(latencies),
        "failed_valid": failed_valid[:10],
        "requests_per_s": round(len(latencies) / wall, 1),
        **percentiles(latencies),
        "hostile_status": hostile_status,
    }
