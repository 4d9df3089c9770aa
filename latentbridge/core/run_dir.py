"""The layout of a run directory: ``.hydra/config.yaml`` holds its composed config (where Hydra writes it;
training writes it there too when it runs outside a Hydra command), ``results.json`` names its best and last
checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

from latentbridge.core.errors import CheckpointError


def config_file(run_dir: str | Path) -> Path:
    """Where a run directory keeps its composed config."""
    return Path(run_dir) / ".hydra" / "config.yaml"


def checkpoint_of(path: str | Path, key: str) -> Path:
    """A checkpoint file as given, or a finished run directory's best checkpoint, else its last one; one-line
    errors naming ``key`` otherwise."""
    path = Path(path)
    if path.is_dir():
        results = path / "results.json"
        if not results.is_file():
            raise CheckpointError(f"{key}: {path} is a directory without results.json (not a finished run)")
        found = json.loads(results.read_text())
        ckpt = found.get("best_checkpoint") or found.get("last_checkpoint")
        if not ckpt:
            raise CheckpointError(f"{key}: {results} names no checkpoint")
        path = Path(ckpt)
    if not path.is_file():
        raise CheckpointError(f"{key}: {path} does not exist")
    return path
