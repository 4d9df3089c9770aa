"""Load and fault test of ``latentbridge-serve`` on localhost (issues: split inference as a service; the service
under attack).

    python scripts/load_test_serve.py --run <finished d1 run dir> [--attackers 8] [--seconds 8] [--json out.json]
    python scripts/load_test_serve.py --run <run> --url http://127.0.0.1:8000   # a server started elsewhere

Starts the server on a free port (a process of its own; or takes ``--url``), encodes real images with the run's
codec, then measures a well-behaved client (valid streams on the neck path, one request every ``--think-ms``) alone
and under each attack of ``latentbridge.serve.loadtest`` (``--attacks``): well-formed streams of a size the neck
cannot take, hostile items mixed into valid batches, a flood past the queue bounds. Prints, per phase, the client's
success rate and p50 / p99 latency next to its unloaded figures, and what the attackers got; the goal column is
success >= 99 % and p50 within 3x of unloaded. ``--throughput`` adds the earlier throughput figures (``--clients``
threads per path, 1 in ``--hostile-every`` requests hostile). Exit 1 if the server died, or a valid request of the
unloaded phase or of the throughput phase failed; ``--check`` also exits 1 when a phase misses the goal.
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

from latentbridge.serve.loadtest import ATTACKS, free_port, hammer, streams, under_attack

GOAL_SUCCESS, GOAL_RATIO = 0.99, 3.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--url", help="a running server (default: start one on a free port)")
    p.add_argument("--attackers", type=int, default=8)
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--seconds", type=float, default=8.0, help="per phase")
    p.add_argument("--think-ms", type=float, default=50.0)
    p.add_argument("--side", type=int, default=2048, help="the size the wrong-size streams claim")
    p.add_argument("--flood-connections", type=int, default=32)
    p.add_argument("--throughput", action="store_true")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--hostile-every", type=int, default=5)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", action="store_true")
    p.add_argument("--json")
    p.add_argument("--server-args", nargs="*", default=[], help="more latentbridge-serve overrides")
    args = p.parse_args(argv)
    valid, hostile = streams(args.run, args.images, args.seed)
    server, base = None, args.url
    if base is None:
        port = free_port()
        log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"latentbridge-serve-{port}.log"
        entry = [sys.executable, "-c", "from latentbridge.cli.commands import serve; serve()"]  # latentbridge-serve
        cmd = [*entry, f"run={args.run}", f"port={port}", "log_level=warning",
               "hydra.run.dir=" + str(log_path.with_suffix("")), *args.server_args]  # fmt: skip
        server = subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
    base = base.rstrip("/")
    try:
        if not _wait(base, server):
            print(f"the server did not start: {base}")
            return 1
        url = f"{base}/v1/latent?path=neck"
        phases = {"unloaded": under_attack(url, valid, hostile, None, 0, args.seconds, think_ms=args.think_ms)}
        for kind in [a for a in args.attacks.split(",") if a]:
            phases[kind] = under_attack(url, valid, hostile, kind, args.attackers, args.seconds, args.side,
                                        args.flood_connections, args.think_ms)  # fmt: skip
        report = {"attackers": args.attackers, "seconds": args.seconds, "think_ms": args.think_ms, "phases": phases}
        if args.throughput:
            hostile_all = [*hostile, b"\0" * (5 << 20)]  # over the server's request limit (4 MiB by default)
            report["throughput"] = {
                path: hammer(f"{base}/v1/latent?path={path}", valid, hostile_all, args.clients, args.seconds,
                             args.hostile_every) for path in ("neck", "reconstruction")}  # fmt: skip
        with urllib.request.urlopen(f"{base}/healthz", timeout=10) as r:
            report["healthz"] = json.loads(r.read())
        alive = server is None or server.poll() is None
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    report["server_alive"] = alive
    report["device"] = "cuda" if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    missed = _print(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    idle = report["phases"]["unloaded"]["client"]
    broken = [p for p, r in report.get("throughput", {}).items() if r["failed_valid"]]
    if not alive or idle["ok"] != idle["sent"] or broken:
        print(f"FAILED: server alive {alive}; unloaded {idle['ok']}/{idle['sent']}; throughput failures {broken}")
        return 1
    if args.check and missed:
        print(f"FAILED: the goal (success >= {GOAL_SUCCESS:.0%}, p50 <= {GOAL_RATIO:g}x unloaded) missed: {missed}")
        return 1
    return 0


def _wait(base: str, server: subprocess.Popen | None) -> bool:
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            if server is not None and server.poll() is not None:
                return False
            time.sleep(0.2)
    return False


def _print(report: dict) -> list[str]:
    """The table; returns the phases that miss the goal."""
    phases, missed = report["phases"], []
    idle = phases["unloaded"]["client"]["p50_ms"]
    print(f"well-behaved client: valid neck-path streams, a request every {report['think_ms']:g} ms; "
          f"{report['attackers']} attackers; {report['seconds']:g} s per phase; {report['device']}")  # fmt: skip
    print(f"  {'phase':<11} {'client ok':>11} {'success':>8} {'p50 ms':>8} {'p99 ms':>8} {'p50/idle':>8}  "
          f"{'attack req/s':>12}  attackers got")  # fmt: skip
    for name, r in phases.items():
        c, a = r["client"], r.get("attack")
        ratio = c["p50_ms"] / idle if c["p50_ms"] and idle else None
        ok = c["success"] >= GOAL_SUCCESS and ratio is not None and ratio <= GOAL_RATIO
        if name != "unloaded" and not ok:
            missed.append(name)
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        got = "-" if a is None else ", ".join(f"{k}: {v}" for k, v in sorted(a["status"].items()))
        print(f"  {name:<11} {c['ok']:>5}/{c['sent']:<5} {c['success']:>8.1%} {fmt(c['p50_ms']):>8} "
              f"{fmt(c['p99_ms']):>8} {fmt(ratio):>8}  {fmt(a and a['requests_per_s']):>12}  {got}"
              + ("" if name == "unloaded" else "   goal " + ("met" if ok else "MISSED")))  # fmt: skip
        if c["failures"]:
            print(f"              client failures: {c['failures'][:3]}")
    for path, r in report.get("throughput", {}).items():
        print(f"  throughput {path:<15} {r['requests_per_s']:8.1f} req/s   p50 {r['p50_ms']} ms   p99 {r['p99_ms']} ms"
              f"   valid {r['valid_ok']}/{r['valid_requests']}   hostile -> {r['hostile_status']}")  # fmt: skip
    h = report["healthz"]
    print(f"  server: {h.get('batches')} batches for {h.get('batched_requests')} neck requests; "
          f"rejected {h.get('rejected')}; alive: {report['server_alive']}")  # fmt: skip
    return missed


if __name__ == "__main__":
    sys.exit(main())
