"""``latentbridge-import nycu FILE [...]``: paper 1's released models as LatentBridge runs
(``latentbridge/workflows/import_released.py``); one line per imported file, one-line errors (exit 2)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latentbridge.cli import run_cli


def main(argv: list[str] | None = None) -> int:
    from latentbridge.workflows.import_released import SCENARIOS, import_nycu

    p = argparse.ArgumentParser(prog="latentbridge-import", description="Import paper 1's released models as runs.")
    p.add_argument("source", choices=["nycu"], help="nycu: NYCU-MAPL/BridgingCompressionMLLM release v1.0")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--out", type=Path, help="the run directory (one file) or its parent (several); "
                   "default logs/imported/<file stem>")  # fmt: skip
    p.add_argument("--scenario", choices=sorted(SCENARIOS))
    p.add_argument("--quality", type=int, choices=[1, 2, 3, 4])
    p.add_argument("--elic", type=Path, help="Chandelier's ELIC at the file's rate point: checks d1 / d2 / d3")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override, e.g. vision.pretrained=/weights/ViT-L-14.pt or data.root=/data/imagenet",
    )
    args = p.parse_args(argv)

    def work() -> None:
        for f in args.files:
            stem = f.name.split(".")[0]
            out = args.out if args.out and len(args.files) == 1 else (args.out or Path("logs/imported")) / stem
            run = import_nycu(f, out, args.scenario, args.quality, args.elic, args.overrides)
            print(f"{f} -> {run} (reference pipeline; evaluate: latentbridge-evaluate 'runs=[{run}]')")

    run_cli(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
