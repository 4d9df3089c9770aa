"""The plan's dashboard on wandb (issue: cluster scale): every run of a plan in one group, and the plan's figures
(Fig. 3 rate-accuracy, Fig. 4 rate-PSNR, ...) as wandb tables + line plots that gain points as evaluations finish.

One wandb run of the group, ``figures`` (job type ``report``, a fixed id derived from the plan's output directory),
is resumed by every evaluation job and re-logs each figure from every evaluation finished so far, so a user
watching the dashboard sees the curves being drawn; the report job adds the PNGs and the findings. Jobs of one
plan take turns on it (a file lock). Offline without an API key (``wandb sync <out_dir>/wandb/offline-run-*``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from latentbridge.core.config import wandb_offline
from latentbridge.core.digest import json_digest

COLUMNS = ("method", "lmbda", "bpp", "top1", "few_shot", "psnr")


def dashboard_group(cfg: DictConfig) -> str:
    """``dashboard.group`` (default ``reproduce-<plan>``)."""
    return str(cfg.dashboard.get("group") or f"reproduce-{cfg.plan.name}")


def figures_run_id(cfg: DictConfig) -> str:
    """One id per plan output directory: reruns and every job of the plan continue the same run."""
    return f"{cfg.plan.name}-figures-{json_digest(str(Path(cfg.out_dir).resolve()))[:10]}"


def figure_tables(cfg: DictConfig, rows: list[dict[str, Any]]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """figure name -> (columns, data): the rows each figure plots, methods under the figure's labels."""
    tables = {}
    for name, fig in cfg.plan.figures.items():
        labels = dict(fig.methods)
        columns = ["method", "lmbda", "bpp", fig.metric]
        data = [
            [labels[r["method"]], r.get("lmbda"), float(r["bpp"]), float(r[fig.metric])]
            for r in rows
            if r["method"] in labels and r.get(fig.metric) is not None and r.get("bpp") is not None
        ]
        tables[name] = (columns, sorted(data, key=lambda d: (d[0], d[2])))
    return tables


def log_figures(cfg: DictConfig, rows: list[dict[str, Any]], final: bool = False, results: Any = None) -> str:
    """Log every figure's table and line plot to the plan's ``figures`` run; the PNGs too when ``final``.
    Returns the run's local directory."""
    import wandb

    from latentbridge.core.lease_lock import LeaseLock

    out = Path(cfg.out_dir)
    (out / "jobs").mkdir(parents=True, exist_ok=True)
    with LeaseLock(out / "jobs" / "dashboard.lock"):
        run = wandb.init(
            project=cfg.dashboard.project,
            group=dashboard_group(cfg),
            name="figures",
            job_type="report",
            id=figures_run_id(cfg),
            resume="allow",
            dir=str(out),
            mode="offline" if wandb_offline() else "online",
            reinit="finish_previous",
            config={"plan": cfg.plan.name, "out_dir": str(out)},
        )
        logged: dict[str, Any] = {"points": len(rows)}
        for name, (columns, data) in figure_tables(cfg, rows).items():
            if not data:
                continue
            table = wandb.Table(columns=columns, data=data)
            title = str(cfg.plan.figures[name].title)
            logged[f"{name}/table"] = table
            logged[f"{name}/plot"] = wandb.plot.line(table, "bpp", columns[-1], stroke="method", title=title)
            if final and (out / f"{name}.png").is_file():
                logged[f"{name}/png"] = wandb.Image(str(out / f"{name}.png"))
        run.log(logged)
        if final and results is not None:
            for f in results.get("findings") or []:
                run.summary[f"finding/{f['id']}"] = {True: "holds", False: "does not hold"}.get(f["holds"], "n/a")
        folder = run.dir
        run.finish()
    return str(Path(folder).parent)
