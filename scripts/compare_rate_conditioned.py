"""One neck for every rate vs one neck per rate, on real bitstreams (issue: one transform-neck for every rate).

    python scripts/compare_rate_conditioned.py --per-rate <d1 run at rate 1> ... <d1 run at rate R> \
        --conditioned "equal total steps=<d1_rates run>" "equal steps per rate=<d1_rates run>" --limit 1000

Each per-rate d1 run is evaluated at its own rate, each rate-conditioned run at every rate it covers, all through
``trainer.test`` (evaluate.py's path: every test image coded to bytes, the neck reading the header's rate), on the
same first ``limit`` test images. For each conditioned run and rate: top-1 of both, their paired difference and its
95 % bootstrap interval over images (``analysis/findings_p2.bootstrap_ci``: 1,000 resamples, seed 0). Also the
parameters a server holds: R per-rate necks against one conditioned neck.

The comparison of the README's table was stated before its runs (conditioned runs: experiment=mini_d1_rates,
val_subset 2,000, no early stop):
- per-rate necks: plan=mini's four d1 runs (converged by the rule: 875, 1,375, 1,375, 1,375 steps);
- "equal total steps": one neck trained 1,375 steps in all (11 epochs of 125; the per-rate schedule e1=2, e2=5,
  lr x0.1 at 6), so each rate gets about a quarter of a per-rate neck's steps;
- "equal steps per rate": 5,500 steps (44 epochs; the schedule stretched 4x: e1=8, e2=20, x0.1 at 24), about 1,375
  per rate;
- expectation: with equal steps per rate the one neck is within 1 point of top-1 of the per-rate neck at every rate
  (difference >= -1.0); with equal total steps it falls more than 1 point below at one rate or more.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from latentbridge.analysis.findings_p2 import bootstrap_ci
from latentbridge.core.atomic_io import atomic_write_json
from latentbridge.core.errors import LatentBridgeError
from latentbridge.workflows.evaluate import evaluate_rate_point, open_rate_point


def evaluate_at(run_dir: Path, rate: float | None, limit: int, batch_size: int) -> dict:
    """One run at one rate (None: a per-rate run at its own) through real bitstreams: top-1, bpp, per image."""
    trainer = {"accelerator": "auto", "devices": 1, "enable_progress_bar": False}
    settings = {"limit": limit, "batch_size": batch_size, "few_shot_groups": 0, "seed": 0, "trainer": trainer}
    cfg = OmegaConf.create(settings)
    run, datamodule = open_rate_point(run_dir, cfg)
    if rate is not None:
        run.module.eval_rate = rate
    result = evaluate_rate_point(run, datamodule, cfg)
    per_image = result["per_image"]
    return {
        "lmbda": rate if rate is not None else run.lmbda,
        "top1": result["method"]["top1"],
        "bpp": result["bpp"],
        "index": per_image["index"],
        "correct": np.asarray(per_image["correct_method"], dtype=float),
        "parameters": sum(p.numel() for p in run.module.neck.parameters()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-rate", nargs="+", required=True, type=Path, help="d1 run directories, one per rate")
    parser.add_argument("--conditioned", nargs="+", required=True, help="label=<d1_rates run directory>")
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("rate_conditioned.json"))
    args = parser.parse_args(argv)
    try:
        per_rate = {}
        for d in args.per_rate:
            r = evaluate_at(d, None, args.limit, args.batch_size)
            per_rate[float(r["lmbda"])] = r
        rows, sizes = [], {"per-rate necks": sum(r["parameters"] for r in per_rate.values())}
        for spec in args.conditioned:
            label, _, run_dir = spec.partition("=")
            if not run_dir:
                raise LatentBridgeError(f"--conditioned: '{spec}' is not label=<run directory>")
            for rate, base in sorted(per_rate.items()):
                r = evaluate_at(Path(run_dir), rate, args.limit, args.batch_size)
                sizes[label] = r["parameters"]
                if r["index"] != base["index"]:
                    raise LatentBridgeError(f"{run_dir}: evaluated on other images than the per-rate run")
                mean, lo, hi = bootstrap_ci([r["correct"] - base["correct"]])
                rows.append({"comparison": label, "lmbda": rate, "per_rate_top1": base["top1"],
                             "one_neck_top1": r["top1"], "difference": mean, "ci95": [lo, hi],
                             "per_rate_bpp": base["bpp"], "one_neck_bpp": r["bpp"]})  # fmt: skip
    except LatentBridgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'comparison':<22} {'lambda':>7} {'bpp':>6} {'per-rate':>8} {'one neck':>8} {'diff':>6}  95% CI")
    for row in rows:
        lo, hi = row["ci95"]
        print(
            f"{row['comparison']:<22} {row['lmbda']:>7g} {row['per_rate_bpp']:>6.3f} {row['per_rate_top1']:>8.3f} "
            f"{row['one_neck_top1']:>8.3f} {100 * row['difference']:>+6.1f}  [{100 * lo:+.1f}, {100 * hi:+.1f}]"
        )
    for label, n in sizes.items():
        print(f"parameters on the server, {label}: {n:,}")
    atomic_write_json(args.out, {"rows": rows, "parameters": sizes})
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
