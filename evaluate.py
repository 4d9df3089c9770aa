"""Rate-accuracy evaluation on real bitstreams (paper 4.2, Fig. 3-4, A.1-A.2).

    python evaluate.py sweep=logs/mini_d1/multiruns/<id>          # each job = one rate point
    python evaluate.py 'runs=[logs/mini_d1/runs/<a>,logs/mini_d1/runs/<b>]' limit=1000

For every rate point each test image is encoded to bytes and the server side decodes y_hat from those bytes
only. Methods: the run's scenario (neck path, e.g. ``d1``), ``reconstruction`` (g_s(y_hat) through the full
encoder), ``uncompressed`` (the upper bound) and the traditional-codec anchors. Metrics: real bpp
(8 * bytes / pixels) beside the likelihood estimate, zero-shot top-1, 5-way 1-shot accuracy, PSNR, MS-SSIM
(images over 160 px a side), and on an optional Kodak-style folder the full-size reconstruction quality.
Writes results.json (with BD-rate / BD-metric against ``bd_anchor``), results.csv and one PNG per metric.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as ms_ssim
from torchvision.transforms.functional import to_pil_image, to_tensor

import train
from latentbridge.atomic_io import atomic_write_bytes, atomic_write_json
from latentbridge.curves import bd_table, plot
from latentbridge.errors import ConfigError
from latentbridge.few_shot import few_shot_accuracy, sample_groups
from latentbridge.traditional_codecs import code_image, unavailable_reason
from models.bitstream import decode_latent, encode_image
from models.surrogate_loss import zero_shot_correct


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of [0, 1] images."""
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


def _ms_ssim(a: torch.Tensor, b: torch.Tensor) -> list[float] | None:
    if min(a.shape[-2:]) <= 160:
        return None
    return [float(ms_ssim(a[i : i + 1], b[i : i + 1], data_range=1.0)) for i in range(a.shape[0])]


def run_dirs(cfg: DictConfig) -> list[Path]:
    dirs = [Path(p) for p in cfg.runs]
    if cfg.sweep:
        sweep = Path(cfg.sweep)
        if not sweep.is_dir():
            raise ConfigError(f"sweep: {sweep} is not a directory")
        dirs += sorted(p.parent for p in sweep.glob("*/results.json"))
    if not dirs:
        raise ConfigError("runs / sweep: no run directories given (sweep=<multirun dir> or runs=[...])")
    for d in dirs:
        for f in (d / "results.json", d / ".hydra" / "config.yaml"):
            if not f.is_file():
                raise ConfigError(f"runs: {f} is missing (not a finished LatentBridge run directory)")
    return dirs


def load_rate_point(run_dir: Path, cfg: DictConfig) -> tuple[Any, Any, DictConfig, dict[str, Any]]:
    """The trained module of one run (best checkpoint) and its datamodule on the test split."""
    rcfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    results = json.loads((run_dir / "results.json").read_text())
    ckpt = results.get("best_checkpoint") or results.get("last_checkpoint")
    if not ckpt or not Path(ckpt).is_file():
        raise ConfigError(f"runs: {run_dir} has no checkpoint to evaluate ({ckpt})")
    rcfg.data.val_subset = cfg.limit
    rcfg.data.eval_batch_size = cfg.batch_size
    module = instantiate(rcfg.scenario)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    module.on_load_checkpoint(state)
    module.load_state_dict(state["state_dict"], strict=False)
    module.eval()
    datamodule = instantiate(rcfg.data)
    module.set_classes(datamodule.classnames, datamodule.templates)
    module.codec.model.update(force=True)
    return module, datamodule, rcfg, results


@torch.no_grad()
def evaluate_rate_point(module: Any, datamodule: Any, lmbda: float, groups: np.ndarray | None) -> dict[str, Any]:
    """Per-path embeddings and per-image rate / quality over the test split, through real bitstreams."""
    codec = module.codec
    emb: dict[str, list[torch.Tensor]] = {"method": [], "reconstruction": [], "uncompressed": []}
    labels, nbytes, est_bits, psnrs, ssims, pixels = [], 0, 0.0, [], [], 0
    for batch in datamodule.test_dataloader():
        if "label" not in batch:
            continue
        x = batch["image"]
        streams = [encode_image(codec, x[i : i + 1], lmbda) for i in range(x.shape[0])]
        y_hat = torch.cat([decode_latent(codec, s, lmbda)[0] for s in streams])  # server side: bytes only
        nbytes += sum(len(s) for s in streams)
        pixels += x.shape[0] * x.shape[-2] * x.shape[-1]
        est_bits += sum(-torch.log2(lk.clamp_min(1e-9)).sum().item() for lk in codec.latent(x).likelihoods.values())
        x_hat = codec.synthesize(y_hat)
        psnrs.append(psnr(x_hat, x))
        ssims += _ms_ssim(x_hat, x) or []
        emb["method"].append(module.method_embedding(y_hat))
        emb["reconstruction"].append(module.decoded_image_embedding(x_hat))
        emb["uncompressed"].append(module.teacher_embedding(batch["teacher_image"]))
        labels.append(batch["label"])
    y = torch.cat(labels)
    out = {
        "bpp": 8 * nbytes / pixels,
        "bpp_est": est_bits / pixels,
        "psnr": float(torch.cat(psnrs).mean()),
        "ms_ssim": float(np.mean(ssims)) if ssims else None,
        "images": len(y),
    }
    for path, e in emb.items():
        e = torch.cat(e)
        out[path] = {
            "top1": float(zero_shot_correct(e, module.text_emb, y).mean()),
            "few_shot": few_shot_accuracy(e, y, groups) if groups is not None else None,
        }
    return out


@torch.no_grad()
def evaluate_anchor(
    module: Any, datamodule: Any, name: str, quality: int, groups: np.ndarray | None, vtm: dict[str, Any]
) -> dict[str, Any]:
    """A traditional codec at one quality: decoded images through the full encoder (like Reconstruction)."""
    embs, labels, nbytes, pixels, psnrs = [], [], 0, 0, []
    for batch in datamodule.test_dataloader():
        if "label" not in batch:
            continue
        x = batch["image"]
        decoded = []
        for i in range(x.shape[0]):
            data, img = code_image(to_pil_image(x[i]), name, quality, vtm)
            nbytes += len(data)
            decoded.append(to_tensor(img))
        x_hat = torch.stack(decoded)
        pixels += x.shape[0] * x.shape[-2] * x.shape[-1]
        psnrs.append(psnr(x_hat, x))
        embs.append(module.decoded_image_embedding(x_hat))
        labels.append(batch["label"])
    e, y = torch.cat(embs), torch.cat(labels)
    return {
        "method": name,
        "quality": quality,
        "bpp": 8 * nbytes / pixels,
        "bpp_est": None,
        "top1": float(zero_shot_correct(e, module.text_emb, y).mean()),
        "few_shot": few_shot_accuracy(e, y, groups) if groups is not None else None,
        "psnr": float(torch.cat(psnrs).mean()),
        "ms_ssim": None,
        "images": len(y),
    }


@torch.no_grad()
def evaluate_kodak(module: Any, folder: Path, lmbda: float) -> dict[str, Any]:
    """Full-size reconstruction quality on a folder of images (any sizes; padded to 64 and cropped)."""
    from latentbridge.codec_cli import read_image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif"))
    if not files:
        raise ConfigError(f"kodak: no images in {folder}")
    nbytes = pixels = 0
    psnrs, ssims = [], []
    for f in files:
        x = read_image(f)
        data = encode_image(module.codec, x, lmbda)
        y_hat, bs = decode_latent(module.codec, data, lmbda)
        x_hat = module.codec.synthesize(y_hat)[..., : bs.height, : bs.width]
        nbytes, pixels = nbytes + len(data), pixels + bs.height * bs.width
        psnrs.append(float(psnr(x_hat, x)))
        ssims += _ms_ssim(x_hat, x) or []
    return {
        "bpp": 8 * nbytes / pixels,
        "psnr": float(np.mean(psnrs)),
        "ms_ssim": float(np.mean(ssims)) if ssims else None,
        "images": len(files),
    }


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    out_dir = Path(cfg.paths.output_dir)
    rows: list[dict[str, Any]] = []
    kodak_rows: list[dict[str, Any]] = []
    groups = None
    first = None
    console = Console()
    for rd in run_dirs(cfg):
        module, dm, rcfg, _ = load_rate_point(rd, cfg)
        lmbda = rcfg.codec.lmbda
        if groups is None and cfg.few_shot_groups and first is None:
            labels = np.concatenate([b["label"].numpy() for b in dm.test_dataloader() if "label" in b])
            try:
                groups = sample_groups(labels, int(cfg.few_shot_groups), seed=int(cfg.seed))
            except ValueError as e:
                console.print(f"[yellow]skipping 5-way 1-shot: {e}[/yellow]")
        console.print(f"rate point {rd} (lambda={lmbda})")
        r = evaluate_rate_point(module, dm, lmbda, groups)
        method = module.scenario_name
        common = {"lmbda": lmbda, "bpp": r["bpp"], "bpp_est": r["bpp_est"], "images": r["images"], "run": str(rd)}
        rows.append({"method": method, **common, **r["method"], "psnr": r["psnr"], "ms_ssim": r["ms_ssim"]})
        rows.append(
            {"method": "reconstruction", **common, **r["reconstruction"], "psnr": r["psnr"], "ms_ssim": r["ms_ssim"]}
        )
        if first is None:
            first = (module, dm)
            rows.append(
                {
                    "method": "uncompressed",
                    "bpp": 24.0,
                    "bpp_est": None,
                    "images": r["images"],
                    **r["uncompressed"],
                    "psnr": None,
                    "ms_ssim": None,
                }
            )
        if cfg.kodak:
            kodak_rows.append(
                {"method": rcfg.codec.name, "lmbda": lmbda, **evaluate_kodak(module, Path(cfg.kodak), lmbda)}
            )
    module, dm = first
    vtm = OmegaConf.to_container(cfg.anchors.get("vtm") or {}, resolve=True)
    for name, qualities in cfg.anchors.items():
        qs = vtm.get("qps", []) if name == "vtm" else list(qualities or [])
        reason = unavailable_reason(name, vtm)
        if reason:
            if qs:
                console.print(f"[yellow]skipping anchor {name}: {reason}[/yellow]")
            continue
        for q in qs:
            rows.append(evaluate_anchor(module, dm, name, int(q), groups, vtm))

    results = {"rows": rows, "kodak": kodak_rows, "bd": {}, "plots": {}}
    for metric in ("top1", "few_shot", "psnr", "ms_ssim"):
        png = plot(rows, metric, out_dir / f"rate_{metric}.png")
        if png:
            results["plots"][metric] = str(png)
        bd = bd_table(rows, metric, cfg.bd_anchor)
        if bd:
            results["bd"][metric] = bd
    atomic_write_json(out_dir / "results.json", results)
    write_csv(out_dir / "results.csv", rows)
    print_table(rows, console)
    if cfg.wandb:
        log_wandb(cfg, rows, results)
    console.print(f"results: {out_dir / 'results.json'} and results.csv; plots: {', '.join(results['plots'].values())}")
    return results


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys = ["method", "lmbda", "quality", "bpp", "bpp_est", "top1", "few_shot", "psnr", "ms_ssim", "images", "run"]
    keys += sorted({k for r in rows for k in r} - set(keys))  # e.g. MLLM task scores (mllm_evaluate.py)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def print_table(rows: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="rate-accuracy (real bitstreams)")
    for col in ("method", "lambda / q", "bpp", "bpp est.", "top-1", "5-way 1-shot", "PSNR"):
        table.add_column(col, justify="left" if col == "method" else "right")
    fmt = lambda v, f="{:.4f}": "" if v is None else f.format(v)  # noqa: E731
    for r in rows:
        table.add_row(
            r["method"],
            fmt(r.get("lmbda", r.get("quality")), "{}"),
            fmt(r["bpp"]),
            fmt(r.get("bpp_est")),
            fmt(r["top1"]),
            fmt(r.get("few_shot")),
            fmt(r.get("psnr"), "{:.2f}"),
        )
    console.print(table)


def log_wandb(cfg: DictConfig, rows: list[dict[str, Any]], results: dict[str, Any]) -> None:
    import wandb

    run = wandb.init(
        project="latentbridge",
        name="evaluate",
        dir=cfg.paths.output_dir,
        mode="offline" if train._wandb_offline() else "online",
        reinit="finish_previous",
    )
    keys = ["method", "lmbda", "quality", "bpp", "bpp_est", "top1", "few_shot", "psnr", "ms_ssim"]
    table = wandb.Table(columns=keys, data=[[r.get(k) for k in keys] for r in rows])
    run.log({"rate_accuracy": table, **{f"plot/{m}": wandb.Image(p) for m, p in results["plots"].items()}})
    run.finish()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    train.run_cli(evaluate, cfg)


if __name__ == "__main__":
    main()
