"""The paper's findings (4.2-4.5), checked on a reproduction's rows. The thresholds are fixed here, from the paper's
own words, and are never adjusted to a result:

(i)   d1 beats Reconstruction at the two lowest rates (Fig. 3): top-1 strictly higher at both.
(ii)  d2 at least d1, and d3 at least d2, in accuracy (Fig. 3): at every rate point.
(iii) d2's PSNR within about 1 dB of d1's (|difference| <= 1 dB), d3's much lower (>= 3 dB below d1's) (Fig. 4):
      at every rate point.
(iv)  Post-processing close to d1 (mean |top-1 difference| over the rate points <= 0.02) at far more server-side
      compute (g_s + U-Net + the encoder's first k blocks >= 2x the transform-neck's MACs per pixel) (4.2, Table 3).
(v)   The progressive loss beats cross-entropy only and distillation only (Fig. 6b): at every ablation rate point.
(vi)  Skipping few blocks beats skipping many (Fig. 6a): every "near" run beats every "far" run at every ablation
      rate point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table


class Rows:
    """Lookup of a metric by (method, lambda)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.by = {(r["method"], r.get("lmbda")): r for r in rows}

    def get(self, method: str, lmbda: float, metric: str) -> float | None:
        row = self.by.get((method, lmbda))
        return None if row is None or row.get(metric) is None else float(row[metric])


def _finding(fid: str, claim: str, checks: list[tuple[bool | None, str]]) -> dict[str, Any]:
    if not checks or any(ok is None for ok, _ in checks):
        missing = [text for ok, text in checks if ok is None] or ["no data"]
        return {"id": fid, "claim": claim, "holds": None, "evidence": "not measured: " + "; ".join(missing)}
    return {
        "id": fid,
        "claim": claim,
        "holds": all(ok for ok, _ in checks),
        "evidence": "; ".join(text for _, text in checks),
    }


def _cmp(rows: Rows, a: str, b: str, lmbda: float, metric: str, test: Any, fmt: str = "{:.4f}") -> tuple:
    va, vb = rows.get(a, lmbda, metric), rows.get(b, lmbda, metric)
    if va is None or vb is None:
        return None, f"{a} or {b} missing at lambda={lmbda}"
    return bool(test(va, vb)), f"lambda={lmbda}: {a} {fmt.format(va)} vs {b} {fmt.format(vb)}"


def server_macs(run_dirs: dict[str, Path]) -> dict[str, float] | None:
    """kMAC/pixel of the neck (reference run) and of g_s + U-Net + the encoder's first k blocks (post run)."""
    from complexity import complexity_report

    if not all((d / ".hydra" / "config.yaml").is_file() for d in run_dirs.values()):
        return None
    costs = {}
    for role, d in run_dirs.items():
        rcfg = OmegaConf.load(d / ".hydra" / "config.yaml")
        rcfg.scenario.init_from = None
        costs[role] = {c.component: c.kmac_per_pixel for c in complexity_report(rcfg)}
    neck = costs["neck"]["transform-neck"]
    post = sum(costs["post"][k] for k in ("codec decoder g_s", "post-processing network"))
    post += costs["neck"]["encoder patch embedding + first k blocks"]
    return {"neck": neck, "post": post}


def check_findings(cfg: DictConfig, rows_list: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = Rows(rows_list)
    rates = sorted(cfg.plan.rates)
    abl = sorted(cfg.plan.ablation_rates)
    f = cfg.plan.findings
    ref = cfg.plan.reference_run
    out = []
    out.append(
        _finding(
            "i",
            f"{ref} beats Reconstruction at the two lowest rates",
            [_cmp(rows, ref, "reconstruction", lm, "top1", lambda a, b: a > b) for lm in rates[:2]],
        )
    )
    out.append(
        _finding(
            "ii",
            "d2 >= d1 and d3 >= d2 in accuracy",
            [_cmp(rows, "d2", ref, lm, "top1", lambda a, b: a >= b) for lm in rates]
            + [_cmp(rows, "d3", "d2", lm, "top1", lambda a, b: a >= b) for lm in rates],
        )
    )
    out.append(
        _finding(
            "iii",
            "d2's PSNR within 1 dB of d1's; d3's at least 3 dB lower",
            [_cmp(rows, "d2", ref, lm, "psnr", lambda a, b: abs(a - b) <= 1.0, "{:.2f} dB") for lm in rates]
            + [_cmp(rows, "d3", ref, lm, "psnr", lambda a, b: a <= b - 3.0, "{:.2f} dB") for lm in rates],
        )
    )
    diffs = [
        (rows.get(f.post_processing, lm, "top1"), rows.get(ref, lm, "top1"))
        for lm in rates
        if rows.get(f.post_processing, lm, "top1") is not None and rows.get(ref, lm, "top1") is not None
    ]
    checks: list[tuple[bool | None, str]] = []
    if diffs:
        mean_abs = sum(abs(a - b) for a, b in diffs) / len(diffs)
        detail = ", ".join(f"{a:.4f} vs {b:.4f}" for a, b in diffs)
        checks.append((mean_abs <= 0.02, f"mean |top-1 difference| {mean_abs:.4f} ({detail})"))
    else:
        checks.append((None, "post-processing or d1 rows"))
    macs = server_macs(
        {
            "neck": Path(cfg.out_dir) / ref / f"lambda{rates[0]}",
            "post": Path(cfg.out_dir) / f.post_processing / f"lambda{rates[0]}",
        }
    )
    if macs is None:
        checks.append((None, "run configs for the complexity count"))
    else:
        ratio = macs["post"] / macs["neck"]
        checks.append(
            (
                ratio >= 2.0,
                f"server kMAC/pixel: post-processing {macs['post']:.1f} vs neck {macs['neck']:.1f} ({ratio:.1f}x)",
            )
        )
    out.append(_finding("iv", "Post-processing close to d1 at far more compute", checks))
    out.append(
        _finding(
            "v",
            "the progressive loss beats cross-entropy only and distillation only",
            [_cmp(rows, ref, other, lm, "top1", lambda a, b: a > b) for other in f.single_losses for lm in abl],
        )
    )
    out.append(
        _finding(
            "vi",
            f"{' / '.join(f.skip_near.values())} beat {' / '.join(f.skip_far.values())} (skipped encoder blocks)",
            [
                _cmp(rows, near, far, lm, "top1", lambda a, b: a > b)
                for near in f.skip_near
                for far in f.skip_far
                for lm in abl
            ],
        )
    )
    return out


def print_findings(findings: list[dict[str, Any]]) -> None:
    table = Table(title="the paper's findings, checked here", show_lines=True)
    table.add_column("")
    table.add_column("finding")
    table.add_column("holds")
    table.add_column("evidence")
    for f in findings:
        holds = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "[yellow]not measured[/yellow]"}[f["holds"]]
        table.add_row(f["id"], f["claim"], holds, f["evidence"])
    Console(width=160).print(table)
