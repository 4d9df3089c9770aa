"""Rebuild the shipped mini assets and check them against ``assets/mini`` (issue: mini reproductions, first contact).

Usage: ``python scripts/prepare_mini.py [--only teachers/mini_clip_p8.pt] [--ship]`` (``make prepare``).

Each asset in ``assets/mini/manifest.json`` is trained again from its recipe, with the same seed, into a scratch cache
(``.cache/latentbridge-prepare``), and its validation metrics are compared with the shipped ones. The tolerances are
fixed here, before any rebuild (seed noise: the same seed on another machine or library build need not give the same
bits, so a rebuild is checked by what it measures): teacher top-1 within 1.5 points, codec bpp within 5 % and PSNR
within 0.3 dB. Whether the weights are bit-identical is printed too. ``--ship`` replaces the shipped files with the
rebuilds (after a deliberate change of a recipe). Exit 1 when a rebuild is outside its tolerance.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: metric -> (kind, tolerance): "abs" |new - shipped| <= tol; "rel" |new / shipped - 1| <= tol
TOLERANCES = {"top1": ("abs", 0.015), "bpp": ("rel", 0.05), "psnr": ("abs", 0.3)}


def within(metric: str, new: float, shipped: float) -> bool:
    kind, tol = TOLERANCES[metric]
    return abs(new - shipped) <= tol if kind == "abs" else abs(new / shipped - 1) <= tol


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", help="a manifest path (default: every shipped asset)")
    parser.add_argument("--ship", action="store_true", help="replace the shipped files with the rebuilds")
    parser.add_argument("--cache-dir", default=str(ROOT / ".cache" / "latentbridge-prepare"))
    args = parser.parse_args(argv)

    from hydra import compose, initialize_config_dir

    from latentbridge.core.config import hydra_quote, register_resolvers
    from latentbridge.workflows.assets import assets_dir, manifest, record, sha256
    from latentbridge.workflows.train import run

    register_resolvers()
    assets = manifest()["assets"]
    names = args.only or list(assets)
    unknown = [n for n in names if n not in assets]
    if unknown:
        print(f"--only: {unknown[0]} is not in {assets_dir() / 'manifest.json'} ({', '.join(assets)})")
        return 2
    cache = Path(args.cache_dir)
    failed = []
    for name in names:
        entry, target = assets[name], cache / name
        if target.exists():
            target.unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        out = cache / "runs" / name.replace("/", "_")
        shutil.rmtree(out, ignore_errors=True)
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=[*entry["recipe"], f"export_path={hydra_quote(str(target))}",
                                              f"paths.output_dir={hydra_quote(str(out))}",
                                              f"paths.cache_dir={hydra_quote(str(cache))}", "logger=none"])  # fmt: skip
        run(cfg)
        results = json.loads((out / "results.json").read_text())
        rows = []
        for metric, shipped in entry["metrics"].items():
            if metric not in TOLERANCES:
                continue
            new = float(results["metrics"][metric])
            ok = within(metric, new, shipped)
            rows.append((metric, shipped, new, ok))
            if not ok:
                failed.append(f"{name}: {metric}")
        identical = sha256(target) == entry["sha256"]
        print(f"{name}: {results['steps']} steps, {results['wall_time_s']:.0f} s; weights bit-identical: {identical}")
        for metric, shipped, new, ok in rows:
            kind, tol = TOLERANCES[metric]
            bound = f"{tol:g}" if kind == "abs" else f"{tol:.0%}"
            verdict = "ok" if ok else "OUTSIDE"
            print(f"  {metric:<6} shipped {shipped:.4f}  rebuilt {new:.4f}  (tolerance {bound}) {verdict}")
        if args.ship:
            metrics = {k: float(v) for k, v in results["metrics"].items()}
            record(name, target, entry["recipe"], metrics | {"steps": results["steps"],
                                                             "wall_time_s": results["wall_time_s"]})  # fmt: skip
            print(f"  shipped as {assets_dir() / name}")
    if failed:
        print(f"outside tolerance: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
