"""The Hugging Face CLIP backend and LLaVA injection, exactly, on tiny random configurations (offline)."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from latentbridge.mllm.llava_reader import LlavaReader  # noqa: E402
from latentbridge.mllm.tiny_llava import IMAGE_TOKEN, TEXT, VISION, tiny_tokenizer  # noqa: E402
from latentbridge.vision.hf_clip_encoder import HFVisionEncoder, build_hf_vision_encoder, hf_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tiny_llava():
    from latentbridge.mllm.tiny_llava import tiny_llava as build

    torch.manual_seed(0)
    return build()


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

    enc = HFVisionEncoder(clip, hf_tokenizer(clip), 32)
    pixels = torch.randn(2, 3, 32, 32)
    hidden = tiny_llava.model.vision_tower(pixels, output_hidden_states=True).hidden_states
    assert torch.equal(enc.run_blocks(enc.embed(pixels), 0, 2), hidden[2])


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory):
    """A local lmms-eval task: three coloured images, one question, exact match."""
    from PIL import Image

    root = tmp_path_factory.mktemp("lmms")
    task = root / "tasks"
    task.mkdir()
    docs = []
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (80 + 10 * i, 64), colour).save(root / f"img{i}.png")
        docs.append({"question": "is there a cat ?", "answer": "yes", "image": str(root / f"img{i}.png")})
    (task / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (task / "utils.py").write_text(
        "from PIL import Image\n\ndef doc_to_visual(doc):\n    return [Image.open(doc['image']).convert('RGB')]\n"
    )
    (task / "tiny_vqa.yaml").write_text(
        "task: tiny_vqa\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {task / 'docs.jsonl'}\ntest_split: test\noutput_type: generate_until\n"
        "doc_to_visual: !function utils.doc_to_visual\ndoc_to_text: '{{question}}'\ndoc_to_target: answer\n"
        "generation_kwargs:\n  max_new_tokens: 3\nmetric_list:\n  - metric: exact_match\n    aggregation: mean\n"
        "    higher_is_better: true\n"
    )
    return task


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A trained tiny d1 run whose encoder is a Hugging Face CLIP (the tower geometry of the tiny LLaVA)."""
    from helpers.config import TINY_D1, hydra_cfg
    from omegaconf import OmegaConf

    from latentbridge.workflows.train import run as train_run

    tmp = tmp_path_factory.mktemp("hf_run")
    overrides = [o for o in TINY_D1 if o != "vision.checkpoint=null"] + [
        "vision=hf_clip_vit_l14_336",
        "vision.image_size=32",
    ]
    with hydra_cfg(overrides, tmp) as cfg:
        OmegaConf.update(cfg, "vision.config", {"vision_config": VISION, "text_config": TEXT, "projection_dim": 24})
        results = train_run(cfg)
    return tmp / "run", results


def _reader(tiny_llava):
    from types import SimpleNamespace

    from transformers import CLIPImageProcessor

    processor = SimpleNamespace(
        tokenizer=tiny_tokenizer(), image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32)
    )
    return LlavaReader(tiny_llava, processor)


def test_d1_trains_a_neck_against_the_hf_backend(tiny_run):
    """vision=hf_clip_vit_l14_336 with a tiny random CLIPConfig: the whole d1 run works on the second backend."""
    _, results = tiny_run
    assert 0 <= results["metrics"]["top1_neck"] <= 1 and results["vision"] == "openai/clip-vit-large-patch14-336"


def test_lmms_eval_round_trip_on_a_tiny_local_task(tiny_llava, tiny_task, tiny_run, tmp_path):
    """lmms-eval runs a local task through codec -> bitstream -> neck -> injected LLaVA; the bits are recorded."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.models import get_model
    from lmms_eval.tasks import TaskManager

    from latentbridge.mllm.lmms_model import LatentBridgeLLaVA

    assert get_model("latentbridge") is LatentBridgeLLaVA  # the entry point registers --model latentbridge
    bits = tmp_path / "bits.json"
    lm = LatentBridgeLLaVA(reader=_reader(tiny_llava), run=str(tiny_run[0]), path="neck", bits_file=str(bits))
    out = simple_evaluate(model=lm, tasks=["tiny_vqa"], task_manager=TaskManager(include_path=str(tiny_task)))
    score = out["results"]["tiny_vqa"]["exact_match,none"]
    assert 0.0 <= score <= 1.0 and len(out["samples"]["tiny_vqa"]) == 3
    recorded = json.loads(bits.read_text())
    assert recorded["samples"] == 3 and all(r["pixels"] == 32 * 32 and r["bytes"] > 25 for r in recorded["records"])
    assert recorded["bpp"] == sum(8 * r["bytes"] for r in recorded["records"]) / (3 * 32 * 32)


def test_mllm_evaluate_joins_scores_and_bits_for_each_path(tiny_llava, tiny_task, tiny_run, tmp_path):
    from omegaconf import OmegaConf

    from latentbridge.workflows import mllm_evaluate

    cfg = OmegaConf.create(
        {"tasks": ["tiny_vqa"], "include_path": str(tiny_task), "limit": None, "metrics": {}, "device": "cpu"}
    )
    rows = []
    for path in ("neck", "reconstruction"):
        rows += mllm_evaluate.evaluate_path(cfg, _reader(tiny_llava), path, str(tiny_run[0]), tmp_path)
    rows += mllm_evaluate.evaluate_path(cfg, _reader(tiny_llava), "uncompressed", None, tmp_path)
    assert [r["method"] for r in rows] == ["d1", "reconstruction", "uncompressed"]
    assert rows[0]["bpp"] == rows[1]["bpp"] > 0 and rows[2]["bpp"] == 24.0  # same bitstreams; the bound
    assert all(r["metric"] == "exact_match" and 0 <= r["tiny_vqa"] <= 1 for r in rows)
    assert (tmp_path / "bits_d1_lambda0.0001.json").is_file()


def test_mllm_evaluate_writes_joined_results_and_a_curve_per_task(
    tiny_llava, tiny_task, tiny_run, tmp_path, monkeypatch
):
    from omegaconf import OmegaConf

    from latentbridge.mllm import llava_reader
    from latentbridge.workflows import mllm_evaluate

    monkeypatch.setattr(
        llava_reader.LlavaReader, "from_pretrained", classmethod(lambda cls, *a, **k: _reader(tiny_llava))
    )
    joined = tmp_path / "evaluate_results.json"
    joined.write_text(json.dumps({"rows": [{"method": "jpeg", "quality": 5, "bpp": 1.5, "top1": 0.7}]}))
    cfg = OmegaConf.create(
        {
            "runs": [str(tiny_run[0])],
            "tasks": ["tiny_vqa"],
            "include_path": str(tiny_task),
            "limit": None,
            "metrics": {},
            "device": "cpu",
            "llava": "tiny",
            "dtype": "float32",
            "paths_to_evaluate": ["neck"],
            "uncompressed": True,
            "join": str(joined),
            "paths": {"output_dir": str(tmp_path / "out")},
        }
    )
    results = mllm_evaluate.mllm_evaluate(cfg)
    assert [r["method"] for r in results["rows"]] == ["jpeg", "d1", "uncompressed"]
    assert (tmp_path / "out" / "rate_tiny_vqa.png").is_file() and "tiny_vqa" in (
        tmp_path / "out" / "results.csv"
    ).read_text()


def test_paper2_pixel_path_codes_at_native_size_and_records_bytes_growing_with_the_rate(tiny_llava, tmp_path):
    """path=preedit: the decoded image, at the original size, through LLaVA's own processor; bytes per sample."""
    from helpers.config import TINY, hydra_cfg
    from PIL import Image

    from latentbridge.mllm.lmms_model import LatentBridgeLLaVA
    from latentbridge.workflows.train import run as train_run

    with hydra_cfg(["experiment=mini_p2", *TINY, "trainer.max_epochs=1"], tmp_path) as cfg:
        train_run(cfg)
    image = Image.fromarray((torch.rand(45, 61, 3) * 255).byte().numpy())
    seen, sizes = [], []
    for rate in ("q=0", "q=1"):
        lm = LatentBridgeLLaVA(reader=_reader(tiny_llava), run=str(tmp_path / "run"), path="preedit", rate=rate)
        with torch.no_grad():  # a barely trained codec codes only zeros at low gains: make its latents large
            lm.module.codec.model.g_a[-1].weight.mul_(300)
        proc = lm.reader.processor.image_processor
        lm.reader.processor.image_processor = lambda im, proc=proc, **k: seen.append(im.size) or proc(im, **k)
        feats, nbytes, pixels = lm.features(image)
        assert feats.shape[0] == 1 and pixels == 45 * 61
        sizes.append(nbytes)
    assert seen == [(61, 45), (61, 45)]  # LLaVA's processor gets the decoded image at the original size
    assert sizes[0] < sizes[1]
    with pytest.raises(Exception, match="rate: path=preedit needs the rate"):
        LatentBridgeLLaVA(reader=_reader(tiny_llava), run=str(tmp_path / "run"), path="preedit")


def test_the_server_answers_a_prompt_about_a_bitstream_with_llava(tiny_llava, tiny_run):
    """/v1/generate (issue: split inference as a service): bitstream + prompt in, LLaVA's answer out, equal to the
    reader's answer on the neck features of the decoded latent; the bytes of the request come back with it."""
    from fastapi.testclient import TestClient

    from latentbridge import routes
    from latentbridge.codecs import bitstream as B
    from latentbridge.serve.app import create_app
    from latentbridge.serve.service import Service

    run_dir, _ = tiny_run
    service = Service.load(run_dir, device="cpu").with_reader(_reader(tiny_llava))
    data = B.encode_image(service.module.codec, torch.rand(1, 3, 32, 32), service.lmbda)
    with TestClient(create_app(service, max_new_tokens_limit=8, max_prompt_chars=20)) as client:
        response = client.post("/v1/generate", params={"prompt": "what is it?", "max_new_tokens": 3}, content=data)
        too_many = client.post("/v1/generate", params={"prompt": "what?", "max_new_tokens": 9}, content=data)
        too_long = client.post("/v1/generate", params={"prompt": "x" * 21, "max_new_tokens": 3}, content=data)
    assert response.status_code == 200, response.text
    assert too_many.status_code == 400 and too_many.json() == {
        "error": "max_new_tokens must be in [1, 8] (max_new_tokens_limit)"
    }
    assert too_long.status_code == 400 and too_long.json() == {
        "error": "prompt of 21 characters, over max_prompt_chars=20"
    }
    y_hat, _ = B.decode_latent(service.module.codec, data, service.lmbda)
    with torch.no_grad():
        features = routes.neck(service.parts["neck"], y_hat)
    assert features.shape[-1] == tiny_llava.config.vision_config.hidden_size
    expected = service.reader.answer(["what is it?"], features, max_new_tokens=3)[0]
    assert response.json() == {"answer": expected, "bytes": len(data), "bpp": 8 * len(data) / 32**2}
