"""The paper's findings (4.2-4.5), checked on a reproduction's rows. The thresholds are fixed here, from the paper's
own words, and are never adjusted to a result:

(i)   d1 beats Reconstruction at the two lowest rates (Fig. 3): top-1 strictly higher at both.
(ii)  d2 at least d1, and d3 at least d2, in accuracy (Fig. 3): at every rate point.
(iii) d2's PSNR within about 1 dB of d1's (|difference| <= 1 dB), d3's much lower (>= 3 dB below d1's) (Fig. 4):
      at every rate point.

Fig. 3 and 4 compare curves over the real bit rate, and phase 2 moves a codec's rate at a given lambda (d3 spends
about half of d1's bits), so (ii) and (iii) compare at equal rate: each point of one curve against the other curve
linearly interpolated at that bpp (points outside the other curve's rate range are left out). The comparison at
equal lambda is reported beside it (``per_lambda``).
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
        # rate points by lambda; traditional anchors (no lambda) by quality
        self.by = {(r["method"], r["lmbda"] if r.get("lmbda") is not None else r.get("quality")): r for r in rows}

    def get(self, method: str, lmbda: float, metric: str) -> float | None:
        row = self.by.get((method, lmbda))
        return None if row is None or row.get(metric) is None else float(row[metric])

    def points(self, method: str, metric: str) -> list[tuple[float, float]]:
        """(real bpp, metric) of a method's rate points, by rate."""
        pts = [
            (float(r["bpp"]), float(r[metric]))
            for (m, _), r in self.by.items()
            if m == method and r.get(metric) is not None
        ]
        return sorted(pts)

    def at_rate(self, method: str, bpp: float, metric: str) -> float | None:
        """The method's curve linearly interpolated at ``bpp``; None outside its rate range."""
        pts = self.points(method, metric)
        for (r0, v0), (r1, v1) in zip(pts, pts[1:]):
            if r0 <= bpp <= r1:
                return v0 if r1 == r0 else v0 + (v1 - v0) * (bpp - r0) / (r1 - r0)
        return None


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


def _cmp_at_rate(rows: Rows, a: str, b: str, metric: str, test: Any, fmt: str = "{:.4f}") -> list[tuple]:
    """Each rate point of ``a`` against ``b``'s curve at the same bpp."""
    out = []
    for bpp, va in rows.points(a, metric):
        vb = rows.at_rate(b, bpp, metric)
        if vb is not None:
            out.append((bool(test(va, vb)), f"{bpp:.3f} bpp: {a} {fmt.format(va)} vs {b} {fmt.format(vb)}"))
    if not out:
        a_pts, b_pts = rows.points(a, metric), rows.points(b, metric)
        if not a_pts or not b_pts:
            return [(None, f"{a} or {b} missing")]
        span = lambda p: f"{p[0][0]:.3f}-{p[-1][0]:.3f}"  # noqa: E731
        return [(None, f"rate ranges do not overlap ({a} {span(a_pts)}, {b} {span(b_pts)} bpp)")]
    return out


def _per_lambda(checks: list[tuple]) -> str:
    if any(ok is None for ok, _ in checks):
        return "not measured"
    return ("holds" if all(ok for ok, _ in checks) else "does not hold") + ": " + "; ".join(t for _, t in checks)


def server_macs(run_dirs: dict[str, Path]) -> dict[str, float] | None:
    """kMAC/pixel of the neck (reference run) and of g_s + U-Net + the encoder's first k blocks (post run)."""
    from latentbridge.analysis.complexity import complexity_report
    from latentbridge.core.run_dir import config_file

    if not all(config_file(d).is_file() for d in run_dirs.values()):
        return None
    costs = {}
    for role, d in run_dirs.items():
        rcfg = OmegaConf.load(config_file(d))
        costs[role] = {c.component: c.kmac_per_pixel for c in complexity_report(rcfg)}
    neck = costs["neck"]["transform-neck"]
    post = sum(costs["post"][k] for k in ("codec decoder g_s", "post-processing network"))
    post += costs["neck"]["encoder patch embedding + first k blocks"]
    return {"neck": neck, "post": post}


def check_findings(cfg: DictConfig, rows_list: list[dict[str, Any]], per_image: Any = None) -> list[dict[str, Any]]:
    """Findings (i)-(vi) from the plan's rows (``per_image`` is unused: paper 1's thresholds are on means)."""
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
    ge = lambda a, b: a >= b  # noqa: E731
    per_lambda = [_cmp(rows, "d2", ref, lm, "top1", ge) for lm in rates] + [
        _cmp(rows, "d3", "d2", lm, "top1", ge) for lm in rates
    ]
    found = _finding(
        "ii",
        "d2 >= d1 and d3 >= d2 in accuracy (at equal rate)",
        _cmp_at_rate(rows, "d2", ref, "top1", ge) + _cmp_at_rate(rows, "d3", "d2", "top1", ge),
    )
    out.append({**found, "per_lambda": _per_lambda(per_lambda)})
    near = lambda a, b: abs(a - b) <= 1.0  # noqa: E731
    lower = lambda a, b: a <= b - 3.0  # noqa: E731
    per_lambda = [_cmp(rows, "d2", ref, lm, "psnr", near, "{:.2f} dB") for lm in rates] + [
        _cmp(rows, "d3", ref, lm, "psnr", lower, "{:.2f} dB") for lm in rates
    ]
    found = _finding(
        "iii",
        "d2's PSNR within 1 dB of d1's; d3's at least 3 dB lower (at equal rate)",
        _cmp_at_rate(rows, "d2", ref, "psnr", near, "{:.2f} dB")
        + _cmp_at_rate(rows, "d3", ref, "psnr", lower, "{:.2f} dB"),
    )
    out.append({**found, "per_lambda": _per_lambda(per_lambda)})
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
            f"{' / '.join(f.skip_near.values())} beat {' / '.join(f.skip_far.values())} (skipped encoder blocks)"
            if f.skip_near and f.skip_far
            else "skipping few encoder blocks beats skipping many",
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
        evidence = f["evidence"] + (f"\n[dim]at equal lambda: {f['per_lambda']}[/dim]" if f.get("per_lambda") else "")
        table.add_row(f["id"], f["claim"], holds, evidence)
    Console(width=160).print(table)
