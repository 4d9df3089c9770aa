"""Rate-accuracy evaluation on real bitstreams (paper 4.2, Fig. 3-4, A.1-A.2).

    latentbridge-evaluate sweep=logs/mini_d1/multiruns/<id>          # each job = one rate point
    latentbridge-evaluate 'runs=[logs/mini_d1/runs/<a>,logs/mini_d1/runs/<b>]' limit=1000

Every loop is Lightning's ``trainer.test`` (``evaluate.trainer``: accelerator, devices, precision): for every
rate point each test image is encoded to bytes and the server side decodes y_hat from those bytes
only. Methods: the run's scenario (neck path, e.g. ``d1``), ``reconstruction`` (g_s(y_hat) through the full
encoder), ``uncompressed`` (the upper bound) and the traditional-codec anchors. Metrics: real bpp
(8 * bytes / pixels) beside the likelihood estimate, zero-shot top-1, 5-way 1-shot accuracy, PSNR, MS-SSIM
(images over 160 px a side), and on an optional Kodak-style folder the full-size reconstruction quality.
Writes results.json (with BD-rate / BD-metric against ``bd_anchor``), results.csv and one PNG per metric.

``mosaic=m`` (paper-2 runs and anchors) codes m x m mosaics of the test images, each image paying its share of
its mosaic's bytes, so that no codec's per-file header decides a comparison of small images.
A rate-conditioned run (d1_rates) is evaluated at every rate it covers (or of ``rates``, lambdas inside its range).
A variable-rate run (paper 2) is loaded once and evaluated at every rate of ``rates`` (lambdas inside its ladder, or
``q=<point>``; null: 8 points log-uniform over the ladder): one row per rate, each from real bitstreams that carry
their gain. A fixed-rate model of such a codec (``scenario.fixed_rate``) is evaluated at its own rate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from latentbridge.analysis.curves import bd_table, plot
from latentbridge.analysis.report import print_table, write_csv
from latentbridge.codecs.bitstream import decode_latent, encode_image
from latentbridge.codecs.traditional import unavailable_reason
from latentbridge.core.atomic_io import atomic_write_json
from latentbridge.core.config import wandb_offline
from latentbridge.core.errors import ConfigError
from latentbridge.core.images import read_image
from latentbridge.metrics.image_quality import ms_ssim, psnr
from latentbridge.runs import FinishedRun, open_run


def run_dirs(cfg: DictConfig) -> list[Path]:
    """The run directories to evaluate: ``runs`` and every finished job of ``sweep``."""
    dirs = [Path(p) for p in cfg.runs]
    if cfg.sweep:
        sweep = Path(cfg.sweep)
        if not sweep.is_dir():
            raise ConfigError(f"sweep: {sweep} is not a directory")
        dirs += sorted(p.parent for p in sweep.glob("*/results.json"))
    if not dirs:
        raise ConfigError("runs / sweep: no run directories given (sweep=<multirun dir> or runs=[...])")
    return dirs


def tester(cfg: DictConfig) -> Any:
    """A Lightning Trainer for ``trainer.test``: the device settings of ``cfg.trainer``, nothing written."""
    import lightning as L

    settings = OmegaConf.to_container(cfg.trainer, resolve=True) if cfg.get("trainer") else {}
    return L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=bool(settings.pop("enable_progress_bar", True)),
        **settings,
    )


def open_rate_point(run_dir: Path, cfg: DictConfig) -> tuple[FinishedRun, Any]:
    """A finished run's module and its datamodule on the test split (``limit`` images, ``batch_size``)."""
    from hydra.utils import instantiate

    run = open_run(run_dir, "runs", data={"test_subset": cfg.limit, "eval_batch_size": cfg.batch_size})
    datamodule = instantiate(run.config.data)
    run.module.set_classes(datamodule.classnames, datamodule.templates)
    return run, datamodule


def rate_points(run: FinishedRun, rates: list[Any] | None) -> list[float | None]:
    """The rate points q to evaluate a run at: [None] for a fixed-rate codec (its own rate point), the run's fixed q
    for a fixed-rate model of a variable-rate codec, else ``rates`` (lambdas or ``q=...``; default 8 log-uniform)."""
    module = run.module
    if hasattr(module, "eval_rate"):  # one neck for every rate (d1_rates): each rate it covers, or of ``rates``
        return [module.check_rate(float(r), "rates") for r in rates] if rates else list(module.rates)
    if not module.codec.variable_rate:
        return [None]
    if getattr(module, "fixed_q", None) is not None:
        return [module.fixed_q]
    ladder = module.codec.ladder
    return [ladder.resolve(r) for r in rates] if rates else [i / 7 for i in range(8)]


def evaluate_rate_point(run: FinishedRun, datamodule: Any, cfg: DictConfig, q: float | None = None) -> dict[str, Any]:
    """``trainer.test`` of one rate point through real bitstreams: per-path accuracy, rate, quality. ``q``: the rate
    point of a variable-rate run (its edge codes every image at gain g(q))."""
    if q is not None and hasattr(run.module, "eval_rate"):
        run.module.eval_rate = q
    elif q is not None:
        run.module.eval_q = q
    mosaic = int(cfg.get("mosaic") or 1)
    if mosaic > 1 and not hasattr(run.module, "mosaic"):
        raise ConfigError(
            f"mosaic: {mosaic} needs a pixel-path run (paper 2); {run.module.scenario_name}'s neck reads a fixed "
            "latent grid"
        )
    if hasattr(run.module, "mosaic") and run.module.mosaic != mosaic:  # one protocol: as trained and validated
        raise ConfigError(
            f"mosaic: {mosaic}, but {run.dir} was trained and validated on {run.module.mosaic}x{run.module.mosaic} "
            f"mosaics (scenario.mosaic); evaluate it with mosaic={run.module.mosaic}"
        )
    run.module.configure_evaluation(int(cfg.few_shot_groups or 0), int(cfg.seed))
    tester(cfg).test(run.module, datamodule=datamodule, verbose=False)
    return run.module.test_results


def evaluate_anchor(run: FinishedRun, datamodule: Any, name: str, quality: int, cfg: DictConfig) -> dict[str, Any]:
    """``trainer.test`` of a traditional codec at one quality through the run's encoder (like Reconstruction)."""
    from lightning_modules.anchor_evaluation import AnchorEvaluation

    vtm_node = (cfg.get("anchors") or {}).get("vtm")  # reproduce's settings carry no anchors block
    vtm = OmegaConf.to_container(vtm_node, resolve=True) if vtm_node else {}
    mosaic = int(cfg.get("mosaic") or 1)
    module = AnchorEvaluation(run.module, name, quality, vtm, int(cfg.few_shot_groups or 0), int(cfg.seed), mosaic)
    tester(cfg).test(module, datamodule=datamodule, verbose=False)
    r = module.test_results
    return {
        "method": name,
        "quality": quality,
        "bpp": r["bpp"],
        "bpp_est": None,
        **r["method"],
        "psnr": r["psnr"],
        "ms_ssim": r["ms_ssim"],
        "images": r["images"],
    }


@torch.no_grad()
def evaluate_kodak(run: FinishedRun, folder: Path, q: float | None = None) -> dict[str, Any]:
    """Full-size reconstruction quality on a folder of images (any sizes; padded and cropped). A variable-rate run
    codes at rate point q (after its edge: the pre-editor)."""
    if hasattr(run.module, "eval_rate"):
        raise ConfigError(f"kodak: {run.dir} is a rate-conditioned run; evaluate its codecs' quality on their own runs")
    codec = run.module.codec
    rate = run.lmbda if q is None else codec.ladder.gain(q)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif"))
    if not files:
        raise ConfigError(f"kodak: no images in {folder}")
    nbytes = pixels = 0
    psnrs, ssims = [], []
    for f in files:
        x = read_image(f).to(run.module.device)
        data = encode_image(codec, x if q is None else run.module.edge(x, q), rate)
        y_hat, bs = decode_latent(codec, data, run.lmbda)
        x_hat = codec.synthesize(y_hat)[..., : bs.height, : bs.width]
        nbytes, pixels = nbytes + len(data), pixels + bs.height * bs.width
        psnrs.append(float(psnr(x_hat, x)[0]))
        quality = ms_ssim(x_hat, x)
        ssims += [] if quality is None else quality.tolist()
    return {
        "bpp": 8 * nbytes / pixels,
        "psnr": sum(psnrs) / len(psnrs),
        "ms_ssim": sum(ssims) / len(ssims) if ssims else None,
        "images": len(files),
    }


def rows_of(
    method: str, result: dict[str, Any], run: str, lmbda: float | None, reconstruction: str, q: float | None = None
) -> list[dict]:
    """The curve rows of one evaluated rate point: the method's path and (paper 1) the Reconstruction path. A
    variable-rate point also carries its q (``lmbda`` is then lambda(q) of the ladder)."""
    common = {"lmbda": lmbda, "bpp": result["bpp"], "bpp_est": result["bpp_est"], "images": result["images"]}
    if q is not None:
        common["q"] = q
    quality = {"psnr": result["psnr"], "ms_ssim": result["ms_ssim"]}
    rows = [{"method": method, **common, **result["method"], **quality, "run": run}]
    if "reconstruction" in result:
        rows.append({"method": reconstruction, **common, **result["reconstruction"], **quality, "run": run})
    return rows


def lmbda_at(run: FinishedRun, q: float | None) -> float | None:
    """The lambda a row is filed under: the run's rate point, or lambda(q) of a variable-rate ladder."""
    if q is None or hasattr(run.module, "eval_rate"):  # a rate-conditioned run's points are lambdas already
        return run.lmbda if q is None else q
    return run.module.codec.ladder.lmbda(q)


def uncompressed_row(result: dict[str, Any]) -> dict[str, Any]:
    """The upper bound (24 bpp: 8-bit RGB) from an evaluated rate point."""
    return {
        "method": "uncompressed",
        "bpp": 24.0,
        "bpp_est": None,
        "images": result["images"],
        **result["uncompressed"],
        "psnr": None,
        "ms_ssim": None,
    }


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Every rate point and anchor, then curves, BD tables, results.json / results.csv (and wandb)."""
    out_dir = Path(cfg.paths.output_dir)
    console = Console()
    rows: list[dict[str, Any]] = []
    kodak_rows: list[dict[str, Any]] = []
    first: tuple[FinishedRun, Any] | None = None
    for rd in run_dirs(cfg):
        run, dm = open_rate_point(rd, cfg)
        for q in rate_points(run, list(cfg.get("rates") or [])):
            lmbda = lmbda_at(run, q)
            at_q = "" if q is None or hasattr(run.module, "eval_rate") else f", q={q:.4f}"
            console.print(f"rate point {rd} (lambda={lmbda:g}{at_q})")
            r = evaluate_rate_point(run, dm, cfg, q)
            if r.get("few_shot_error"):
                console.print(f"[yellow]skipping 5-way 1-shot: {r['few_shot_error']}[/yellow]")
            q_column = None if hasattr(run.module, "eval_rate") else q
            rows += rows_of(run.module.scenario_name, r, str(rd), lmbda, "reconstruction", q_column)
            if first is None:
                first = (run, dm)
                rows.append(uncompressed_row(r))
            if cfg.kodak:
                kodak_rows.append(
                    {"method": run.config.codec.name, "lmbda": lmbda, **evaluate_kodak(run, Path(cfg.kodak), q)}
                )
    run, dm = first
    vtm = OmegaConf.to_container(cfg.anchors.get("vtm") or {}, resolve=True)
    for name, qualities in cfg.anchors.items():
        qs = vtm.get("qps", []) if name == "vtm" else list(qualities or [])
        reason = unavailable_reason(name, vtm)
        if reason:
            if qs:
                console.print(f"[yellow]skipping anchor {name}: {reason}[/yellow]")
            continue
        for q in qs:
            rows.append(evaluate_anchor(run, dm, name, int(q), cfg))

    results = {"rows": rows, "kodak": kodak_rows, "bd": {}, "plots": {}}
    if rank_zero_only.rank != 0:  # under DDP every rank holds the same rows; one writes them
        return results
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


def log_wandb(cfg: DictConfig, rows: list[dict[str, Any]], results: dict[str, Any]) -> None:
    import wandb

    run = wandb.init(
        project="latentbridge",
        name="evaluate",
        dir=cfg.paths.output_dir,
        mode="offline" if wandb_offline() else "online",
        reinit="finish_previous",
    )
    keys = ["method", "lmbda", "quality", "bpp", "bpp_est", "top1", "few_shot", "psnr", "ms_ssim"]
    table = wandb.Table(columns=keys, data=[[r.get(k) for k in keys] for r in rows])
    run.log({"rate_accuracy": table, **{f"plot/{m}": wandb.Image(p) for m, p in results["plots"].items()}})
    run.finish()
