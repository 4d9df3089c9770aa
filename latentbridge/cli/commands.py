"""The Hydra commands: console scripts ``latentbridge-train|evaluate|reproduce|complexity|mllm-evaluate`` and the
thin top-level scripts (``python train.py`` ...). Each composes ``conf/<name>.yaml`` with the command line's
overrides and runs one workflow under ``run_cli``; nothing is imported until the command runs.

    latentbridge-train [experiment=...] [key=value ...]          # latentbridge.workflows.train.run
    latentbridge-evaluate sweep=<multirun dir> | 'runs=[...]'    # latentbridge.workflows.evaluate.evaluate
    latentbridge-reproduce [plan=mini|mini_full|paper|tiny] [launcher=slurm] [--dry-run]  # workflows.reproduce
    latentbridge-complexity [experiment=...]                     # latentbridge.analysis.complexity.complexity
    latentbridge-mllm-evaluate 'runs=[...]' 'tasks=[...]'        # latentbridge.workflows.mllm_evaluate
    latentbridge-serve run=<run dir> [port=8000]                 # latentbridge.serve.main.serve
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from latentbridge.cli import hydra_command


def _work(module: str, name: str) -> Callable[[Any], Any]:
    return lambda cfg: getattr(importlib.import_module(module), name)(cfg)


def _train(cfg: Any) -> float | None:
    """Train; return the metric that selected the best checkpoint (what a Hydra sweeper optimizes)."""
    from latentbridge.workflows.train import run

    return run(cfg)["monitor"]["value"]


train = hydra_command("train", _train)
evaluate = hydra_command("evaluate", _work("latentbridge.workflows.evaluate", "evaluate"))
reproduce = hydra_command(
    "reproduce", _work("latentbridge.workflows.reproduce", "reproduce"), flags={"--dry-run": "dry_run=true"}
)
complexity = hydra_command("complexity", _work("latentbridge.analysis.complexity", "complexity"))
serve = hydra_command("serve", _work("latentbridge.serve.main", "serve"))
mllm_evaluate = hydra_command("mllm_evaluate", _work("latentbridge.workflows.mllm_evaluate", "mllm_evaluate"))
