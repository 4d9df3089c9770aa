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
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

from latentbridge.serve.loadtest import free_port, hammer, streams


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
