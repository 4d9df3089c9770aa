"""Training throughput of a scenario on random weights: samples/s and MFU, every variant side by side in one run.

    python scripts/benchmark_train.py                                  # experiment=paper_d1, this machine's device
    python scripts/benchmark_train.py --batch 64 --steps 30 --variants uncached-fp32 cached-bf16 cached-bf16-compile
    python scripts/benchmark_train.py --experiment mini_d1 --batch 64 --variants cached-fp32 --fit-steps 150

Variants: ``{uncached|cached}-{fp32|bf16}[-compile]``. *uncached* runs what a d1 step runs without the latent cache
(codec g_a + entropy model, teacher C(x), transform-neck, C' forward and backward); *cached* reads y_hat and C(x)
as the latent cache serves them (``datamodules/latent_cache.py``) and runs only the transform-neck and C'. Batches
are prepared on the device beforehand: these are the model's figures, data loading is measured separately below.
Adam is fused on CUDA. ``bf16`` is ``torch.autocast(bfloat16)`` as ``trainer.precision=bf16-mixed`` runs it (the
codec's entropy model stays in float32); ``compile`` is ``scenario.compile=true``.

MFU = model FLOPs per step (``torch.utils.flop_counter``, forward + backward, attention included) x steps/s /
the device's peak dense bf16 FLOP/s (known GPUs only; CPUs print n/a). The read-back section times serving one
epoch's y_hat from the litdata cache (float16) against entropy-decoding the same latents from bitstreams.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import nullcontext
from typing import Any

import torch

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "RTX 4090": 165e12, "GH200": 989e12}


def peak_flops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        import platform

        return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)", None
    name = torch.cuda.get_device_name(device)
    return name, next((v for k, v in PEAK_BF16.items() if k in name), None)


def build(experiment: str, batch: int, overrides: list[str]) -> tuple[Any, Any]:
    from hydra import compose, initialize_config_dir

    from latentbridge.cli import conf_dir
    from latentbridge.core.config import register_resolvers
    from latentbridge.runs import build_scenario

    register_resolvers()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"experiment={experiment}",
                "codec.checkpoint=null",
                "codec.zoo_quality=null",
                "vision.pretrained=null",
                "vision.checkpoint=null",
                "data=synthetic",
                f"data.image_size={256 if experiment.startswith('paper') else 32}",
                f"data.batch_size={batch}",
                "paths.output_dir=/tmp/benchmark_train",
                *overrides,
            ],
        )
        torch.manual_seed(0)
        return cfg, build_scenario(cfg)


def make_batch(module: Any, cfg: Any, batch: int, device: torch.device) -> dict[str, Any]:
    """A batch as the latent cache serves it (label, y_hat in float16, C(x)) plus the images it came from."""
    size, teacher = int(cfg.data.image_size), int(cfg.vision.image_size)
    g = torch.Generator().manual_seed(0)
    out = {
        "image": torch.rand(batch, 3, size, size, generator=g),
        "teacher_image": torch.randn(batch, 3, teacher, teacher, generator=g),
        "label": torch.randint(0, 10, (batch,), generator=g),
    }
    out = {k: v.to(device) for k, v in out.items()}
    with torch.no_grad():
        cached = module.cache_batch(out, "train")
    return {"label": out["label"], "y_hat": cached["y_hat"].half(), "target": cached["target"], "pixels": out}


def step_fn(module: Any, batch: dict[str, Any], cached: bool, bf16: bool, opt: torch.optim.Optimizer) -> Any:
    inputs = {k: v for k, v in batch.items() if k in ("label", "y_hat", "target")} if cached else batch["pixels"]
    device_type = batch["label"].device.type
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def step() -> None:
        with autocast:
            loss = module.training_loss(inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def measure(args: argparse.Namespace, variant: str, device: torch.device) -> dict[str, Any]:
    from torch.utils.flop_counter import FlopCounterMode

    cached, bf16, compiled = variant.startswith("cached"), "bf16" in variant, variant.endswith("compile")
    cfg, module = build(args.experiment, args.batch, ["loss.e1=0", f"loss.e2={10**6}"])  # alpha*CE + beta*dist
    module = module.to(device).train()
    module.text_emb = torch.nn.functional.normalize(torch.randn(10, module.vision.embed_dim, device=device), dim=-1)
    if compiled:
        module.hparams["compile"] = True
        module.configure_model()
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4, fused=device.type == "cuda")
    batch = make_batch(module, cfg, args.batch, device)
    step = step_fn(module, batch, cached, bf16, opt)
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    for _ in range(args.warmup):
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    elapsed = time.perf_counter() - started
    return {
        "variant": variant,
        "step_s": elapsed / args.steps,
        "samples_s": args.steps * args.batch / elapsed,
        "flops": flops,
    }


def read_back(args: argparse.Namespace) -> dict[str, float]:
    """One pass over ``args.readback`` images: y_hat (float16) from a litdata cache vs decoded from bitstreams."""
    from litdata import StreamingDataset
    from litdata.streaming.writer import BinaryWriter

    from latentbridge.codecs.bitstream import decode_latent, encode_image

    cfg, module = build(args.experiment, 1, [])
    codec = module.codec.eval()
    codec.model.update(force=True)
    size = int(cfg.data.image_size)
    x = torch.rand(args.readback, 3, size, size, generator=torch.Generator().manual_seed(1))
    streams = [encode_image(codec, x[i : i + 1], codec.lmbda) for i in range(len(x))]
    with torch.no_grad():
        y_hat = torch.cat([codec.latent(x[i : i + 1]).y_hat for i in range(len(x))]).half()
    with tempfile.TemporaryDirectory() as tmp:
        writer = BinaryWriter(tmp, chunk_bytes="64MB")
        for i in range(len(x)):
            writer.add_item(i, {"index": i, "y_hat": y_hat[i].clone()})
        writer.done()
        writer.merge()
        ds = StreamingDataset(tmp)
        started = time.perf_counter()
        for i in range(len(ds)):
            ds[i]["y_hat"].float()
        cache_s = time.perf_counter() - started
    started = time.perf_counter()
    for s in streams:
        decode_latent(codec, s, codec.lmbda)
    decode_s = time.perf_counter() - started
    return {"cache": len(x) / cache_s, "bitstream": len(x) / decode_s}


def fit_steps(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Steps/s of real ``Trainer.fit`` runs of cached mini d1 (train.py's objects: the latent cache, Lightning's loop,
    logging, ExactResume), the cache read by litdata item by item and from memory, side by side on one cache."""
    import lightning as L
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from latentbridge.cli import conf_dir
    from latentbridge.core.config import register_resolvers
    from latentbridge.runs import build_scenario
    from latentbridge.workflows.train import build_callbacks, set_epoch_length, with_latent_cache

    class StepTimer(L.Callback):
        """Times the training steps after the first ``skip``."""

        def __init__(self, skip: int) -> None:
            self.skip, self.started, self.ended, self.steps = skip, 0.0, 0.0, 0

        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, i: int) -> None:
            if i == self.skip:
                self.started = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, module: Any, out: Any, batch: Any, i: int) -> None:
            if i >= self.skip:
                self.steps, self.ended = self.steps + 1, time.perf_counter()

        def result(self) -> dict[str, float]:
            elapsed = self.ended - self.started
            return {"steps_s": self.steps / elapsed, "ms_step": 1e3 * elapsed / self.steps, "steps": self.steps}

    register_resolvers()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("false", "true"):
            overrides = ["experiment=mini_d1", "data=synthetic", "codec.checkpoint=null", "vision.checkpoint=null",
                         "logger=none", "callbacks.progress_bar=null", "trainer.enable_model_summary=false",
                         f"data.train_size={args.batch * (args.fit_steps + 10)}", "data.val_size=64",
                         f"data.batch_size={args.batch}", "trainer.max_epochs=1", "epoch_samples=null",
                         "trainer.limit_val_batches=0", "+trainer.num_sanity_val_steps=0", "data.cache=true",
                         f"data.cache_dir={tmp}/cache", f"data.cache_in_memory={mode}", f"paths.output_dir={tmp}/run",
                         "data.train_subset=null", "data.val_subset=null"]  # fmt: skip
            with initialize_config_dir(str(conf_dir()), version_base="1.3"):
                cfg = compose("train", overrides=overrides)
            L.seed_everything(0, verbose=False)
            dm, module = instantiate(cfg.data), build_scenario(cfg)
            dm = with_latent_cache(cfg, dm, module)
            trainer = instantiate(cfg.trainer, callbacks=build_callbacks(cfg, module, False), logger=False)
            set_epoch_length(cfg, dm, trainer)
            dm.prepare_data()  # the first mode builds the cache, both read it
            timer = StepTimer(10)
            trainer.callbacks.append(timer)
            trainer.fit(module, datamodule=dm)
            rows.append({"loader": "in memory" if mode == "true" else "litdata, per item", **timer.result()})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", default="paper_d1")
    parser.add_argument("--batch", type=int, default=None, help="default: 64 on CUDA, 2 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on CUDA, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 5 on CUDA, 1 on CPU)")
    parser.add_argument("--variants", nargs="+", default=None)
    parser.add_argument("--readback", type=int, default=64, help="images for the read-back comparison (0: skip)")
    parser.add_argument(
        "--fit-steps",
        type=int,
        default=0,
        help="also time this many steps of real cached mini d1 fits, litdata vs in memory (0: skip)",
    )
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    args.batch = args.batch or (64 if gpu else 2)
    args.steps = args.steps or (20 if gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    if args.variants is None:
        args.variants = (
            ["uncached-fp32", "cached-fp32", "uncached-bf16", "cached-bf16", "cached-bf16-compile"]
            if gpu
            else ["uncached-fp32", "cached-fp32"]
        )
    name, peak = peak_flops(device)
    print(f"device: {name}; experiment={args.experiment} on random weights, batch {args.batch}, {args.steps} steps")
    rows = [measure(args, v, device) for v in args.variants]
    base = rows[0]["samples_s"]
    print(
        f"{'variant':<22}{'samples/s':>11}{'ms/step':>10}{'GFLOP/sample':>14}{'MFU':>8}{'vs ' + rows[0]['variant']:>22}"
    )
    for r in rows:
        mfu = "n/a" if peak is None else f"{r['flops'] / r['step_s'] / peak:.1%}"
        print(
            f"{r['variant']:<22}{r['samples_s']:>11.1f}{1e3 * r['step_s']:>10.1f}"
            f"{r['flops'] / args.batch / 1e9:>14.1f}{mfu:>8}{r['samples_s'] / base:>21.2f}x"
        )
    if args.fit_steps:
        fits = fit_steps(args)
        print(f"real Trainer.fit of cached mini d1 (synthetic images, random mini codec and teacher), batch "
              f"{args.batch}, {fits[0]['steps']} timed steps each:")  # fmt: skip
        for r in fits:
            print(f"  cache read {r['loader']:<18} {r['steps_s']:6.2f} steps/s  {r['ms_step']:6.1f} ms/step"
                  f"  {r['steps_s'] / fits[0]['steps_s']:.2f}x")  # fmt: skip
    if args.readback:
        rb = read_back(args)
        print(
            f"read-back of y_hat, {args.readback} images: litdata float16 {rb['cache']:.0f} img/s, "
            f"bitstream decode {rb['bitstream']:.0f} img/s ({rb['cache'] / rb['bitstream']:.1f}x)"
        )


if __name__ == "__main__":
    main()
