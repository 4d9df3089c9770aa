"""The reference ELIC (issue: run the paper's own models): Chandelier's checkpoints and the ``state_dict`` of the
released d1-d3 files load into our ELIC (compressai's Elic2022Chandelier through ``codecs/published.py``), and on
the reference's seeded random weights it computes what the reference code computed (``tests/fixtures/reference/``):
y, y_hat, means, scales, likelihoods and x_hat at 64x64 and 256x256, and a real bitstream decodes to that y_hat."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.seeded import reference_error, seeded_state

from latentbridge.codecs.adapter import build_codec
from latentbridge.codecs.bitstream import decode_latent, encode_image
from latentbridge.core.errors import CheckpointError

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
TOL = 1e-5  # max |ours - theirs| / max |theirs|


@pytest.fixture(scope="module")
def golden():
    return torch.load(FIXTURES / "elic_chandelier.pt", weights_only=True)


@pytest.fixture(scope="module")
def chandelier_file(golden, tmp_path_factory):
    """A checkpoint in Chandelier's format (``{"epoch", "state_dict"}``, compressai 1.1.5 names) of the seeded
    weights the fixture was computed with."""
    path = tmp_path_factory.mktemp("elic") / "chandelier_random.pth.tar"
    torch.save({"epoch": 0, "state_dict": seeded_state(golden["manifest"], golden["seed"])}, path)
    return path


@pytest.fixture(scope="module")
def codec(chandelier_file):
    codec = build_codec("elic2022-chandelier", checkpoint=str(chandelier_file), lmbda=0.004).eval()
    codec.model.update(force=True)
    return codec


def _ours(codec, x):
    """y, y_hat, means, scales, likelihoods (y by channel group, z) and unclamped x_hat of our codec."""
    seen = {"means": [], "scales": []}
    hooks = []
    for k in range(len(codec.model.groups)):
        gc = codec.model.latent_codec["y"].latent_codec[f"y{k}"].latent_codec["y"].gaussian_conditional

        def spy(module, args, kwargs):
            seen["scales"].append(args[1].detach())
            seen["means"].append(kwargs.get("means", args[2] if len(args) > 2 else None).detach())

        hooks.append(gc.register_forward_pre_hook(spy, with_kwargs=True))
    with torch.no_grad():
        y = codec.model.g_a(x)
        y_hat, lik = codec.latent(x)
        x_hat = codec.model.g_s(y_hat)
    for h in hooks:
        h.remove()
    return {"y": y, "y_hat": y_hat, "means": torch.cat(seen["means"], 1), "scales": torch.cat(seen["scales"], 1),
            "likelihoods_y": lik["y"], "likelihoods_z": lik["z"], "x_hat": x_hat}  # fmt: skip


@pytest.mark.parametrize("size", [64, 256])
def test_our_elic_computes_what_the_reference_elic_computes(golden, codec, size):
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(golden["x_seed"][size]))
    theirs = golden[f"at{size}"]
    ours = _ours(codec, x)
    ours["x_hat"] = ours["x_hat"][..., :64, :64]  # the fixture keeps a 64x64 crop at 256x256
    errs = {k: reference_error(ours[k], v, k, TOL) for k, v in theirs.items()}
    assert set(errs) >= {"y", "y_hat", "likelihoods_y", "likelihoods_z", "x_hat"}
    print(size, {k: f"{v:.2g}" for k, v in errs.items()})
    # the server's view: a real LatentBridge bitstream decodes to the reference's y_hat
    y_hat, _ = decode_latent(codec, encode_image(codec, x, 0.004), 0.004)
    reference_error(y_hat, theirs["y_hat"], "decoded y_hat", TOL)


def test_a_released_d1_file_gives_its_elic_to_codec_checkpoint(golden, codec, tmp_path):
    """The released files: ``{"epoch", "state_dict": ELIC_LLM (DataParallel prefixes), "adapter", ...}``."""
    state = {f"module.{k}": v for k, v in seeded_state(golden["manifest"], golden["seed"]).items()}
    path = tmp_path / "d1_1.pth.tar"
    torch.save({"epoch": 59, "state_dict": state, "adapter": {}, "optimizer": {}, "lr_scheduler": {}}, path)
    released = build_codec("elic2022-chandelier", checkpoint=str(path), lmbda=0.004).model.state_dict()
    for k, v in codec.model.state_dict().items():
        if k.endswith("context_prediction.weight"):  # masked in place by every forward (the reference's too)
            mask = released[k.replace("weight", "mask")]
            assert torch.equal(released[k] * mask, v * mask), k
        elif not k.endswith(("_quantized_cdf", "_offset", "_cdf_length", "scale_table")):
            assert torch.equal(released[k], v), k


def test_another_architecture_or_codec_is_one_line_naming_the_key(golden, tmp_path):
    state = seeded_state(golden["manifest"], golden["seed"])
    small = dict(state, **{"g_a.0.weight": torch.zeros(128, 3, 5, 5)})
    torch.save({"state_dict": small}, tmp_path / "n128.pth.tar")
    with pytest.raises(CheckpointError) as err:
        build_codec("elic2022-chandelier", checkpoint=str(tmp_path / "n128.pth.tar"), lmbda=0.004)
    assert str(err.value).endswith("'g_a.0.weight' has shape (128, 3, 5, 5), compressai's Elic2022Chandelier "
                                   "(N=192, M=320) has (192, 3, 5, 5)")  # fmt: skip
    torch.save({"state_dict": {**state, "g_a.99.weight": torch.zeros(1)}}, tmp_path / "extra.pth.tar")
    with pytest.raises(CheckpointError, match="key 'g_a.99.weight' has no counterpart"):
        build_codec("elic2022-chandelier", checkpoint=str(tmp_path / "extra.pth.tar"), lmbda=0.004)
    torch.save({"state_dict": {k: v for k, v in state.items() if not k.startswith("ParamAggregation.4.")}},
               tmp_path / "truncated.pth.tar")  # fmt: skip
    with pytest.raises(CheckpointError, match="needs 'latent_codec.y.latent_codec.y4.entropy_parameters.0.weight'"):
        build_codec("elic2022-chandelier", checkpoint=str(tmp_path / "truncated.pth.tar"), lmbda=0.004)
    with pytest.raises(CheckpointError, match="it loads into codec=elic"):
        build_codec("mbt2018-mean", checkpoint=str(tmp_path / "extra.pth.tar"), lmbda=0.004)
