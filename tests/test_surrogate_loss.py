import math

import pytest
import torch
import torch.nn.functional as F

from latentbridge.core.errors import ConfigError
from latentbridge.losses.surrogate import ProgressiveSchedule, SurrogateLoss, class_logits
from latentbridge.metrics.zero_shot import zero_shot_correct


def test_progressive_schedule_boundaries_match_eq4():
    s = ProgressiveSchedule(e1=20, e2=40, alpha=1.0, beta=100.0)
    assert s.weights(0) == (1.0, 0.0)
    assert s.weights(19) == (1.0, 0.0)
    assert s.weights(20) == (1.0, 100.0)
    assert s.weights(39) == (1.0, 100.0)
    assert s.weights(40) == (0.0, 1.0)
    assert ProgressiveSchedule(0, 0).weights(0) == (0.0, 1.0)  # distillation only
    assert ProgressiveSchedule(math.inf, math.inf).weights(10**6) == (1.0, 0.0)  # cross-entropy only


def test_loss_is_the_weighted_sum_of_ce_and_mse():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 8, requires_grad=True), torch.randn(5, 8)
    text = F.normalize(torch.randn(3, 8), dim=-1)
    labels = torch.tensor([0, 1, 2, 0, 1])
    loss_fn = SurrogateLoss(e1=1, e2=3, alpha=1.0, beta=100.0, similarity="cosine", logit_scale=1.0)
    out = loss_fn(student, teacher, text, labels, epoch=2)
    ce = F.cross_entropy(F.normalize(student, dim=-1) @ text.t(), labels)
    mse = F.mse_loss(student, teacher)
    assert (out.ce_weight, out.dist_weight) == (1.0, 100.0)
    torch.testing.assert_close(out.loss, ce + 100.0 * mse)
    torch.testing.assert_close(out.ce, ce.detach())
    out.loss.backward()
    assert student.grad is not None


def test_reference_similarity_uses_unnormalized_image_embedding():
    img, text = torch.randn(2, 4) * 5, F.normalize(torch.randn(3, 4), dim=-1)
    torch.testing.assert_close(class_logits(img, text, "reference", 1.0), img @ text.t())
    cos = class_logits(img, text, "cosine", 100.0)
    assert cos.abs().max() <= 100.0 + 1e-4


def test_unknown_similarity_names_the_config_key():
    with pytest.raises(ConfigError, match="loss.similarity"):
        SurrogateLoss(similarity="dot")
    with pytest.raises(ConfigError, match="loss.e2"):
        SurrogateLoss(e1=5, e2=2)


def test_zero_shot_correct_picks_the_nearest_class():
    text = torch.eye(3)
    img = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 3.0]])
    assert zero_shot_correct(img, text, torch.tensor([0, 1])).tolist() == [1.0, 0.0]
