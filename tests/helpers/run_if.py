"""``RunIf``: skip a test unless the machine has what it needs (after lightning-hydra-template's helper)."""

from __future__ import annotations

import pytest
import torch


def RunIf(min_gpus: int = 0, bf16: bool = False) -> pytest.MarkDecorator:  # noqa: N802 - reads as a marker
    """``@RunIf(min_gpus=1)``: skipped without that many CUDA devices (or, with ``bf16``, without bf16 support)."""
    reasons = []
    if torch.cuda.device_count() < min_gpus:
        reasons.append(f"needs {min_gpus} CUDA device(s), found {torch.cuda.device_count()}")
    if bf16 and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        reasons.append("needs a CUDA device with bf16")
    return pytest.mark.skipif(bool(reasons), reason="; ".join(reasons))
