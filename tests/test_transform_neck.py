import pytest
import torch

from latentbridge.nn.transform_neck import TransformNeck


def test_paper_configuration_has_table3_parameter_count():
    """ELIC (M=320) into ViT-L/14 (width 1024, 16 heads), 256x256 input -> 16x16 grid: 13,191,168 (Table 3)."""
    neck = TransformNeck(in_channels=320, width=1024, heads=16, grid_size=16)
    assert sum(p.numel() for p in neck.parameters()) == 13_191_168


def test_tokens_shape_and_class_token_first():
    neck = TransformNeck(in_channels=64, width=128, heads=4, grid_size=(4, 6))
    y_hat = torch.randn(3, 64, 4, 6)
    tokens = neck(y_hat)
    assert tokens.shape == (3, 1 + 4 * 6, 128)
    # positions are embedded: flipping the latent grid changes the patch tokens
    permuted = neck(y_hat.flip(-1))
    assert not torch.allclose(tokens[:, 1:], permuted[:, 1:])


def test_grid_follows_input_size_and_mismatch_is_a_clear_error():
    neck = TransformNeck(in_channels=8, width=32, heads=2, grid_size=4)
    assert neck.positional_embedding.shape == (17, 32)
    with pytest.raises(ValueError, match="4x4 latent grid, got 5x5"):
        neck(torch.randn(1, 8, 5, 5))


def test_gradients_reach_every_parameter():
    neck = TransformNeck(in_channels=8, width=32, heads=2, grid_size=2)
    neck(torch.randn(2, 8, 2, 2)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in neck.parameters())
