import pytest
import torch

from latentbridge.core.errors import CheckpointError, ConfigError
from latentbridge.vision.open_clip_encoder import build_vision_encoder

TINY_ARCH = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 4, "head_width": 16},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_vision_encoder("tiny", image_size=32, arch=TINY_ARCH).eval()


def test_geometry(tiny):
    assert (tiny.width, tiny.heads, tiny.num_blocks, tiny.grid_size, tiny.embed_dim) == (32, 2, 4, (4, 4), 16)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_skipping_k_blocks_on_true_block_k_input_reproduces_the_full_forward_exactly(tiny, k):
    x = tiny.preprocess(torch.rand(3, 3, 32, 32))
    with torch.no_grad():
        full = tiny.clip.encode_image(x)
        tokens_k = tiny.run_blocks(tiny.embed(x), 0, k)
        assert tokens_k.shape == (3, 17, 32)
        assert torch.equal(tiny.forward_from_block(tokens_k, k), full)
        assert torch.equal(tiny(x), full)


def test_preprocess_resizes_short_side_crops_and_normalizes(tiny):
    x = torch.rand(2, 3, 64, 96)
    out = tiny.preprocess(x)
    assert out.shape == (2, 3, 32, 32)
    same = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(tiny.preprocess(same), (same - tiny.mean) / tiny.std)


def test_class_embeddings_are_normalized_template_means(tiny):
    emb = tiny.class_embeddings(["cat", "dog", "bird"], ["a photo of a {}.", "a {}."])
    assert emb.shape == (3, 16)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    manual = tiny.encode_text(["a photo of a dog.", "a dog."]).mean(0)
    torch.testing.assert_close(emb[1], manual / manual.norm())


def test_unknown_open_clip_model_names_the_key():
    with pytest.raises(ConfigError, match="vision.model_name"):
        build_vision_encoder("ViT-Nope-99", image_size=224)


def test_missing_pretrained_weights_offline_is_one_clear_line(tmp_path):
    with pytest.raises(CheckpointError, match="vision.pretrained") as err:
        build_vision_encoder("ViT-B-32", image_size=224, pretrained=str(tmp_path / "missing.bin"))
    assert "\n" not in str(err.value)


def test_teacher_checkpoint_of_another_architecture_is_rejected(tiny, tmp_path):
    path = tmp_path / "t.pt"
    torch.save(tiny.clip.state_dict(), path)
    other = {**TINY_ARCH, "vision_cfg": {**TINY_ARCH["vision_cfg"], "width": 64}}
    with pytest.raises(CheckpointError, match="vision.checkpoint"):
        build_vision_encoder("tiny", image_size=32, arch=other, checkpoint=str(path))
    loaded = build_vision_encoder("tiny", image_size=32, arch=TINY_ARCH, checkpoint=str(path))
    assert torch.equal(loaded.clip.visual.proj, tiny.clip.visual.proj)
