"""Teacher exactness (issue: run the paper's own models): the same random weights in our teachers and in OpenAI's
own CLIP code give the same C(x) and the same tokens after every block, in float32 (1e-5). OpenAI's weights need
QuickGELU: the paper presets build it, and a model whose activation contradicts its pretrained tag is refused."""

from __future__ import annotations

import open_clip
import pytest
import torch
from helpers.config import hydra_cfg
from helpers.openai_clip import hidden_states, openai_clip, to_hf_clip

from latentbridge.core.errors import ConfigError
from latentbridge.vision.open_clip_encoder import build_vision_encoder

TOL = 1e-5  # max |ours - theirs| / max |theirs|: float32 agreement at the scale of each tensor (the residual stream
# grows with depth, so a fixed absolute tolerance would mean something else at block 0 and at block 23)


def close(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> float:
    err = float((ours - theirs).abs().max() / theirs.abs().max())
    assert err <= TOL, f"{what}: largest difference {err:.3g} of the largest value (tolerance {TOL:g})"
    return err


def _ours_step_by_step(encoder, image):
    tokens, states = encoder.embed(image), []
    with torch.no_grad():
        for k in range(encoder.num_blocks):
            tokens = encoder.run_blocks(tokens, k, k + 1)
            states.append(tokens)
        return encoder.pool(tokens), states


def _compare(encoder, reference, image):
    theirs, their_states = hidden_states(reference, image)
    ours, our_states = _ours_step_by_step(encoder, image)
    assert len(our_states) == len(their_states)
    blocks = max(close(a, b, f"after block {k}") for k, (a, b) in enumerate(zip(our_states, their_states)))
    c = close(ours, theirs, "C(x)")
    with torch.no_grad():
        close(encoder(image), theirs, "C(x) in one call")
    print(f"largest relative difference: every block {blocks:.2g}, C(x) {c:.2g}")


TINY = {"embed_dim": 32, "image_size": 32, "layers": 4, "width": 128, "patch": 8}


def test_open_clip_teacher_equals_openais_code_block_by_block():
    """The backend of the mini teacher and of the paper presets (open_clip, QuickGELU)."""
    ref = openai_clip(0, **TINY)
    clip = open_clip.CLIP(TINY["embed_dim"], {"image_size": 32, "patch_size": 8, "width": 128, "layers": 4,
                          "head_width": 64}, {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1,
                          "layers": 2}, quick_gelu=True)  # fmt: skip
    clip.load_state_dict(ref.state_dict())
    from latentbridge.vision.open_clip_encoder import VisionEncoder

    encoder = VisionEncoder(clip.eval(), None, 32)
    _compare(encoder, ref, torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    gelu = open_clip.CLIP(TINY["embed_dim"], {"image_size": 32, "patch_size": 8, "width": 128, "layers": 4,
                          "head_width": 64}, {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1,
                          "layers": 2}, quick_gelu=False)  # fmt: skip
    gelu.load_state_dict(ref.state_dict())
    with pytest.raises(AssertionError, match="after block 0"):  # nn.GELU is not OpenAI's model
        _compare(VisionEncoder(gelu.eval(), None, 32), ref, torch.randn(2, 3, 32, 32))


def test_hugging_face_teacher_equals_openais_code_block_by_block():
    """The backend of LLaVA's tower (transformers CLIPModel), OpenAI's weights mapped to its names."""
    from transformers import CLIPConfig, CLIPModel

    from latentbridge.vision.hf_clip_encoder import HFVisionEncoder, hf_tokenizer

    ref = openai_clip(2, **TINY)
    config = CLIPConfig(
        projection_dim=32,
        vision_config={"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8, "hidden_act": "quick_gelu"},
        text_config={"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 1, "num_attention_heads": 1,
                     "max_position_embeddings": 16, "hidden_act": "quick_gelu"},
    )  # fmt: skip
    clip = CLIPModel(config).eval()
    missing, unexpected = clip.load_state_dict(to_hf_clip(ref.state_dict(), 4), strict=False)
    assert not unexpected and not [k for k in missing if k.startswith(("vision_model.", "visual_"))]
    encoder = HFVisionEncoder(clip, hf_tokenizer(clip), 32)
    _compare(encoder, ref, torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)))


def test_a_model_name_that_contradicts_its_pretrained_tag_is_refused():
    with pytest.raises(ConfigError) as err:
        build_vision_encoder("ViT-L-14", 224, pretrained="openai")
    assert str(err.value) == (
        "vision.model_name: 'ViT-L-14' builds nn.GELU, but the 'openai' weights were trained with QuickGELU; "
        "use vision.model_name=ViT-L-14-quickgelu"
    )


def test_the_paper_presets_build_openais_quickgelu_vit_l14(tmp_path):
    for experiment in ("paper_d1", "paper_d2", "paper_d3", "paper_post_processing"):
        with hydra_cfg([f"experiment={experiment}", "logger=none"], tmp_path) as cfg:
            assert cfg.vision.model_name == "ViT-L-14-quickgelu" and cfg.vision.pretrained == "openai", experiment
    assert open_clip.get_model_config("ViT-L-14-quickgelu")["quick_gelu"] is True


@pytest.mark.slow
def test_the_paper_teacher_at_its_real_size_equals_openais_code(tmp_path):
    """ViT-L/14 at 224 (24 blocks, width 1024): seeded random OpenAI weights as a local ``vision.pretrained`` file of
    the paper preset; C(x) and every block against OpenAI's code."""
    from hydra.utils import instantiate

    from latentbridge.core.config import hydra_quote

    ref = openai_clip(4, embed_dim=768, image_size=224, layers=24, width=1024, patch=14, context=77,
                      text_width=768, text_layers=12)  # fmt: skip
    weights = tmp_path / "vit_l14_random.pt"
    torch.save(ref.state_dict(), weights)
    with hydra_cfg(["experiment=paper_d1", f"vision.pretrained={hydra_quote(weights)}"], tmp_path) as cfg:
        encoder = instantiate(cfg.vision)
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    _compare(encoder, ref, image)
