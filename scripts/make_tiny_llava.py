"""Write a tiny random LLaVA-1.5 (model + processor) to a local directory, for trying the MLLM pipeline offline:

    python scripts/make_tiny_llava.py /tmp/tiny-llava
    lmms-eval --model latentbridge --model_args pretrained=/tmp/tiny-llava,run=<run>,dtype=float32,device=cpu ...

Vision tower: CLIP, 4 layers, width 32, 32x32 images, patch 8 (4x4 grid, as the mini codec's 64x64 latents);
LLM: Llama, 2 layers, width 32, a 100-word vocabulary. Its answers mean nothing; the plumbing is the real one.
The matching LatentBridge vision encoder is ``vision=hf_clip_vit_l14_336 vision.model_name=<dir>/clip
vision.image_size=32`` (the same tower weights, with a random text tower).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4}
VISION |= {"image_size": 32, "patch_size": 8}
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
TEXT |= {"vocab_size": 49408, "max_position_embeddings": 16}
WORDS = ["<pad>", "</s>", "<s>", "<unk>", "USER:", "ASSISTANT:", "is", "there", "a", "cat", "dog", "?", "yes", "no"]
IMAGE_TOKEN, VOCAB = 99, 100


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(WORDS)} | {f"w{i}": i for i in range(len(WORDS), IMAGE_TOKEN)}
    vocab["<image>"] = IMAGE_TOKEN
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>", extra_special_tokens=["<image>"]
    )


def tiny_llava():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    text = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**VISION),
        text_config=text,
        image_token_id=IMAGE_TOKEN,
        image_seq_length=16,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    return LlavaForConditionalGeneration(config).eval()


def main(out: Path) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, LlavaProcessor

    torch.manual_seed(0)
    model = tiny_llava()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32),
        tokenizer=tiny_tokenizer(),
        patch_size=8,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    clip = CLIPModel(CLIPConfig(vision_config=VISION, text_config=TEXT, projection_dim=24))
    clip.vision_model.load_state_dict(model.model.vision_tower.state_dict())
    clip.save_pretrained(out / "clip")
    print(f"tiny LLaVA-1.5 in {out}, its vision tower as a CLIPModel in {out / 'clip'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/tiny-llava"))
