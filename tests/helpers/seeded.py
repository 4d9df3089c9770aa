"""Seeded random weights from a manifest of parameter names and shapes: the weights the reference fixtures
(``tests/fixtures/reference/``) were computed with, regenerated here rather than stored (ELIC alone is 36 M floats).

The rule (fixed before any fixture was made): tensor ``i`` of the manifest draws from ``Generator(seed * 1_000_003 +
i)``; by its name and shape
- an entropy bottleneck's quantiles: [-10, 0, 10] + the same N(0, 0.2) per channel (random medians, ordered);
  its matrices N(-1.45, 0.1) (compressai's initial value for 10 / 3 filters), biases U(-0.5, 0.5), factors N(0, 0.1);
- a weight of 2 or more dimensions (convolutions, linear layers): N(0, 1 / fan_in), fan_in = prod(shape[1:]);
- a 1-D weight (LayerNorm): 1 + N(0, 0.1); a bias: N(0, 0.02);
- anything else (class token, positional embedding, projection): N(0, 1 / shape[-1]).
Added for TCM's GDN layers (no earlier fixture has one), in compressai's reparametrized space: beta 1 + N(0, 0.1),
gamma sqrt(0.1) I + |N(0, 0.01)| (a (C, C) matrix).
Derived buffers and constants (entropy tables, masks, the entropy models' lower bounds) are not in manifests: each
model keeps its own.
"""

from __future__ import annotations

import math

import torch

DERIVED = (
    "_quantized_cdf",
    "_offset",
    "_cdf_length",
    "scale_table",
    "target",
    "mask",
    "bound",
    "scale_bound",
    "pedestal",
)


def manifest_of(state: dict[str, torch.Tensor]) -> list[tuple[str, list[int]]]:
    """The (name, shape) of every tensor that is not derived."""
    return [(k, list(v.shape)) for k, v in state.items() if k.split(".")[-1] not in DERIVED]


def seeded_tensor(name: str, shape: list[int], seed: int, index: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    leaf = name.split(".")[-1]
    randn = lambda std: std * torch.randn(shape, generator=g)  # noqa: E731
    if "entropy_bottleneck" in name:
        if leaf == "quantiles":
            base = torch.tensor([-10.0, 0.0, 10.0]).expand(shape)
            return base + randn(0.2)[..., :1].expand(shape)
        if leaf.startswith("_matrix") or ".matrices." in f".{name}":
            return -1.45 + randn(0.1)
        if leaf.startswith("_bias") or ".biases." in f".{name}":
            return torch.rand(shape, generator=g) - 0.5
        if leaf.startswith("_factor") or ".factors." in f".{name}":
            return randn(0.1)
    if leaf == "beta" and (".gdn." in f".{name}" or ".igdn." in f".{name}"):
        return 1.0 + randn(0.1)
    if leaf == "gamma" and (".gdn." in f".{name}" or ".igdn." in f".{name}"):
        return math.sqrt(0.1) * torch.eye(shape[0]) + randn(0.01).abs()
    if leaf.endswith("weight") and len(shape) >= 2:
        return randn(1.0 / math.sqrt(math.prod(shape[1:])))
    if leaf.endswith("weight"):
        return 1.0 + randn(0.1)
    if leaf.endswith("bias"):
        return randn(0.02)
    return randn(1.0 / math.sqrt(shape[-1] if shape else 1))


def seeded_state(manifest: list[tuple[str, list[int]]], seed: int) -> dict[str, torch.Tensor]:
    return {name: seeded_tensor(name, shape, seed, i) for i, (name, shape) in enumerate(manifest)}


def reference_error(ours: torch.Tensor, theirs: torch.Tensor, what: str, tol: float) -> float:
    """The reference fixtures' measure, max |ours - theirs| / max |theirs|, asserted to be at most ``tol``."""
    err = float((ours - theirs).abs().max() / theirs.abs().max())
    assert err <= tol, f"{what}: largest difference {err:.3g} of the largest value"
    return err
