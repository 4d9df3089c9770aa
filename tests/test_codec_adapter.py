import math

import pytest
import torch

from latentbridge.codecs.adapter import CODECS, bits_per_pixel, build_codec, codec_checkpoint
from latentbridge.core.errors import CheckpointError, ConfigError

SMALL = {
    "mini": {"N": 16, "M": 24},
    "mbt2018-mean": {"N": 16, "M": 24},
    "bmshj2018-hyperprior": {"N": 16, "M": 24},
    "elic2022-chandelier": {"N": 16, "M": 160},
    "elic2022-official": {"N": 16, "M": 160},
    "mini-vbr": {"N": 16, "M": 24},
    "mbt2018-mean-vbr": {"N": 16, "M": 24},
    "tcm2023": {"N": 32, "M": 40},  # 5 slices of 8 channels; one attention head of 32 per block
    "mini-tcm": {"N": 8, "M": 16},
}


def test_every_registered_codec_is_covered():
    assert set(SMALL) == set(CODECS)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_latent_is_the_y_hat_that_compress_codes(name):
    """y_hat from latent() is what a decoder recovers from the real bitstream (compress -> decompress)."""
    torch.manual_seed(0)
    codec = build_codec(name, arch=SMALL[name]).eval()
    p = max(64, codec.pad_multiple)
    x = torch.rand(2, 3, p, 2 * p)
    gain = codec.ladder.gain(0.4) if codec.variable_rate else None  # a variable-rate codec codes at a given rate
    rate = {"inputscale": torch.tensor(gain)} if gain else {}
    with torch.no_grad():
        y_hat, likelihoods = codec.latent(x, gain)
        s = CODECS[name].stride
        assert y_hat.shape == (2, SMALL[name]["M"], p // s, 2 * p // s)
        assert codec.latent_channels == SMALL[name]["M"]
        codec.model.update(force=True)
        if "tcm" in name:  # coded by the adapter (the reference's single y string per image)
            strings = codec.compress(x)["strings"]
            decoded_y = codec.decompress_latent(strings, codec.coded_shape(p, 2 * p))
            torch.testing.assert_close(decoded_y, y_hat, atol=1e-4, rtol=0)
        elif name.startswith("elic"):
            enc = codec.model.compress(x, **rate)
            decoded_y = codec.model.latent_codec.decompress(enc["strings"], enc["shape"])["y_hat"]
            torch.testing.assert_close(decoded_y, y_hat, atol=1e-4, rtol=0)
        else:
            enc = codec.model.compress(x, **rate)
            x_dec = codec.model.decompress(enc["strings"], enc["shape"], **rate)["x_hat"]
            torch.testing.assert_close(codec.synthesize(y_hat), x_dec, atol=1e-4, rtol=0)
    bpp = bits_per_pixel(likelihoods, p * 2 * p)
    assert 0 < float(bpp) < 64


def test_bits_per_pixel_matches_the_definition():
    lk = {"y": torch.full((2, 3, 4, 4), 0.5), "z": torch.full((2, 1, 1, 1), 0.25)}
    # per image: 48 * 1 bit + 1 * 2 bits = 50 bits over 16x16 pixels
    assert math.isclose(float(bits_per_pixel(lk, 256)), 50 / 256, rel_tol=1e-6)


def test_unknown_codec_names_the_config_key():
    with pytest.raises(ConfigError, match="codec.name: unknown codec 'nope'"):
        build_codec("nope")


@pytest.mark.parametrize(("name", "multiple"), [("mini", 16), ("bmshj2018-hyperprior", 64)])
def test_input_not_a_multiple_of_the_codec_padding_is_rejected(name, multiple):
    codec = build_codec(name, arch=SMALL[name]).eval()
    assert codec.pad_multiple == multiple
    with pytest.raises(ValueError, match=f"divisible by {multiple}"):
        codec.latent(torch.rand(1, 3, multiple + 8, 2 * multiple))


def test_checkpoint_roundtrip_and_wrong_architecture(tmp_path):
    torch.manual_seed(0)
    codec = build_codec("mini", arch=SMALL["mini"]).eval()
    path = tmp_path / "codec.pt"
    torch.save(codec_checkpoint(codec, lmbda=0.01), path)
    loaded = build_codec("mini", arch=SMALL["mini"], checkpoint=str(path)).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.latent(x).y_hat, codec.latent(x).y_hat)
    with pytest.raises(CheckpointError, match=r"codec.checkpoint: .* holds codec 'mini'"):
        build_codec("mini", arch={"N": 16, "M": 32}, checkpoint=str(path))
    with pytest.raises(CheckpointError, match="codec.checkpoint: .* is not a checkpoint of codec 'mbt2018-mean'"):
        torch.save(codec.model.state_dict(), tmp_path / "plain.pt")
        build_codec("mbt2018-mean", arch={"N": 32, "M": 24}, checkpoint=str(tmp_path / "plain.pt"))


def test_missing_and_corrupt_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        build_codec("mini", checkpoint=str(tmp_path / "nope.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint") as err:
        build_codec("mini", checkpoint=str(bad))
    assert "\n" not in str(err.value)


def test_zoo_without_network_is_a_clear_error():
    with pytest.raises(ConfigError, match="no weights for 'elic2022-chandelier'"):
        build_codec("elic2022-chandelier", zoo_quality=3)


def test_under_bf16_autocast_the_entropy_model_stays_in_float32():
    """trainer.precision=bf16-mixed: g_a may run in bf16, but rounding and likelihoods are float32."""
    torch.manual_seed(0)
    codec = build_codec("mini", arch=SMALL["mini"]).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = codec.latent(torch.rand(2, 3, 32, 32))
    assert out.y_hat.dtype == torch.float32
    assert all(lk.dtype == torch.float32 for lk in out.likelihoods.values())
