"""Result tables: the metrics printed at the end of a run, and the rate-accuracy rows (console and CSV)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from latentbridge.core.atomic_io import atomic_write_bytes

LABELS = {
    "bpp": "rate (bpp, likelihood estimate)",
    "top1_uncompressed": "top-1, uncompressed image -> full teacher C(x)",
    "top1_neck": "top-1, neck path C'(T(y_hat))",
    "top1_reconstruction": "top-1, Reconstruction C(g_s(y_hat))",
    "top1_post_processing": "top-1, Post-processing C(P(g_s(y_hat)))",
    "psnr": "PSNR of g_s(y_hat) (dB)",
    "rd_loss": "rate-distortion loss",
    "top1": "zero-shot top-1",
}


def print_results(results: dict[str, Any], path: Path) -> None:
    """A table of the final metrics, then the path of results.json."""
    codec = results.get("codec") or {}
    title = f"{results['task_name']} - {results['scenario']}"
    if codec:
        title += f" - codec {codec.get('name')} (lambda={codec.get('lmbda')})"
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in results["metrics"].items():
        table.add_row(LABELS.get(key, key), f"{value:.4f}")
    console = Console()
    console.print(table)
    console.print(f"results: {path}")


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
