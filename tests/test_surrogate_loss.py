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


def test_token_distortion_is_the_mean_of_two_minus_twice_the_pearson_correlation():
    """losses/token.py (shared with paper 2's L_tk): parameter-free LayerNorm, then MSE = mean_i 2 (1 - rho_i)."""
    from latentbridge.losses.token import token_distortion

    torch.manual_seed(0)
    a, b = torch.randn(2, 5, 64, dtype=torch.float64), torch.randn(2, 5, 64, dtype=torch.float64)
    ac, bc = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    rho = (ac * bc).sum(-1) / (ac.norm(dim=-1) * bc.norm(dim=-1))
    assert float(token_distortion(a, b)) == pytest.approx(float((2 * (1 - rho)).mean()), rel=1e-4)
    assert float(token_distortion(a, 3 * a + 1)) == pytest.approx(0.0, abs=1e-6)  # scale and shift free
    assert float(token_distortion(a, b, norm="none")) == pytest.approx(float(((a - b) ** 2).mean()))
    with pytest.raises(ValueError, match="token shapes differ"):
        token_distortion(a, b[:, :4])


def test_token_weight_adds_the_token_term_and_needs_the_tokens():
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 8), torch.randn(4, 8)
    text, labels = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1), torch.tensor([0, 1, 2, 0])
    tokens, target = torch.randn(4, 5, 16), torch.randn(4, 5, 16)
    plain = SurrogateLoss(e1=0, e2=0)(student, teacher, text, labels, 0)
    with_tokens = SurrogateLoss(e1=0, e2=0, token_weight=0.5)(student, teacher, text, labels, 0, tokens, target)
    from latentbridge.losses.token import token_distortion

    expected = plain.loss + 0.5 * token_distortion(tokens, target)
    assert float(with_tokens.loss) == pytest.approx(float(expected)) and plain.tokens is None
    with pytest.raises(ValueError, match="token_weight > 0 needs"):
        SurrogateLoss(token_weight=0.5)(student, teacher, text, labels, 0)
    with pytest.raises(ConfigError, match="loss.token_weight: -1"):
        SurrogateLoss(token_weight=-1)
