"""Why ``latentbridge-serve`` is FastAPI + uvicorn: the same run served by it and by LitServe, side by side.

    pip install litserve   # not a dependency of LatentBridge; only this comparison needs it
    python scripts/benchmark_serving_libraries.py --run <finished d1 run dir> [--clients 8] [--seconds 10]

Both servers decode the same bitstreams with the same ``Service`` and batch the neck's forward (16 at most, 5 ms
window). LitServe's workers receive JSON, so its clients send the bitstream base64-encoded and get the features
back the same way; ours take and give raw bytes. Prints requests/s, p50 / p99 latency and the bytes on the wire
per request for each, measured one after the other on this machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from latentbridge.serve.loadtest import free_port, hammer, streams

LITSERVE_APP = """
import base64, sys
import litserve as ls
from safetensors.torch import save
from latentbridge.serve.service import Service

class API(ls.LitAPI):
    def setup(self, device):
        self.service = Service.load(sys.argv[1], device="cpu")
    def decode_request(self, request):
        return self.service.decode(base64.b64decode(request["bitstream"]))
    def predict(self, x):
        return self.service.features(x if isinstance(x, list) else [x])
    def unbatch(self, output):
        return output
    def batch(self, inputs):
        return inputs
    def encode_response(self, output):
        return {"features": base64.b64encode(save({"features": output.contiguous()})).decode()}

if __name__ == "__main__":  # LitServe spawns its workers: they import this file
    ls.LitServer(API(max_batch_size=16, batch_timeout=0.005), accelerator="cpu", workers_per_device=1).run(
        port=int(sys.argv[2]), log_level="warning", generate_client_file=False)
"""


def wait(url: str, proc: subprocess.Popen) -> None:
    for _ in range(600):
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"server died: {proc.args}") from None
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--json")
    args = p.parse_args(argv)
    valid, _ = streams(args.run, 8, 0)
    report = {}
    for name in ("fastapi", "litserve"):
        port = free_port()
        if name == "fastapi":
            hydra_dir = f"hydra.run.dir={os.environ.get('TMPDIR', '/tmp')}/lb-{port}"
            cmd = [sys.executable, "-c", "from latentbridge.cli.commands import serve; serve()", f"run={args.run}",
                   f"port={port}", "log_level=warning", hydra_dir]  # fmt: skip
            url, health, bodies = f"http://127.0.0.1:{port}/v1/latent", f"http://127.0.0.1:{port}/healthz", valid
        else:
            app = Path(os.environ.get("TMPDIR", "/tmp")) / f"litserve_app_{port}.py"
            app.write_text(LITSERVE_APP)
            cmd = [sys.executable, str(app), args.run, str(port)]
            url, health = f"http://127.0.0.1:{port}/predict", f"http://127.0.0.1:{port}/health"
            bodies = [json.dumps({"bitstream": base64.b64encode(v).decode()}).encode() for v in valid]
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait(health, server)
            kind = "application/json" if name == "litserve" else "application/octet-stream"
            r = hammer(url, bodies, [b""], args.clients, args.seconds, every=10**9, content_type=kind)
            r["request_bytes"] = round(sum(map(len, bodies)) / len(bodies), 1)
            r["bitstream_bytes"] = round(sum(map(len, valid)) / len(valid), 1)
            report[name] = r
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"{args.clients} clients x {args.seconds:g} s, the same run and bitstreams, CPU ({os.cpu_count()} cores)")
    for name, r in report.items():
        print(f"  {name:<9} {r['requests_per_s']:8.1f} req/s   p50 {r['p50_ms']} ms   p99 {r['p99_ms']} ms   "
              f"{r['request_bytes']:.0f} bytes sent per {r['bitstream_bytes']:.0f}-byte bitstream   "
              f"ok {r['valid_ok']}/{r['valid_requests']}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
