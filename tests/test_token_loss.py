"""Paper 2's token losses (design 2.5, tests 7-10): exact values and the invariances each is chosen for."""

import pytest
import torch
from compressai.losses import RateDistortionLoss

from latentbridge.losses.token import effective_rank, rank_loss, spectrum, token_distortion
from latentbridge.losses.token_rate import TokenRateLoss


def _tokens(seed=0, n=17, c=32, batch=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n, c, generator=g, dtype=torch.float64)


def test_token_distortion_is_mean_two_one_minus_pearson_and_affine_invariant():
    t, t_hat = _tokens(0), _tokens(1)
    assert float(token_distortion(t, t)) == 0.0
    pearson = torch.stack(
        [torch.corrcoef(torch.stack([a, b]))[0, 1] for a, b in zip(t.reshape(-1, 32), t_hat.reshape(-1, 32))]
    )
    assert abs(float(token_distortion(t_hat, t)) - float((2 * (1 - pearson)).mean())) < 1e-5
    # invariant up to the LayerNorm eps (1e-6 against the variance)
    assert abs(float(token_distortion(3 * t_hat + 2, 3 * t + 2)) - float(token_distortion(t_hat, t))) < 1e-5
    assert abs(float(token_distortion(-t, t)) - 4.0) < 1e-4


def test_rank_loss_is_zero_on_equal_spectra_and_invariant_to_rotation_permutation_scale_and_shift():
    t, t_hat = _tokens(0), _tokens(0) + 0.5 * _tokens(2)
    base = float(rank_loss(t_hat, t))
    assert float(rank_loss(t, t)) == 0.0 and base > 0
    q, _ = torch.linalg.qr(torch.randn(32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3)))
    assert abs(float(rank_loss(t_hat @ q, t)) - base) < 1e-6
    assert abs(float(rank_loss(t_hat[:, torch.randperm(17)], t)) - base) < 1e-6
    assert abs(float(rank_loss(7.5 * t_hat - 3.0, t)) - base) < 1e-6
    assert abs(float(spectrum(t).sum(-1).mean()) - 1.0) < 1e-9  # normalised eigenvalues


def test_rank_loss_grows_as_the_tokens_lose_directions():
    """T_k = mean token + the centred tokens truncated to their top-k singular directions: blur-like collapse."""
    t = _tokens(4, batch=1)
    mean = t.mean(1, keepdim=True)
    u, s, vh = torch.linalg.svd(t - mean, full_matrices=False)
    rank = int((s > 1e-9).sum())
    losses = []
    for k in range(rank, 0, -1):
        truncated = mean + (u[..., :k] * s[..., :k].unsqueeze(-2)) @ vh[..., :k, :]
        losses.append(float(rank_loss(truncated, t)))
    assert all(b >= a - 1e-12 for a, b in zip(losses, losses[1:]))
    assert losses[1] > losses[0] and losses[-1] > losses[len(losses) // 2]
    assert float(effective_rank(t)) > float(
        effective_rank(mean + (u[..., :2] * s[..., :2].unsqueeze(-2)) @ vh[..., :2, :])
    )


@pytest.mark.parametrize("case", ["identical tokens", "orthonormal rows"])
def test_rank_loss_gradients_are_finite_on_degenerate_spectra(case):
    target = _tokens(5).float()
    tokens = torch.ones(2, 17, 32) if case == "identical tokens" else torch.eye(32)[:17].repeat(2, 1, 1) * 3
    tokens.requires_grad_(True)
    rank_loss(tokens, target).backward()
    assert torch.isfinite(tokens.grad).all()


def test_pixel_only_objective_equals_compressai_rate_distortion_loss():
    torch.manual_seed(0)
    x, x_hat = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    likelihoods = {"y": torch.rand(2, 8, 4, 4) * 0.9 + 0.05, "z": torch.rand(2, 4, 2, 2) * 0.9 + 0.05}
    ours = TokenRateLoss(w_pix=1.0, kappa=5e4, ltk=0.0, lrk=0.0)(likelihoods, x, x, x_hat, lmbda=0.0042)
    theirs = RateDistortionLoss(lmbda=0.0042)({"x_hat": x_hat, "likelihoods": likelihoods}, x)
    assert abs(float(ours.loss) - float(theirs["loss"])) < 1e-6 and ours.token is None and ours.rank is None


def test_identical_decoded_image_gives_zero_token_losses():
    t = _tokens(6).float()
    x = torch.rand(2, 3, 32, 32)
    out = TokenRateLoss()({"y": torch.full((2, 4), 0.5)}, x, x, x, 0.001, t.clone(), t)
    assert float(out.token) == 0.0 and float(out.rank) == 0.0 and float(out.mse) == 0.0
