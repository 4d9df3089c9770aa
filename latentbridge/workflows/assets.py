"""The prepared mini assets shipped with the project (issue: mini reproductions, first contact).

A first ``make train`` needs the mini teacher and the mini codec at the default rate point; training them takes
14 + 19 minutes on 2 cores, before the 3-minute run a new user came for. ``assets/mini/`` holds both, exactly as the
framework trained them (``manifest.json``: path under ``paths.cache_dir``, sha256, the recipe that built it, its
validation metrics, the versions). When a run needs a checkpoint with a ``prepare`` recipe that is missing, the
shipped file with the same relative path and the recorded sha256 is copied into the cache instead of training it
(``use_shipped_assets: false`` trains it). ``make prepare`` (``scripts/prepare_mini.py``) rebuilds each shipped asset
from its recipe in a scratch cache and checks the rebuild against it: the same seed gives the same validation
metrics within the tolerances fixed there (seed noise), and says whether the weights are bit-identical.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from latentbridge.core.errors import ConfigError


def assets_dir() -> Path:
    """``assets/mini`` of the checkout whose ``conf/`` the commands read."""
    from latentbridge.core.config import conf_path

    return Path(conf_path()).parent / "assets" / "mini"


def manifest(folder: Path | None = None) -> dict[str, Any]:
    path = (folder or assets_dir()) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {"assets": {}}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def take_shipped(checkpoint: str | Path, cache_dir: str | Path, recipe: list[str]) -> bool:
    """Copy the shipped asset for ``checkpoint`` (a path under ``cache_dir``) into place; False if none is shipped
    or it was built by another recipe. A shipped file whose sha256 differs from the manifest's is a one-line error
    (a damaged checkout)."""
    from latentbridge.core.atomic_io import atomic_write_bytes

    try:
        relative = Path(checkpoint).resolve().relative_to(Path(cache_dir).resolve()).as_posix()
    except ValueError:
        return False
    entry = manifest()["assets"].get(relative)
    source = assets_dir() / relative
    if entry is None or not source.is_file() or list(entry["recipe"]) != [str(r) for r in recipe]:
        return False
    if sha256(source) != entry["sha256"]:
        raise ConfigError(f"use_shipped_assets: {source} does not match its sha256 in manifest.json (damaged "
                          "checkout? git checkout it, or set use_shipped_assets=false to train it)")  # fmt: skip
    atomic_write_bytes(Path(checkpoint), source.read_bytes())
    return True


def record(relative: str, file: Path, recipe: list[str], metrics: dict[str, float], folder: Path | None = None) -> None:
    """Ship ``file`` as ``relative`` (copied into ``assets/mini``) with its manifest entry."""
    import platform

    import lightning
    import torch

    from latentbridge.core.atomic_io import atomic_write_json

    folder = folder or assets_dir()
    target = folder / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(file, target)
    data = manifest(folder)
    data["assets"][relative] = {
        "sha256": sha256(target),
        "bytes": target.stat().st_size,
        "recipe": list(recipe),
        "metrics": metrics,
        "versions": {
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "python": platform.python_version(),
        },  # fmt: skip
    }
    atomic_write_json(folder / "manifest.json", data)
