"""The Hugging Face CLIP backend and LLaVA injection, exactly, on tiny random configurations (offline)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from models.hf_vision_encoder import build_hf_vision_encoder  # noqa: E402
from models.llava_reader import LlavaReader  # noqa: E402

VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4}
VISION |= {"image_size": 32, "patch_size": 8}
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
TEXT |= {"vocab_size": 49408, "max_position_embeddings": 16}
IMAGE_TOKEN, VOCAB = 99, 100


@pytest.fixture(scope="module")
def tiny_llava():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**VISION),
        text_config=LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=2,
        ),
        image_token_id=IMAGE_TOKEN,
        image_seq_length=16,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    return LlavaForConditionalGeneration(config).eval()


def _prompts(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    text = torch.randint(3, IMAGE_TOKEN, (batch, 5), generator=g)
    ids = torch.cat([text[:, :2], torch.full((batch, 16), IMAGE_TOKEN), text[:, 2:]], dim=1)
    return ids, torch.ones_like(ids)


def test_hf_backend_matches_transformers_clip_and_splits_at_any_block():
    torch.manual_seed(0)
    enc = build_hf_vision_encoder(
        "tiny", 32, config={"vision_config": VISION, "text_config": TEXT, "projection_dim": 24}
    )
    images = enc.preprocess(torch.rand(2, 3, 40, 48))
    out = enc.clip.vision_model(pixel_values=images, output_hidden_states=True)
    full = enc.clip.visual_projection(out.pooler_output)
    assert enc.grid_size == (4, 4) and enc.num_blocks == 4 and (enc.width, enc.heads, enc.embed_dim) == (32, 4, 24)
    assert torch.allclose(enc(images), full, atol=1e-6)
    for k in range(4):
        assert torch.allclose(enc.run_blocks(enc.embed(images), 0, k), out.hidden_states[k], atol=1e-6)
        assert torch.allclose(enc.forward_from_block(out.hidden_states[k], k), full, atol=1e-6)
    texts = enc.class_embeddings(["cat", "dog", "ship"], ["a photo of a {}.", "a {}."])
    assert texts.shape == (3, 24) and torch.allclose(texts.norm(dim=-1), torch.ones(3))


def test_injected_true_hidden_states_reproduce_the_pixel_paths_generated_tokens(tiny_llava):
    reader = LlavaReader(tiny_llava)
    torch.manual_seed(2)
    pixels = torch.randn(2, 3, 32, 32)
    ids, mask = _prompts()
    reference = tiny_llava.generate(
        input_ids=ids, pixel_values=pixels, attention_mask=mask, max_new_tokens=8, do_sample=False
    )
    reference = reference[:, ids.shape[1] :]
    hidden = reader.tower(pixels, output_hidden_states=True).hidden_states
    from_pixels = reader.image_features_from_pixels(pixels)
    for k in (0, 1, 2):  # vision_feature_layer -2 of 4 layers reads hidden state 3
        features = reader.image_features_from_block(hidden[k], k)
        assert torch.equal(features, from_pixels), k
        assert torch.equal(reader.generate(ids, mask, features, max_new_tokens=8), reference), k
    assert reference.shape == (2, 8)
    with pytest.raises(Exception, match="past LLaVA's vision_feature_layer"):
        reader.image_features_from_block(hidden[3], 4)
    with pytest.raises(ValueError, match="image tokens"):
        reader.generate(ids[:, 3:], mask[:, 3:], from_pixels, max_new_tokens=2)


def test_a_neck_trained_against_the_hf_backend_targets_llavas_tower(tiny_llava):
    """The HF backend built on LLaVA's tower weights yields the same hidden states: a neck trained against it
    (C' = HF backend from block k) feeds LLaVA through the injection path unchanged."""
    from transformers import CLIPConfig, CLIPModel

    clip = CLIPModel(CLIPConfig(vision_config=VISION, text_config=TEXT, projection_dim=24)).eval()
    clip.vision_model.load_state_dict(tiny_llava.model.vision_tower.state_dict())
    from models.hf_vision_encoder import HFVisionEncoder

    enc = HFVisionEncoder(clip, 32)
    pixels = torch.randn(2, 3, 32, 32)
    hidden = tiny_llava.model.vision_tower(pixels, output_hidden_states=True).hidden_states
    assert torch.equal(enc.run_blocks(enc.embed(pixels), 0, 2), hidden[2])


def test_d1_trains_a_neck_against_the_hf_backend(tmp_path):
    """vision=hf_clip_vit_l14_336 with a tiny random CLIPConfig: the whole d1 run works on the second backend."""
    from conftest import TINY_D1, hydra_cfg
    from omegaconf import OmegaConf

    import train

    overrides = [o for o in TINY_D1 if o != "vision.checkpoint=null"] + [
        "vision=hf_clip_vit_l14_336",
        "vision.image_size=32",
    ]
    with hydra_cfg(overrides, tmp_path) as cfg:
        OmegaConf.update(cfg, "vision.config", {"vision_config": VISION, "text_config": TEXT, "projection_dim": 24})
        results = train.run(cfg)
    assert 0 <= results["metrics"]["top1_neck"] <= 1 and results["vision"] == "openai/clip-vit-large-patch14-336"
