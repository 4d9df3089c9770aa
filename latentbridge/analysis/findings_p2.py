"""Paper 2's findings (Li et al. 2024, abstract; design ``paper2.md`` 5.2), checked on a reproduction's rows. The
thresholds are fixed here, before any paper-2 run, and never adjusted to a result. Every comparison is at equal
real bit rate: each point of one curve against the other curve linearly interpolated at that bpp.

F1  one variable-rate model serves the range at little cost: at each fixed-rate model's bpp, the variable-rate
    model's top-1 >= the fixed model's - 0.01; and BD-rate(top-1) against the fixed models' curve <= +10 % where
    it can be computed (at least 4 points each, monotone curves).
F2  the token losses beat pixel-MSE-only training: top-1 >= at every compared rate, and the mean paired difference
    over the lower half of the compared rates > 0 with its 95 % bootstrap interval excluding 0.
F3  pre-editing helps: top-1 >= the model without the editor at every compared rate; the 95 % interval of the mean
    paired difference excludes 0 (above it).
F4  the rank term helps: top-1 >= the model trained with L_tk only at every compared rate (the interval is reported,
    not required: the mini may not resolve it).
F5  better rate-accuracy than the traditional anchors (``plan.anchors``, coded as 4x4 mosaics so that no per-file
    header decides it): top-1 >= each anchor's at every compared rate, and BD-rate(top-1) < 0 against each where it
    can be computed.
F6  generalisation to another task / vision model: not measured by the mini plan (below).
F7  real bitstreams: at every point the real bpp <= 1.05 x the estimate + the container (25 bytes) and the range
    coder's flush (4 bytes per entropy-coded string), per image.

Paired statistics: the same test images for every run (checked by their indices); per image, the difference of
correctness against the interpolation of the other curve's two neighbouring points; 1,000 bootstrap resamples of
the images (seed 0), the 2.5 / 97.5 percentiles of the mean difference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from omegaconf import DictConfig

from latentbridge.analysis.findings import Rows, _cmp_at_rate, _finding

CONTAINER_BYTES = 25
FLUSH_BYTES_PER_STRING = 4
STRINGS_PER_IMAGE = 2  # y and z
BOOTSTRAP = 1000


def paired_differences(
    rows: Rows, per_image: dict[tuple[str, float], dict[str, Any]], a: str, b: str
) -> list[tuple[float, np.ndarray]] | str:
    """Per compared point of ``a`` (its bpp): the per-image correctness of ``a`` minus ``b``'s curve interpolated
    there. A string says why it cannot be computed."""
    by_bpp = {m: sorted((float(r["bpp"]), lm) for (m2, lm), r in rows.by.items() if m2 == m) for m in (a, b)}
    out = []
    for bpp, lm in by_bpp[a]:
        pts = by_bpp[b]
        for (r0, l0), (r1, l1) in zip(pts, pts[1:]):
            if r0 <= bpp <= r1:
                w = 0.0 if r1 == r0 else (bpp - r0) / (r1 - r0)
                cols = [per_image.get((m, float(x))) or {} for m, x in ((a, lm), (b, l0), (b, l1))]
                if any("correct_method" not in c for c in cols):
                    return "per-image results missing (evaluations from before per-image columns)"
                if not cols[0]["index"] == cols[1]["index"] == cols[2]["index"]:
                    return "the runs were evaluated on different images"
                ca, c0, c1 = (np.asarray(c["correct_method"], dtype=float) for c in cols)
                out.append((bpp, ca - ((1 - w) * c0 + w * c1)))
                break
    return out or "rate ranges do not overlap"


def bootstrap_ci(diffs: list[np.ndarray], seed: int = 0) -> tuple[float, float, float]:
    """Mean over points and images of the paired differences, and its 95 % bootstrap interval (images resampled)."""
    stacked = np.stack(diffs)  # (points, images)
    rng = np.random.default_rng(seed)
    n = stacked.shape[1]
    means = np.array([stacked[:, rng.integers(0, n, n)].mean() for _ in range(BOOTSTRAP)])
    return float(stacked.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _paired(rows: Rows, per_image: Any, a: str, b: str, lower_half: bool, require: bool) -> tuple[bool | None, str]:
    diffs = paired_differences(rows, per_image or {}, a, b)
    if isinstance(diffs, str):
        return None, f"paired interval {a} - {b}: {diffs}"
    if lower_half:
        cut = float(np.median([bpp for bpp, _ in diffs]))
        diffs = [(bpp, d) for bpp, d in diffs if bpp <= cut]
    mean, lo, hi = bootstrap_ci([d for _, d in diffs])
    where = "lower half of the compared rates" if lower_half else "all compared rates"
    text = f"mean paired difference {a} - {b} over the {where}: {mean:+.4f} (95% CI {lo:+.4f} .. {hi:+.4f})"
    return (lo > 0 if require else True), text


def _at_least(rows: Rows, a: str, b: str, margin: float = 0.0) -> list[tuple]:
    return _cmp_at_rate(rows, a, b, "top1", lambda va, vb: va >= vb - margin)


def _bd_rate(rows_list: list[dict[str, Any]], method: str, anchor: str, passes: Any) -> tuple[bool, str]:
    """BD-rate(top-1) of ``method`` against ``anchor`` checked with ``passes``; where it cannot be computed (too few
    points, non-monotone curves, too little overlap) the check is recorded as not counted."""
    from latentbridge.analysis.curves import bd_table

    entry = bd_table([r for r in rows_list if r["method"] in (method, anchor)], "top1", anchor).get(method)
    if not entry or entry.get("bd_rate_percent") is None:
        why = (entry or {}).get("error", "not computable")
        return True, f"BD-rate(top-1) vs {anchor}: {why} (not counted)"
    value = float(entry["bd_rate_percent"])
    return bool(passes(value)), f"BD-rate(top-1) {method} vs {anchor}: {value:+.1f} %"


def _real_vs_estimate(rows_list: list[dict[str, Any]], methods: list[str], pixels: int) -> list[tuple]:
    allowance = 8 * (CONTAINER_BYTES + FLUSH_BYTES_PER_STRING * STRINGS_PER_IMAGE) / pixels
    checks = []
    for r in rows_list:
        if r["method"] in methods and r.get("bpp_est") is not None:
            limit = 1.05 * r["bpp_est"] + allowance
            checks.append((r["bpp"] <= limit, f"{r['method']} lambda={r['lmbda']:.3g}: {r['bpp']:.4f} <= {limit:.4f}"))
    return checks or [(None, "no learned-codec rows")]


def check_findings(
    cfg: DictConfig, rows_list: list[dict[str, Any]], per_image: dict[tuple[str, float], dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    rows = Rows(rows_list)
    f = cfg.plan.findings
    vbr = f.vbr
    # F1 compares the variable-rate curve at each fixed model's bpp (the fixed points are the reference)
    f1 = _cmp_at_rate(rows, f.fixed, vbr, "top1", lambda vf, vv: vv >= vf - 0.01)
    out = [
        _finding(
            "F1",
            "one variable-rate model serves the range at little cost (vs separate fixed-rate models)",
            [*f1, _bd_rate(rows_list, vbr, f.fixed, lambda v: v <= 10.0)],
        )
    ]
    out.append(
        _finding(
            "F2",
            "token losses beat pixel-MSE-only training",
            [*_at_least(rows, vbr, f.pixel), _paired(rows, per_image, vbr, f.pixel, True, True)],
        )
    )
    out.append(
        _finding(
            "F3",
            "pre-editing helps",
            [*_at_least(rows, vbr, f.noedit), _paired(rows, per_image, vbr, f.noedit, False, True)],
        )
    )
    out.append(
        _finding(
            "F4",
            "the rank term helps",
            [*_at_least(rows, vbr, f.token_only), _paired(rows, per_image, vbr, f.token_only, False, False)],
        )
    )
    anchors = [a for a in (cfg.plan.get("anchors") or {}) if rows.points(a, "top1")]
    f5: list[tuple] = []
    for anchor in anchors:
        f5 += [*_at_least(rows, vbr, anchor), _bd_rate(rows_list, vbr, anchor, lambda v: v < 0)]
    out.append(
        _finding(
            "F5",
            "better rate-accuracy than the traditional anchors (on mosaics: headers shared)",
            f5 or [(None, f.get("anchor_note") or "no anchor was evaluated")],
        )
    )
    out.append(
        _finding(
            "F6",
            "generalisation to another task / vision model",
            [(None, f.get("generalisation_note") or "no second readout in this plan")],
        )
    )
    methods = [vbr, f.fixed, f.pixel, f.noedit, f.token_only, cfg.plan.reference_run]
    pixels = int(f.get("pixels", 32 * 32))
    out.append(
        _finding("F7", "real bitstreams close to the estimated rate", _real_vs_estimate(rows_list, methods, pixels))
    )
    return out
