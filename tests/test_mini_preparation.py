"""The mini default end to end at a tiny budget: teacher and codec are trained, cached, then reused."""

import json

import pytest
from helpers.config import hydra_cfg, needs_fmnist

from latentbridge.workflows.train import run as train_run

TINY_PREP = [
    "logger=none",
    "callbacks.progress_bar=null",
    "trainer.max_epochs=1",
    "data.train_subset=128",
    "data.val_subset=64",
    "vision.prepare=['experiment=mini_teacher','trainer.max_epochs=1','data.train_subset=128',"
    "'data.val_subset=64','callbacks.progress_bar=null']",
    "codec.prepare=['experiment=mini_codec','codec.lmbda=${codec.lmbda}','trainer.max_epochs=1',"
    "'data.train_subset=128','data.val_subset=64','callbacks.progress_bar=null']",
]


@pytest.mark.slow
@needs_fmnist
def test_default_run_prepares_and_caches_teacher_and_codec(tmp_path):
    tmp_path = tmp_path / "0_codec.lmbda=0.0001,x=[1]"  # a multirun job dir: '=', ',' and brackets in paths
    with hydra_cfg(TINY_PREP, tmp_path / "first") as cfg:
        cache = tmp_path / "first" / "cache"
        results = train_run(cfg)
    teacher, codec = cache / "teachers" / "mini_clip_p8.pt", cache / "codecs" / "mini_s8_lambda0.0001.pt"
    assert teacher.is_file() and codec.is_file()
    prep = tmp_path / "first" / "run" / "prepare"
    assert json.loads((prep / "vision" / "results.json").read_text())["scenario"] == "MiniClipPretraining"
    assert json.loads((prep / "codec" / "results.json").read_text())["metrics"]["bpp"] > 0
    assert set(results["metrics"]) >= {"bpp", "top1_uncompressed", "top1_neck", "top1_reconstruction"}

    mtimes = (teacher.stat().st_mtime_ns, codec.stat().st_mtime_ns)
    with hydra_cfg([*TINY_PREP, f"paths.cache_dir='{cache}'"], tmp_path / "second") as cfg:
        train_run(cfg)
    assert (teacher.stat().st_mtime_ns, codec.stat().st_mtime_ns) == mtimes  # reused, not retrained
    assert not (tmp_path / "second" / "run" / "prepare").exists()
