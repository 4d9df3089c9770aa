"""Atomic writes: a file is either absent, the old version, or complete. Never half-written."""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from latentbridge.core.errors import CheckpointError


def _replace_into(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` through a temporary file and ``os.replace``."""
    data = (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()
    _replace_into(Path(path), lambda f: f.write(data))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    _replace_into(Path(path), lambda f: f.write(data))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temporary file and ``os.replace``."""
    _replace_into(Path(path), lambda f: torch.save(obj, f))


def read_checkpoint(path: str | Path, what: str) -> Any:
    """``torch.load`` a local file with ``weights_only=True``: tensors, containers and plain Python values only,
    so a crafted file can never run code (checkpoints come from the internet). Every file LatentBridge writes
    (codec and teacher exports, Lightning checkpoints) holds only those. A missing, unreadable or unsafe file is a
    one-line CheckpointError naming ``what`` (the config key or role of the file)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what}: {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):  # a pickle naming classes or functions: the way code gets run
            raise CheckpointError(
                f"{what}: {path} holds Python objects other than tensors and plain values; refused "
                "(loading it could run code)"
            ) from None
        raise CheckpointError(f"{what}: {path} is not a readable checkpoint (UnpicklingError)") from None
    except Exception as e:
        raise CheckpointError(f"{what}: {path} is not a readable checkpoint ({type(e).__name__})") from None
