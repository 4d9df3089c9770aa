"""Complexity analysis (paper 4.4, Table 3): parameters and kMAC/pixel of each server-side component.

MACs are counted with ``torch.utils.flop_counter`` (FLOPs / 2). Attention is counted: the MultiheadAttention
fast path is disabled and scaled-dot-product attention runs on the math backend, whose matmuls the counter sees
(the CPU fused kernels have no FLOP formula, so they would count as zero).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


@dataclass
class ComponentCost:
    """One row of the complexity table."""

    component: str
    params: int
    macs: int
    kmac_per_pixel: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def _countable_attention() -> Iterator[None]:
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


@torch.no_grad()
def count_macs(fn: Callable[..., Any], *inputs: Any) -> int:
    """Multiply-accumulates of ``fn(*inputs)``, attention included."""
    with _countable_attention(), FlopCounterMode(display=False) as counter:
        fn(*inputs)
    return counter.get_total_flops() // 2


def cost(
    component: str, modules: list[nn.Module], fn: Callable[..., Any], *inputs: Any, pixels: int, extra_params: int = 0
) -> ComponentCost:
    """Parameters of ``modules`` (+ ``extra_params``) and MACs of ``fn(*inputs)`` per input pixel."""
    params = sum(p.numel() for m in modules for p in m.parameters()) + extra_params
    macs = count_macs(fn, *inputs)
    return ComponentCost(component, params, macs, macs / pixels / 1e3)
