"""Server-side cost (paper 4.4): the neck path against the Reconstruction path, interleaved, on real images.

    python scripts/benchmark_server.py                          # mini setup: Fashion-MNIST validation images
    python scripts/benchmark_server.py experiment=paper_d1 data.root=/data/imagenet codec.checkpoint=... \
        +bench.device=cuda +bench.repeats=50                    # paper configuration, on a GPU

neck path:           bytes -> entropy decode y_hat -> transform-neck -> encoder from block k -> embedding
Reconstruction path: bytes -> entropy decode y_hat -> g_s -> resize/normalize -> full encoder -> embedding
Paper 2 (experiment=mini_p2 / paper_p2_llava): the edge (pre-editor + g_a + entropy coding) and the server's plain
hyperprior decode (bytes -> y_hat -> g_s), at rate point ``bench.q`` (default 0.5).

At batch 1 (latency) and batch ``bench.batch`` (throughput, default 32): the full paths from the bytes, and the
networks alone from a decoded y_hat (the entropy decoder is the same in both paths and runs on the CPU, so it
dilutes the full paths' ratio). The two paths alternate within every repeat (and which goes first alternates), so
a machine slowing down or speeding up during the run affects both alike; medians over ``bench.repeats``. Images
are the first of the validation split (``bench.images`` of them); random weights are fine for timing.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from latentbridge import routes
from latentbridge.cli import hydra_command
from latentbridge.codecs.bitstream import decode_latent, encode_batch
from latentbridge.runs import build_scenario


def interleaved_ms(paths: dict[str, Callable[[], object]], repeats: int, device: str) -> dict[str, float]:
    """Median milliseconds of each path, the paths alternating (order reversed every other repeat)."""

    def timed(fn: Callable[[], object]) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - t) * 1e3

    names = list(paths)
    for name in names:  # warm-up
        paths[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            times[name].append(timed(paths[name]))
    return {n: statistics.median(t) for n, t in times.items()}


def benchmark(cfg: DictConfig) -> None:
    bench = cfg.get("bench") or {}
    device, repeats = str(bench.get("device", "cpu")), int(bench.get("repeats", 20))
    batch = int(bench.get("batch", 32))
    torch.manual_seed(0)
    module = build_scenario(cfg).eval()
    if hasattr(module, "edge"):  # paper 2: the pixel path, no neck
        return benchmark_pixel_path(module, cfg, device, repeats, batch, float(bench.get("q", 0.5)))
    codec, vision, k, lmbda = module.codec, module.vision, module.skip_blocks, cfg.codec.get("lmbda")
    codec.model.update(force=True)
    datamodule = instantiate(cfg.data)
    images = next(iter(datamodule.split_dataloader("val", max(batch, int(bench.get("images", batch))))))["image"]
    x = images[:batch]
    streams, _ = encode_batch(codec, x, lmbda)
    module.to(device)
    print(
        f"server-side cost, {x.shape[-1]}x{x.shape[-2]} validation images, codec {codec.name}, encoder {vision.name}, "
        f"k={k}, device {device}, median of {repeats} interleaved repeats"
    )
    print(f"  bitstreams: {sum(map(len, streams)) / len(streams):.0f} bytes per image on average")
    for n in (1, batch):
        data = streams[:n]

        def decode(data: list[bytes] = data) -> torch.Tensor:
            return torch.cat([decode_latent(codec, s, lmbda)[0] for s in data]).to(device)

        with torch.no_grad():
            y_hat = decode()
            full = interleaved_ms(
                {
                    "neck": lambda: routes.neck(module, decode()),
                    "reconstruction": lambda: routes.reconstruction(module, decode()),
                    "entropy decode": decode,
                },
                repeats,
                device,
            )
            nets = interleaved_ms(
                {
                    "neck": lambda y=y_hat: routes.neck(module, y),
                    "reconstruction": lambda y=y_hat: routes.reconstruction(module, y),
                },
                repeats,
                device,
            )
        print(f"  batch {n}:")
        print(f"    entropy decode (range coder + h_s)   {full['entropy decode']:9.2f} ms")
        for label, r in (("from the bytes", full), ("networks only", nets)):
            print(
                f"    {label:15s} neck {r['neck']:9.2f} ms   Reconstruction {r['reconstruction']:9.2f} ms   "
                f"Reconstruction / neck {r['reconstruction'] / r['neck']:.2f}x   "
                f"({1e3 * n / r['neck']:.0f} vs {1e3 * n / r['reconstruction']:.0f} images/s)"
            )


def benchmark_pixel_path(module: torch.nn.Module, cfg: DictConfig, device: str, repeats: int, batch: int, q: float):
    """Paper 2: the edge (pre-editor + encoder + entropy coding) and the server's plain hyperprior decode (bytes ->
    y_hat -> g_s -> x_hat), interleaved, at rate point q; the LVLM's own vision tower follows unchanged."""
    codec = module.codec
    codec.model.update(force=True)
    gain = codec.ladder.gain(q)
    images = next(iter(instantiate(cfg.data).split_dataloader("val", batch)))["image"][:batch]
    module.to(device)
    x = images.to(device)
    print(
        f"paper 2 edge and server, {x.shape[-1]}x{x.shape[-2]} validation images, codec {codec.name} at q={q}, "
        f"editor {type(module.editor).__name__}, device {device}, median of {repeats} interleaved repeats"
    )
    with torch.no_grad():
        streams, _ = encode_batch(codec, module.edge(x, q).cpu(), gain)
        print(f"  bitstreams: {sum(map(len, streams)) / len(streams):.0f} bytes per image on average")
        for n in (1, batch):

            def edge(n: int = n) -> object:
                return encode_batch(codec, module.edge(x[:n], q), gain)

            def server(n: int = n) -> torch.Tensor:
                return codec.synthesize(torch.cat([decode_latent(codec, s)[0] for s in streams[:n]]).to(device))

            r = interleaved_ms({"edge": edge, "server": server}, repeats, device)
            print(
                f"  batch {n}: edge (P + g_a + entropy coding) {r['edge']:9.2f} ms ({1e3 * n / r['edge']:.0f} images/s)"
                f"   server decode (entropy decode + g_s) {r['server']:9.2f} ms ({1e3 * n / r['server']:.0f} images/s)"
            )


if __name__ == "__main__":
    hydra_command("train", benchmark)()
