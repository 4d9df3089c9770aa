"""Content digests: what a cache or a checkpoint is valid for, as a short hex string."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

#: derived tensors (compressai's entropy-coder tables, rebuilt by ``update()``) that do not change what a module
#: computes: left out of digests (and of scenario checkpoints: ``codecs.adapter.ENTROPY_TABLES``)
DERIVED = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def state_digest(module: nn.Module) -> str:
    """SHA-256 (16 hex digits) of a module's parameters and persistent buffers, names and values."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if name.endswith(DERIVED):
            continue
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())  # the raw bytes, whatever the dtype
    return h.hexdigest()[:16]


def json_digest(obj: Any) -> str:
    """SHA-256 (16 hex digits) of a JSON-serializable object, key order ignored."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
