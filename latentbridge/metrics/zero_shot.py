"""Zero-shot classification (paper 4.2, Fig. 3): the nearest class text embedding by cosine similarity."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def zero_shot_correct(image_emb: Tensor, text_emb: Tensor, labels: Tensor) -> Tensor:
    """1.0 where the nearest class embedding (cosine) is the label: zero-shot top-1 per sample."""
    pred = (F.normalize(image_emb.float(), dim=-1) @ text_emb.float().t()).argmax(dim=-1)
    return (pred == labels).float()
