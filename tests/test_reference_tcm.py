"""The Transformer codec of Fig. 6(c) (issue: generality): our TCM (``codecs/tcm.py``) on the reference's seeded
random weights computes what the reference code (jmliu206/LIC_TCM ``models/tcm.py``) computed
(``tests/fixtures/reference/tcm_lic.pt``, provenance inside): y, means, scales, y_hat, the likelihoods and x_hat,
the same y and z strings byte for byte, and a LatentBridge bitstream decodes to the reference's y_hat. A released
checkpoint (``{"state_dict"}`` with DataParallel prefixes, the entropy tables inside) loads as it is."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from helpers.seeded import reference_error, seeded_state

from latentbridge.codecs.adapter import build_codec
from latentbridge.codecs.bitstream import decode_latent, encode_image
from latentbridge.core.errors import CheckpointError

FIXTURE = Path(__file__).parent / "fixtures" / "reference" / "tcm_lic.pt"
TOL = 1e-10  # max |ours - theirs| / max |theirs|, in float64 as the fixture was computed (provenance)
KEPT = list(range(16)) + list(range(304, 320))  # the channels the fixture keeps: the first and the last slice


@pytest.fixture(scope="module")
def golden():
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(scope="module")
def released_file(golden, tmp_path_factory):
    """The seeded weights as the reference's training script saves them: DataParallel names, entropy tables built."""
    codec = build_codec("tcm2023")
    torch.nn.Module.load_state_dict(codec.model, seeded_state(golden["manifest"], golden["seed"]), strict=False)
    codec.model.update(force=True)
    path = tmp_path_factory.mktemp("tcm") / "0.0025.pth.tar"
    state = {f"module.{k}": v for k, v in codec.model.state_dict().items()}
    torch.save({"epoch": 0, "state_dict": state, "optimizer": {}}, path)
    return path


@pytest.fixture(scope="module")
def codec(released_file):
    codec = build_codec("tcm2023", checkpoint=str(released_file), lmbda=0.0025).eval().double()
    codec.model.update(force=True)
    return codec


@pytest.mark.slow  # a 45 M-parameter codec at 256x256 on the CPU: ~20 s
def test_our_tcm_computes_and_codes_what_the_reference_tcm_does(golden, codec):
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(golden["x_seed"]), dtype=torch.float64)
    seen = {"means": [], "scales": []}
    m = codec.model

    def spy(module, args, kwargs):
        seen["scales"].append(args[1])
        seen["means"].append(kwargs["means"])

    hook = m.gaussian_conditional.register_forward_pre_hook(spy, with_kwargs=True)
    with torch.no_grad():
        y = m.g_a(x)
        y_hat, lik = codec.latent(x)
        x_hat = m.g_s(y_hat)
    hook.remove()
    ours = {"y": y[:, KEPT], "y_hat": y_hat[:, KEPT], "means": torch.cat(seen["means"], 1)[:, KEPT],
            "scales": torch.cat(seen["scales"], 1)[:, KEPT], "likelihoods_y": lik["y"][:, KEPT],
            "likelihoods_z": lik["z"], "x_hat": x_hat[..., :32, :32]}  # fmt: skip
    errs = {k: reference_error(v, golden[k], k, TOL) for k, v in ours.items()}
    print({k: f"{v:.2g}" for k, v in errs.items()})
    strings, _ = codec.compress_batch(x)
    (y_string,), (z_string,) = strings[0]
    for what, s in (("y_string", y_string), ("z_string", z_string)):
        assert {"bytes": len(s), "sha256": hashlib.sha256(s).hexdigest()} == golden[what], what
    decoded = codec.decompress_latent([[y_string], [z_string]], codec.coded_shape(256, 256))
    reference_error(codec.synthesize(decoded)[..., :32, :32], golden["decoded_x_hat"], "decoded x_hat", TOL)
    y_hat_bs, _ = decode_latent(codec, encode_image(codec, x, 0.0025), 0.0025)  # the server's view
    reference_error(y_hat_bs[:, KEPT].double(), golden["y_hat"], "y_hat from a LatentBridge bitstream", TOL)


def test_a_tcm_checkpoint_of_another_size_is_one_line(golden, tmp_path):
    state = seeded_state(golden["manifest"], golden["seed"])
    torch.save({"state_dict": {**state, "g_a.0.conv1.weight": torch.zeros(256, 3, 3, 3)}}, tmp_path / "n128.pth.tar")
    with pytest.raises(CheckpointError, match=r"n128.pth.tar is not a checkpoint of codec 'tcm2023'"):
        build_codec("tcm2023", checkpoint=str(tmp_path / "n128.pth.tar"), lmbda=0.0025)


def test_a_latent_grid_the_windows_cannot_tile_is_named():
    codec = build_codec("tcm2023", lmbda=0.0025).eval()
    with pytest.raises(ValueError, match="needs H and W divisible by 128"):
        codec.latent(torch.rand(1, 3, 192, 192))
    with pytest.raises(ValueError, match=r"a 12x12 latent grid does not tile into 8x8 attention windows"):
        codec.model(torch.rand(1, 3, 192, 192))
