"""Rate-accuracy and rate-PSNR curves (paper Fig. 3, 4) and Bjontegaard deltas against an anchor curve."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRIC_LABELS = {
    "top1": "zero-shot top-1",
    "few_shot": "5-way 1-shot accuracy",
    "psnr": "PSNR (dB)",
    "ms_ssim": "MS-SSIM",
}


def curves(rows: list[dict[str, Any]], metric: str) -> dict[str, tuple[list[float], list[float]]]:
    """method -> (real bpp, metric) sorted by rate, from rows that have the metric."""
    pts: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        if r.get(metric) is not None and r.get("bpp") is not None:
            pts[r["method"]].append((float(r["bpp"]), float(r[metric])))
    return {m: ([p[0] for p in sorted(v)], [p[1] for p in sorted(v)]) for m, v in pts.items()}


def plot(rows: list[dict[str, Any]], metric: str, path: Path, title: str = "") -> Path | None:
    """One PNG: a line per method; the uncompressed upper bound as a horizontal line."""
    data = curves(rows, metric)
    if not data:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    for method, (x, y) in sorted(data.items()):
        if method == "uncompressed":
            ax.axhline(sum(y) / len(y), color="k", ls="--", lw=1, label="uncompressed")
        else:
            ax.plot(x, y, marker="o", label=method)
    ax.set_xlabel("bits per pixel (real bitstream)")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title(title or METRIC_LABELS.get(metric, metric))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def bd_table(rows: list[dict[str, Any]], metric: str, anchor: str) -> dict[str, dict[str, float | str]]:
    """BD-rate (%) and BD-metric of each method against ``anchor`` (``bjontegaard``, pchip). Methods with fewer
    than 4 points or too little rate overlap get the reason instead of a number."""
    import bjontegaard as bd

    data = curves(rows, metric)
    if anchor not in data:
        return {}
    ra, da = data[anchor]
    out: dict[str, dict[str, float | str]] = {}
    for method, (rt, dt) in data.items():
        if method in (anchor, "uncompressed"):
            continue
        try:
            values = {
                "bd_rate_percent": float(bd.bd_rate(ra, da, rt, dt, method="pchip", require_matching_points=False)),
                f"bd_{metric}": float(bd.bd_psnr(ra, da, rt, dt, method="pchip", require_matching_points=False)),
            }
        except Exception as e:  # too few points, or a curve that is not monotonic in the metric
            out[method] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            continue
        # NaN: the curves do not overlap enough (rate for BD-rate, metric for BD-metric); JSON has no NaN
        out[method] = {k: (v if math.isfinite(v) else None) for k, v in values.items()}
    return out


def plot_validation(histories: dict[str, dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """Every run's validation curve (``results.json["convergence"]``): one panel per run, a line per rate point,
    the monitored metric against training steps; an unconverged curve (stopped at its step cap) is dashed."""
    by_run: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for name, conv in sorted(histories.items()):
        if conv.get("history"):
            run, _, rate = name.partition("/")
            by_run[run].append((rate, conv))
    if not by_run:
        return None
    cols = min(4, len(by_run))
    rows = math.ceil(len(by_run) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), dpi=110, squeeze=False)
    for ax, (run, lines) in zip(axes.flat, sorted(by_run.items())):
        for rate, conv in lines:
            steps = [h["step"] for h in conv["history"]]
            values = [h["value"] for h in conv["history"]]
            label = rate + ("" if conv.get("converged") else " (cap)")
            ax.plot(steps, values, ls="-" if conv.get("converged") else "--", marker=".", label=label)
        ax.set_title(run, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel(lines[0][1].get("metric", ""), fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(by_run) :]:
        ax.axis("off")
    fig.suptitle(title or "validation curves (dashed: stopped at the cap, unconverged)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
