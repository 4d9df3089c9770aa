"""The surrogate loss L_S (paper 3.4, Eq. 1-4): training never touches the LLM, only the vision encoder C.

- Distillation (Eq. 1): MSE between C'(T(y_hat)) and C(x), on the projected class embedding.
- Cross-entropy (Eq. 2-3): similarities between the image embedding and the class text embeddings -> softmax
  -> CE. ``similarity="cosine"`` is the paper's description (scaled by ``logit_scale``, 1.0 = the paper as
  written); ``similarity="reference"`` is what the reference code does (un-normalized image embedding times
  normalized text weights, no scale).
- Progressive schedule (Eq. 4): CE only before E1, alpha*CE + beta*dist until E2, dist only after.
- Beyond the paper, off by default (``token_weight=0``): token-level distillation, the transform-neck's tokens
  entering block k matched to the teacher's hidden states after block k (all tokens, ``losses/token.py``), added
  with a constant weight at every epoch.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from latentbridge.core.errors import ConfigError
from latentbridge.losses.token import token_distortion


class SurrogateLossOutput(NamedTuple):
    """Typed loss output: the weighted total and each term, all logged."""

    loss: Tensor
    ce: Tensor
    dist: Tensor
    ce_weight: float
    dist_weight: float
    tokens: Tensor | None = None


class ProgressiveSchedule(NamedTuple):
    """Eq. 4. ``e1 = e2 = 0`` gives distillation only; ``e1 = e2 = inf`` gives cross-entropy only."""

    e1: float = 20
    e2: float = 40
    alpha: float = 1.0
    beta: float = 100.0

    def weights(self, epoch: int) -> tuple[float, float]:
        """(CE weight, distillation weight) at ``epoch``."""
        if epoch < self.e1:
            return 1.0, 0.0
        if epoch < self.e2:
            return self.alpha, self.beta
        return 0.0, 1.0


def class_logits(
    image_emb: Tensor, text_emb: Tensor, similarity: Literal["cosine", "reference"], logit_scale: float
) -> Tensor:
    """Eq. 2: the vector v of similarities between each image embedding and the m normalized class embeddings."""
    if similarity == "cosine":
        return logit_scale * F.normalize(image_emb, dim=-1) @ text_emb.t()
    if similarity == "reference":
        return image_emb @ text_emb.t()
    raise ValueError(f"loss.similarity: unknown similarity '{similarity}' (cosine, reference)")


class SurrogateLoss(nn.Module):
    """L_S of Eq. 4, with both terms always computed (for logging) and weighted by the schedule."""

    def __init__(
        self,
        e1: float = 20,
        e2: float = 40,
        alpha: float = 1.0,
        beta: float = 100.0,
        similarity: Literal["cosine", "reference"] = "cosine",
        logit_scale: float = 1.0,
        token_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if similarity not in ("cosine", "reference"):
            raise ConfigError(f"loss.similarity: unknown similarity '{similarity}' (cosine, reference)")
        for key, value in (
            ("e1", e1),
            ("e2", e2),
            ("alpha", alpha),
            ("beta", beta),
            ("logit_scale", logit_scale),
            ("token_weight", token_weight),
        ):
            if not value >= 0:
                raise ConfigError(f"loss.{key}: {value} is negative")
        if e2 < e1:
            raise ConfigError(f"loss.e2: {e2} is before loss.e1 = {e1} (Eq. 4 needs E1 <= E2)")
        self.schedule = ProgressiveSchedule(e1, e2, alpha, beta)
        self.similarity = similarity
        self.logit_scale = logit_scale
        self.token_weight = float(token_weight)

    def forward(
        self,
        student: Tensor,
        teacher: Tensor,
        text_emb: Tensor,
        labels: Tensor,
        epoch: int,
        student_tokens: Tensor | None = None,
        teacher_tokens: Tensor | None = None,
    ) -> SurrogateLossOutput:
        """student = C'(T(y_hat)), teacher = C(x) (no gradient), text_emb (m, D) normalized, labels (B,); with
        ``token_weight``: the neck's tokens and the teacher's tokens after block k, (B, 1 + HW, width)."""
        ce = F.cross_entropy(class_logits(student, text_emb, self.similarity, self.logit_scale), labels)
        dist = F.mse_loss(student, teacher.detach())
        w_ce, w_dist = self.schedule.weights(epoch)
        loss = w_ce * ce + w_dist * dist
        tokens = None
        if self.token_weight:
            if student_tokens is None or teacher_tokens is None:
                raise ValueError("loss.token_weight > 0 needs the neck's and the teacher's tokens")
            tokens = token_distortion(student_tokens, teacher_tokens)
            loss = loss + self.token_weight * tokens
            tokens = tokens.detach()
        return SurrogateLossOutput(loss, ce.detach(), dist.detach(), w_ce, w_dist, tokens)


__all__ = ["ProgressiveSchedule", "SurrogateLoss", "SurrogateLossOutput", "class_logits"]
