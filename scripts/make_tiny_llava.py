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

from latentbridge.mllm.tiny_llava import TEXT, VISION, tiny_llava, tiny_tokenizer


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
