"""5-way 1-shot classification (paper A.1): seeded groups of five support images from five different classes
and one new query image from one of them; the query takes the class of its nearest support embedding (cosine).
Here it runs on the vision encoder's embeddings (the paper feeds the groups to V2L-Tokenizer's LLM)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def sample_groups(labels: np.ndarray, groups: int = 5000, ways: int = 5, seed: int = 0) -> np.ndarray:
    """(groups, ways + 1) indices: ``ways`` supports of distinct classes, then the query (the last column);
    the query's class is that of support ``g[answer]``, and the query is never its own support."""
    rng = np.random.default_rng(seed)
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    eligible = [c for c, idx in by_class.items() if len(idx) >= 2]
    if len(eligible) < ways:
        raise ValueError(f"few-shot needs {ways} classes with >= 2 images, found {len(eligible)}")
    out = np.empty((groups, ways + 1), dtype=np.int64)
    for g in range(groups):
        classes = rng.choice(eligible, size=ways, replace=False)
        supports = [rng.choice(by_class[c]) for c in classes]
        answer = rng.integers(ways)
        pool = by_class[classes[answer]]
        query = rng.choice(pool[pool != supports[answer]])
        out[g] = [*supports, query]
    return out


def few_shot_accuracy(embeddings: Tensor, labels: Tensor, groups: np.ndarray) -> float:
    """Accuracy of nearest-support classification over the sampled groups."""
    emb = F.normalize(embeddings.float(), dim=-1)
    idx = torch.from_numpy(groups)
    support, query = emb[idx[:, :-1]], emb[idx[:, -1]]
    pred = torch.einsum("gwd,gd->gw", support, query).argmax(dim=1)
    hit = labels[idx[torch.arange(len(idx)), pred]] == labels[idx[:, -1]]
    return float(hit.float().mean())
