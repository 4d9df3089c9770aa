"""Encoders that are not CLIP ViTs (paper 4.6), behind one interface: embed / run_blocks / pool split at any block
reproduces open_clip's own encode_image exactly, each declares what its block k takes, and the transform-neck builds
exactly that (tokens with or without a class token, or a feature map)."""

import pytest
import timm
import torch

from latentbridge.core.errors import ConfigError
from latentbridge.nn.transform_neck import TransformNeck
from latentbridge.vision.convnext_encoder import build_convnext_encoder
from latentbridge.vision.insertion import Insertion
from latentbridge.vision.timm_vit_encoder import build_timm_vit_encoder

TEXT = {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
CONVNEXT = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "timm_model_name": "test_convnext", "timm_pool": "",
                                            "timm_proj": "mlp"}, "text_cfg": TEXT}  # fmt: skip
TIMM_VIT = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "timm_model_name": "test_vit", "timm_pool": "map",
                                            "timm_proj": "none"}, "text_cfg": TEXT}  # fmt: skip


@pytest.fixture(scope="module")
def convnext():
    torch.manual_seed(0)
    return build_convnext_encoder("tiny-convnext", 32, arch=CONVNEXT).eval()


@pytest.fixture(scope="module")
def siglip_like():
    """A timm ViT without a class token, pooled by an attention head (SigLIP's shape, tiny)."""
    torch.manual_seed(0)
    enc = build_timm_vit_encoder("tiny-siglip", 32, arch=TIMM_VIT)
    trunk = timm.create_model("test_vit", img_size=32, class_token=False, global_pool="map", num_classes=0)
    enc.clip.visual.trunk = trunk
    return enc.eval()


@pytest.mark.parametrize("name", ["convnext", "siglip_like"])
def test_the_split_at_every_block_is_open_clips_encode_image_exactly(name, request):
    enc = request.getfixturevalue(name)
    x = enc.preprocess(torch.rand(2, 3, 32, 32))
    with torch.no_grad():
        full = enc.clip.encode_image(x)
        assert torch.equal(enc(x), full)
        for k in range(enc.num_blocks):
            at_k = enc.run_blocks(enc.embed(x), 0, k)
            assert torch.equal(enc.forward_from_block(at_k, k), full), k


def test_convnext_blocks_enter_at_their_stage_after_its_downsampling(convnext):
    # test_convnext: stages of 1, 2, 4, 2 blocks, 24 / 32 / 48 / 64 channels, strides 4 / 8 / 16 / 32
    assert convnext.num_blocks == 9
    ins = [convnext.insertion(k) for k in range(9)]
    assert ins[0] == Insertion("feature_map", 24, (8, 8), 1, False)
    assert ins[1] == ins[2] == Insertion("feature_map", 32, (4, 4), 1, False)
    assert ins[3].grid_size == (2, 2) and ins[7].grid_size == (1, 1)
    x = convnext.preprocess(torch.rand(1, 3, 32, 32))
    with torch.no_grad():
        for k in range(9):
            at_k = convnext.run_blocks(convnext.embed(x), 0, k)
            assert at_k.shape[1:] == (ins[k].width, *ins[k].grid_size)


def test_siglip_like_tokens_have_no_class_token(siglip_like):
    ins = siglip_like.insertion(1)
    assert ins == Insertion("tokens", 64, (2, 2), 2, False)
    x = siglip_like.preprocess(torch.rand(1, 3, 32, 32))
    assert siglip_like.embed(x).shape == (1, 4, 64)


@pytest.mark.parametrize("name", ["convnext", "siglip_like"])
def test_an_insertion_point_the_encoder_lacks_is_one_line_naming_the_key(name, request):
    enc = request.getfixturevalue(name)
    with pytest.raises(ConfigError, match=rf"scenario.skip_blocks: {enc.num_blocks} not in \[0, {enc.num_blocks}\)"):
        enc.insertion(enc.num_blocks)


@pytest.mark.parametrize("name,k", [("convnext", 1), ("siglip_like", 1)])
def test_the_neck_builds_what_block_k_takes_and_the_encoder_runs_on_it(name, k, request):
    enc = request.getfixturevalue(name)
    ins = enc.insertion(k)
    neck = TransformNeck(8, ins.width, ins.heads, ins.grid_size, class_token=ins.class_token, layout=ins.layout)
    out = neck(torch.randn(2, 8, *ins.grid_size))
    with torch.no_grad():
        at_k = enc.run_blocks(enc.embed(enc.preprocess(torch.rand(2, 3, 32, 32))), 0, k)
    assert out.shape == at_k.shape
    assert enc.forward_from_block(out, k).shape == (2, enc.embed_dim)


def test_a_latent_grid_that_is_not_block_ks_feature_map_is_one_line_naming_both_shapes(tmp_path, capsys):
    from helpers.config import TINY, hydra_cfg

    from latentbridge.cli import run_cli
    from latentbridge.workflows.train import run as train_run

    overrides = ["experiment=mini_d1_convnext", *TINY, "trainer.fast_dev_run=1", "scenario.skip_blocks=4"]
    with hydra_cfg(overrides, tmp_path) as cfg, pytest.raises(SystemExit) as exit_:
        run_cli(train_run, cfg)  # block 4 opens stage 2: a 2x2 map; the mini codec's latent at 32x32 is 4x4
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: data.image_size: 32 gives mini's latent a 4x4 grid, but block 4")
    assert "2x2 feature map" in err


def test_the_complexity_report_counts_a_convnexts_skipped_prefix(tmp_path):
    """Paper 4.4's rows for an encoder that is not a ViT: block 2 of the mini ConvNeXt is entered after the stem,
    stage 0 and stage 1's downsampling; those are the parameters the neck path skips."""
    from helpers.config import TINY, hydra_cfg

    from latentbridge.analysis.complexity import complexity

    with hydra_cfg(["experiment=mini_d1_convnext", *TINY], tmp_path) as cfg:
        rows = {r.component: r for r in complexity(cfg)}
    from hydra.utils import instantiate

    trunk = instantiate(cfg.vision).trunk
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    prefix = rows["encoder patch embedding + first k blocks"]
    assert prefix.params == count(trunk.stem) + count(trunk.stages[0]) + count(trunk.stages[1].downsample)
    assert prefix.macs > 0 and rows["transform-neck"].params > 0
