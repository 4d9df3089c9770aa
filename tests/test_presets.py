"""Every experiment preset runs one training and one validation step (``trainer.fast_dev_run=1``) through the
real training workflow: the mini presets on tiny synthetic data here, the paper presets at their real model sizes
(random weights, one image) in the slow suite."""

from __future__ import annotations

import math

import pytest
from helpers.config import TINY, TINY_D1, hydra_cfg

from latentbridge.workflows.train import run as train_run

PHASE2 = ("mini_d2", "mini_d3", "paper_d2", "paper_d3")
MINI = [
    "mini_d1",
    "mini_d1_convnext",
    "mini_d1_tcm",
    "mini_d2",
    "mini_d3",
    "mini_post_processing",
    "mini_codec",
    "mini_codec_tcm",
    "mini_teacher",
    "mini_codec_vbr",
    "mini_p2",
    "mini_d1_rates",
    "mini_d1_rates_vbr",
]
PAPER = ["paper_d1", "paper_d1_llava", "paper_d2", "paper_d3", "paper_post_processing", "paper_codec"]
PAPER += ["paper_codec_vbr", "paper_p2_llava"]
PAPER += ["paper_d1_convnext", "paper_d2_convnext", "paper_d3_convnext", "paper_d1_siglip", "paper_d1_tcm"]  # 4.6
PAPER += ["paper_d1_rates", "paper_d1_rates_vbr"]  # one neck for every rate (beyond the paper)
LLAVA_TOWER = (  # LLaVA-1.5's tower geometry (24 blocks, 1024 wide, patch 14 at 336), random weights
    "vision.config={vision_config:{hidden_size:1024,intermediate_size:4096,num_hidden_layers:24,"
    "num_attention_heads:16,image_size:336,patch_size:14},projection_dim:768}"
)


def _one_step(experiment: str, tmp_path, *extra: str) -> dict:
    tiny = TINY if experiment.startswith("mini_") else TINY_D1  # the mini presets set subsets; reset them
    overrides = [f"experiment={experiment}", *tiny, "trainer.fast_dev_run=1", "data.batch_size=16", *extra]
    if experiment.startswith(PHASE2):
        overrides.append("scenario.init_from=null")  # phase 2 from a random neck: the mechanics, not the result
    with hydra_cfg(overrides, tmp_path) as cfg:
        results = train_run(cfg)
    assert results["steps"] == 1 and results["metrics"], results  # one optimizer step, then validation
    assert all(math.isfinite(v) for v in results["metrics"].values()), results["metrics"]
    assert (tmp_path / "run" / "results.json").is_file()
    return results


@pytest.mark.parametrize("experiment", MINI)
def test_every_mini_preset_runs_one_step(experiment, tmp_path):
    extra = ["scenario.post.base_channels=4"] if experiment == "mini_post_processing" else []
    _one_step(experiment, tmp_path, *extra)
    if experiment in ("mini_codec", "mini_codec_tcm", "mini_teacher", "mini_codec_vbr", "mini_p2"):
        assert (tmp_path / "run" / "export.pt").is_file()  # the artifact a cache entry is made of


def test_a_run_that_takes_no_training_step_is_an_error_naming_the_batch_size(tmp_path):
    from latentbridge.core.errors import DataError

    with hydra_cfg([*TINY, "trainer.max_epochs=1", "data.batch_size=128"], tmp_path) as cfg:  # 64 synthetic images
        with pytest.raises(DataError, match=r"^data.batch_size: 128 is more than the 64 training images give each"):
            train_run(cfg)


def _offline_tokenizer(path, vocab_size: int) -> str:
    """A Hugging Face tokenizer directory that needs no download (word-level, ``vocab_size`` ids)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1, **{f"w{i}": i for i in range(2, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>", pad_token="</s>")
    fast.save_pretrained(path)
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", PAPER)
def test_every_paper_preset_runs_one_step_at_its_real_size(experiment, tmp_path):
    llava = experiment in ("paper_d1_llava", "paper_p2_llava")
    size = 384 if llava or "siglip" in experiment else 320 if "convnext" in experiment else 256  # the preset's own
    extra = ["codec.checkpoint=null", "trainer=cpu", "data.batch_size=1", "data.eval_batch_size=1"]
    if "siglip" in experiment:  # its tokenizer downloads from the hub: an offline word-level one of its vocabulary
        extra.append(f"vision.tokenizer={_offline_tokenizer(tmp_path / 'tokenizer', 32000)}")
    extra += [f"data.image_size={size}", f"data.raw_size={size}"]
    if llava:
        extra.append(LLAVA_TOWER)
    elif experiment not in ("paper_codec", "paper_codec_vbr"):
        extra.append("vision.pretrained=null")
    _one_step(experiment, tmp_path, *extra)


@pytest.mark.slow
def test_paper_d1_trains_a_step_on_the_published_elic_in_its_authors_format(tmp_path):
    """The README recipe: ``experiment=paper_d1 codec.checkpoint=<Chandelier's ELIC>`` (here a file in that exact
    format with seeded random weights)."""
    from helpers.released import write_release

    from latentbridge.core.config import hydra_quote

    paths = write_release(tmp_path / "release", qualities=(1,), scenarios=())
    extra = [f"codec.checkpoint={hydra_quote(paths['elic1'])}", "codec.lmbda=0.004", "vision.pretrained=null",
             "trainer=cpu", "data.batch_size=1", "data.eval_batch_size=1", "data.image_size=256",
             "data.raw_size=256"]  # fmt: skip
    _one_step("paper_d1", tmp_path, *extra)
