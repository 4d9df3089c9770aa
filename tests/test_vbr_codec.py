"""Paper 2's variable-rate codec: one model, every rate of its ladder, the gain in the bitstream (design 6, 1-6)."""

import math
import random
import struct
import subprocess
import sys
import zlib

import pytest
import torch
from compressai.models.vbr import MeanScaleHyperpriorVbr
from helpers.config import ROOT

from latentbridge.codecs.adapter import build_codec, codec_checkpoint
from latentbridge.codecs.bitstream import Bitstream, BitstreamError, decode_latent, encode_image, pad_to_multiple
from latentbridge.codecs.vbr import RateLadder
from latentbridge.core.errors import ConfigError

ARCH = {"N": 16, "M": 24}


def _codec(name="mini-vbr", seed=0):
    """A random codec whose latents are large enough to give non-zero symbols at every gain of the ladder."""
    torch.manual_seed(seed)
    codec = build_codec(name, arch=ARCH).eval()
    with torch.no_grad():
        codec.model.g_a[-1].weight.mul_(300)
    codec.model.update(force=True)
    return codec


@pytest.mark.parametrize("name", ["mini-vbr", "mbt2018-mean-vbr"])
@pytest.mark.parametrize("q", [0.0, 0.37, 1.0])
@pytest.mark.parametrize("size", [(64, 64), (50, 70), (130, 200)])
def test_roundtrip_at_any_rate_gives_the_encoder_y_hat_and_compressai_decoder_output(name, q, size):
    codec = _codec(name)
    x = torch.rand(1, 3, *size)
    gain = codec.ladder.gain(q)
    data = encode_image(codec, x, gain)
    y_hat, bs = decode_latent(codec, data)  # no rate argument: the stream carries its gain
    assert bs.lmbda == gain
    padded, _, _ = pad_to_multiple(x, codec.pad_multiple)
    with torch.no_grad():
        assert torch.equal(y_hat, codec.latent(padded, gain).y_hat)
        ours = codec.synthesize(y_hat)
        out = codec.model.compress(padded, inputscale=torch.tensor(gain))
        theirs = codec.model.decompress(out["strings"], out["shape"], inputscale=torch.tensor(gain))["x_hat"]
    assert torch.equal(ours, theirs) and out["strings"] == bs.strings  # compressai's own bytes
    assert y_hat.abs().max() > 1  # symbols were coded, not only the means


def _rewrite_gain(data: bytes, gain: float) -> bytes:
    body = bytearray(data[:-4])
    struct.pack_into(">f", body, 8, gain)
    return bytes(body) + struct.pack(">I", zlib.crc32(bytes(body)))


def test_the_header_gain_decides_the_decode_and_bad_gains_are_refused_before_entropy_decoding():
    codec = _codec()
    x = torch.rand(1, 3, 32, 32)
    g = codec.ladder.gain(0.5)
    data = encode_image(codec, x, g)
    assert Bitstream.from_bytes(data).lmbda == struct.unpack(">f", struct.pack(">f", g))[0]
    reference = decode_latent(codec, data)[0]
    other = decode_latent(codec, _rewrite_gain(data, codec.ladder.gain(0.9)))[0]
    assert not torch.equal(reference, other)
    lo, hi = codec.ladder.gain_range
    for bad in (math.nan, math.inf, -math.inf, 0.0, lo * 0.99, hi * 1.01, -g):
        with pytest.raises(BitstreamError, match="gain .* is outside"):
            decode_latent(codec, _rewrite_gain(data, bad))
    with pytest.raises(ValueError, match="outside"):
        encode_image(codec, x, hi * 2)


def test_streams_of_another_ladder_or_a_fixed_rate_codec_are_refused():
    codec = _codec()
    data = encode_image(codec, torch.rand(1, 3, 32, 32), codec.ladder.gain(0.2))
    other = build_codec("mini-vbr", arch=ARCH, ladder={"lmbda_min": 1e-5, "lmbda_max": 1e-2}).eval()
    other.model.update(force=True)
    with pytest.raises(BitstreamError, match="config hash differs"):
        decode_latent(other, data)
    fixed = build_codec("mini", arch=ARCH).eval()
    with pytest.raises(BitstreamError, match="coded by codec 'mini-vbr', this decoder is 'mini'"):
        decode_latent(fixed, data, 0.01)


def test_fuzz_thousands_of_mutated_variable_rate_bitstreams_are_refused_cleanly():
    from test_bitstream import _mutations

    codec = _codec()
    data = encode_image(codec, torch.rand(1, 3, 50, 70), codec.ladder.gain(0.6))
    reference = decode_latent(codec, data)[0]
    rng = random.Random(99)
    refused = identical = 0
    for _ in range(3000):
        mutated = _mutations(data, rng)
        try:
            y_hat, _ = decode_latent(codec, mutated)
        except BitstreamError:
            refused += 1
            continue
        assert mutated == data and torch.equal(y_hat, reference)
        identical += 1
    assert refused + identical == 3000 and refused > 2900


def test_training_honours_the_gain_where_compressai_ignores_it():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    ours = build_codec("mbt2018-mean-vbr", arch=ARCH).train()
    torch.manual_seed(1)
    low = ours(x, 0.05)["likelihoods"]["y"]
    torch.manual_seed(1)
    high = ours(x, 1.0)["likelihoods"]["y"]
    assert not torch.allclose(low, high)
    theirs = MeanScaleHyperpriorVbr(**ARCH)
    theirs.load_state_dict(ours.model.state_dict())
    theirs.train()
    torch.manual_seed(1)
    a = theirs(x, stage=2, inputscale=torch.tensor(0.05))["likelihoods"]["y"]
    torch.manual_seed(1)
    b = theirs(x, stage=2, inputscale=torch.tensor(1.0))["likelihoods"]["y"]
    assert torch.equal(a, b)  # compressai's class trains at Gain[s] whatever the requested gain
    torch.manual_seed(1)  # our model class honours it in its own forward too
    c = ours.model(x, stage=2, inputscale=torch.tensor(0.05))["likelihoods"]["y"]
    assert not torch.equal(a, c) or not torch.equal(b, c)


def test_ladder_is_exact_and_reproduces_compressai_gains():
    ladder = RateLadder(0.0018, 0.18)
    for q in (0.0, 0.123, 0.5, 0.999, 1.0):
        assert abs(ladder.q(ladder.lmbda(q)) - q) < 1e-12
    model = MeanScaleHyperpriorVbr(N=8, M=8)
    assert max(abs(ladder.gain(ladder.q(lm)) - g) for lm, g in zip(model.lmbda, model.Gain.tolist())) < 1e-5
    assert ladder.resolve("q=0.25") == 0.25 and abs(ladder.resolve(0.018) - 0.5) < 1e-12
    for bad in (0.001, 0.5, "q=1.5", "fast", math.nan):
        with pytest.raises(ConfigError, match="rate"):
            ladder.resolve(bad)
    with pytest.raises(ConfigError, match="codec.ladder"):
        RateLadder(0.01, 0.001)


def test_a_rate_on_a_fixed_rate_codec_and_a_lambda_on_a_variable_rate_one_are_config_errors():
    fixed = build_codec("mini", arch=ARCH).eval()
    with pytest.raises(ConfigError, match="fixed-rate"):
        fixed.latent(torch.rand(1, 3, 32, 32), 0.1)
    with pytest.raises(ConfigError, match="codec.lmbda: codec 'mini-vbr' is variable-rate"):
        build_codec("mini-vbr", lmbda=0.001)
    with pytest.raises(ConfigError, match="codec.ladder: codec 'mini' is fixed-rate"):
        build_codec("mini", ladder={"lmbda_min": 1e-4, "lmbda_max": 1e-3})


def _cli(*args):
    cmd = [sys.executable, "-m", "latentbridge.cli.codec", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # minutes on 2 cores; make test-slow (CI runs it)
def test_cli_roundtrip_at_three_rates_and_one_line_errors(tmp_path):
    from PIL import Image

    codec = _codec()
    ckpt = tmp_path / "vbr.pt"
    torch.save(codec_checkpoint(codec), ckpt)
    Image.fromarray((torch.rand(40, 30, 3) * 255).byte().numpy()).save(tmp_path / "img.png")
    sizes = []
    for rate in ("1e-5", "q=0.5", "0.0032"):
        out = tmp_path / rate
        res = _cli("encode", "--codec", ckpt, "--rate", rate, tmp_path / "img.png", "-o", out)
        assert res.returncode == 0, res.stderr
        sizes.append((out / "img.lbr").stat().st_size)
        res = _cli("decode", "--codec", ckpt, out / "img.lbr", "-o", out)
        assert res.returncode == 0, res.stderr
        assert Image.open(out / "img.png").size == (30, 40)
    res = _cli("encode", "--codec", ckpt, "--rate", "0.5", tmp_path / "img.png", "-o", tmp_path)
    assert (
        res.returncode == 2
        and res.stderr.strip() == "error: --rate: lambda=0.5 is outside this codec's ladder [1e-05, 0.0032]"
    )
    res = _cli("encode", "--codec", ckpt, tmp_path / "img.png", "-o", tmp_path)
    assert res.returncode == 2 and "--rate: " in res.stderr and len(res.stderr.strip().splitlines()) == 1
    fixed = tmp_path / "fixed.pt"
    torch.save(codec_checkpoint(build_codec("mini", arch=ARCH).eval(), lmbda=0.01), fixed)
    res = _cli("encode", "--codec", fixed, "--rate", "0.001", tmp_path / "img.png", "-o", tmp_path)
    assert res.returncode == 2 and "is a fixed-rate codec" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("q", [0.0, 0.6, 1.0])
def test_the_training_path_is_compressai_stage_two_and_gives_g_a_a_gradient_where_every_symbol_is_zero(q):
    torch.manual_seed(0)
    codec = build_codec("mini-vbr", arch=ARCH).train()
    x = torch.rand(2, 3, 32, 32)
    gain = codec.ladder.gain(q)
    ours = codec(x, gain)["x_hat"]
    theirs = codec.model(x, stage=2, inputscale=torch.tensor(gain))["x_hat"]
    assert torch.equal(ours, theirs)
    small = x * 0.01  # a random codec's latents of a near-black image: every symbol rounds to 0
    with torch.no_grad():
        y = codec.model.g_a(small)
        _, _, _, means = codec._hyper(y)
        assert torch.round((y - means) * gain).abs().max() == 0
    codec.zero_grad()
    ((codec(small, gain)["x_hat"] - x) ** 2).mean().backward()
    assert float(codec.model.g_a[0].weight.grad.abs().sum()) > 0  # the straight-through path still reaches g_a
