"""One transform-neck for every rate (issue: rate-conditioned neck): conditioning off is the paper's neck exactly;
on, it starts as the paper's neck, learns to depend on the rate, and refuses a rate outside what it covers."""

import pytest
import torch

from latentbridge.nn.rate_conditioned_neck import RateConditionedNeck
from latentbridge.nn.transform_neck import TransformNeck


def test_conditioning_off_is_the_papers_neck_parameters_and_outputs():
    torch.manual_seed(0)
    paper = TransformNeck(320, 1024, 16, 16)
    torch.manual_seed(0)
    off = RateConditionedNeck(320, 1024, 16, 16)
    assert sum(p.numel() for p in off.parameters()) == 13_191_168
    on = RateConditionedNeck(320, 1024, 16, 16, rate_range=(0.004, 0.032))
    assert sum(p.numel() for p in on.parameters()) == 13_191_168 + (64 + 64) + (64 * 2048 + 2048)  # + FiLM
    assert off.state_dict().keys() == paper.state_dict().keys()
    y = torch.randn(2, 320, 16, 16)
    with torch.no_grad():
        assert torch.equal(off(y), paper(y)) and torch.equal(off(y, rate=0.008), paper(y))


def test_conditioned_starts_as_the_papers_neck_and_learns_to_depend_on_the_rate():
    torch.manual_seed(0)
    neck = RateConditionedNeck(8, 32, 2, 2, rate_range=(1e-4, 8e-4))
    torch.manual_seed(0)
    paper = TransformNeck(8, 32, 2, 2)
    y = torch.randn(4, 8, 2, 2)
    rates = torch.tensor([1e-4, 2e-4, 4e-4, 8e-4])
    with torch.no_grad():
        assert torch.equal(neck(y, rates), paper(y))  # zero-initialised FiLM
    opt = torch.optim.SGD(neck.parameters(), lr=0.1)
    target = rates.log()[:, None, None].expand(4, 5, 32)  # a target that needs the rate
    for _ in range(20):
        opt.zero_grad()
        (neck(y, rates) - target).square().mean().backward()
        opt.step()
    with torch.no_grad():
        assert not torch.allclose(neck(y[:1], 1e-4), neck(y[:1], 8e-4))


def test_a_rate_outside_the_range_is_refused_naming_rate_and_range():
    neck = RateConditionedNeck(8, 32, 2, 2, rate_range=(1e-4, 8e-4))
    with pytest.raises(
        ValueError, match=r"rate 0.0016 is outside the range this neck was trained on \[0.0001, 0.0008\]"
    ):
        neck(torch.randn(1, 8, 2, 2), 1.6e-3)
    with pytest.raises(ValueError, match="needs the stream's rate"):
        neck(torch.randn(1, 8, 2, 2))
    assert neck.rate_code(torch.tensor([1e-4 * (1 + 1e-7), 8e-4])).tolist() == pytest.approx([0.0, 1.0], abs=1e-6)
