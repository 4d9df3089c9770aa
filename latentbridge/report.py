"""The metrics table printed at the end of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

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
