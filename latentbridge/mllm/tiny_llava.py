"""A tiny random LLaVA-1.5 (and its word-level tokenizer) that builds offline: for tests and for trying the MLLM
pipeline without weights (``scripts/make_tiny_llava.py`` writes one to disk). Vision tower: CLIP, 4 layers, width
32, 32x32 images, patch 8 (a 4x4 grid, as the mini codec's 64x64 latents); LLM: Llama, 2 layers, width 32, a
100-word vocabulary with ``<image>`` = 99. Its answers mean nothing; the plumbing is the real one.
"""

from __future__ import annotations

from typing import Any

VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4}
VISION |= {"image_size": 32, "patch_size": 8}
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
TEXT |= {"vocab_size": 49408, "max_position_embeddings": 16}
WORDS = ["<pad>", "</s>", "<s>", "<unk>", "USER:", "ASSISTANT:", "is", "there", "a", "cat", "dog", "?", "yes", "no"]
IMAGE_TOKEN, VOCAB = 99, 100


def tiny_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(WORDS)} | {f"w{i}": i for i in range(len(WORDS), IMAGE_TOKEN)}
    vocab["<image>"] = IMAGE_TOKEN
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>", extra_special_tokens=["<image>"]
    )


def tiny_llava() -> Any:
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
