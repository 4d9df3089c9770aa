"""Load and fault test of ``latentbridge-serve`` on localhost (issue: split inference as a service).

    python scripts/load_test_serve.py --run <finished d1 run dir> [--clients 8] [--seconds 10] [--json out.json]

Starts the server on a free port (a process of its own), encodes real images with the run's codec, then for each
path (``neck``: the method; ``reconstruction``: decode -> g_s -> the full encoder, served the same way) lets
``--clients`` threads send requests for ``--seconds``: valid bitstreams, and every ``--hostile-every``-th request a
hostile one (the forged 25-byte stream with a valid checksum, garbage strings, a mutated stream, an empty or
oversized body). Prints requests/s and p50 / p99 latency of the valid requests, the status codes of the hostile
ones; fails (exit 1) if a valid request did not get its features or the server died.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONTENT_TYPE = "application/octet-stream"


def post(url: str, data: bytes, timeout: float = 60.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": CONTENT_TYPE})
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


def hammer(url: str, valid: list[bytes], hostile: list[bytes], clients: int, seconds: float, every: int) -> dict:
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
                status, _ = post(url, rng.choice(hostile))
                name = "closed" if status == -1 else "decoded (200)" if status == 200 else str(status)
                with lock:
                    hostile_status[name] = hostile_status.get(name, 0) + 1
                continue
            t = time.perf_counter()
            status, body = post(url, rng.choice(valid))
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--hostile-every", type=int, default=5)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    p.add_argument("--server-args", nargs="*", default=[], help="more latentbridge-serve overrides")
    args = p.parse_args(argv)
    valid, hostile = streams(args.run, args.images, args.seed)
    hostile.append(b"\0" * (5 << 20))  # over the server's request limit (4 MiB by default)
    port = free_port()
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"latentbridge-serve-{port}.log"
    entry = [sys.executable, "-c", "from latentbridge.cli.commands import serve; serve()"]  # latentbridge-serve
    cmd = [*entry, f"run={args.run}", f"port={port}", "log_level=warning",
           "hydra.run.dir=" + str(log_path.with_suffix("")), *args.server_args]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                if server.poll() is not None:
                    print(f"the server did not start (log: {log_path}):\n{log_path.read_text()[-2000:]}")
                    return 1
                time.sleep(0.2)
        report = {"clients": args.clients, "seconds": args.seconds, "paths": {}}
        for path in ("neck", "reconstruction"):
            url = f"{base}/v1/latent?path={path}"
            report["paths"][path] = hammer(url, valid, hostile, args.clients, args.seconds, args.hostile_every)
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:
            report["healthz"] = json.loads(r.read())
        alive = server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=30)
    report["server_alive"] = alive
    device = "cuda" if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"{args.clients} clients x {args.seconds:g} s per path, 1 in {args.hostile_every} requests hostile, {device}")
    for path, r in report["paths"].items():
        print(
            f"  {path:<15} {r['requests_per_s']:8.1f} req/s   p50 {r['p50_ms']} ms   p99 {r['p99_ms']} ms   "
            f"valid {r['valid_ok']}/{r['valid_requests']}   hostile -> {r['hostile_status']}"
        )
    h = report["healthz"]
    print(f"  batches {h['batches']} for {h['batched_requests']} neck requests; server alive: {alive}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    bad = [r["failed_valid"] for r in report["paths"].values() if r["failed_valid"]]
    if bad or not alive:
        print(f"FAILED: valid requests failed {bad} or the server died")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
