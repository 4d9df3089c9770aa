"""Server-side cost per image (paper 4.4): the neck path against the Reconstruction path, side by side in one run.

    python scripts/benchmark_server.py                          # mini setup (random weights are fine for timing)
    python scripts/benchmark_server.py experiment=paper_d1 codec.checkpoint=null vision.pretrained=null \
        +bench.device=cuda +bench.repeats=50                    # paper configuration, on a GPU

neck path:           bytes -> entropy decode y_hat -> transform-neck -> encoder from block k -> embedding
Reconstruction path: bytes -> entropy decode y_hat -> g_s -> resize/normalize -> full encoder -> embedding
Also the entropy coder's encode and decode times. Prints medians over ``bench.repeats`` and the ratio.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from omegaconf import DictConfig

from latentbridge import routes
from latentbridge.cli import hydra_command
from latentbridge.codecs.bitstream import decode_latent, encode_image
from latentbridge.runs import build_scenario


def median_ms(fn: Callable[[], object], repeats: int, device: str) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def benchmark(cfg: DictConfig) -> None:
    bench = cfg.get("bench") or {}
    device, repeats = str(bench.get("device", "cpu")), int(bench.get("repeats", 20))
    torch.manual_seed(0)
    module = build_scenario(cfg).eval()
    codec, vision, k = module.codec, module.vision, module.skip_blocks
    codec.model.update(force=True)
    size = int(cfg.data.image_size)
    x = torch.rand(1, 3, size, size)
    lmbda = cfg.codec.get("lmbda")
    data = encode_image(codec, x, lmbda)
    # the edge side: g_a + range coder, timed on the CPU before the server parts move to ``device``
    rows = {"entropy encode (g_a + range coder)": median_ms(lambda: encode_image(codec, x, lmbda), repeats, "cpu")}
    module.to(device)

    @torch.no_grad()
    def neck_path() -> torch.Tensor:
        return routes.neck(module, decode_latent(codec, data, lmbda)[0])

    @torch.no_grad()
    def reconstruction_path() -> torch.Tensor:
        return routes.reconstruction(module, decode_latent(codec, data, lmbda)[0])

    rows["entropy decode (range coder + h_s)"] = median_ms(lambda: decode_latent(codec, data, lmbda), repeats, device)
    rows["neck path"] = median_ms(neck_path, repeats, device)
    rows["Reconstruction path"] = median_ms(reconstruction_path, repeats, device)
    print(
        f"server-side cost per image, {size}x{size}, codec {codec.name}, encoder {vision.name}, k={k}, "
        f"device {device}, median of {repeats}"
    )
    for name, ms in rows.items():
        print(f"  {name:38s} {ms:9.2f} ms")
    print(f"  Reconstruction / neck time ratio:      {rows['Reconstruction path'] / rows['neck path']:.2f}x")
    print(f"  bitstream: {len(data)} bytes = {8 * len(data) / size**2:.4f} bpp")


if __name__ == "__main__":
    hydra_command("train", benchmark)()
