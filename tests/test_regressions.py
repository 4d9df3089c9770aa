"""The seven bugs of issue 9, one test each; every one of them failed on the layout before the restructure."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.config import CONF, ROOT, TINY, TINY_D1, hydra_cfg
from hydra.utils import instantiate

from latentbridge.cli import user_error
from latentbridge.core.atomic_io import read_checkpoint
from latentbridge.core.config import hydra_quote
from latentbridge.core.errors import CheckpointError, ConfigError
from latentbridge.runs import build_scenario, open_run
from latentbridge.workflows.train import run as train_run


def _cli(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})}
    )


# -- 1. the sweeper gets the monitored metric ---------------------------------------------------------------
def test_bug1_a_hydra_multirun_returns_the_monitored_metric_to_the_sweeper(tmp_path):
    record = tmp_path / "returns.jsonl"
    res = _cli(
        "train.py",
        "-m",
        *TINY_D1,
        "seed=0,1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "+hydra.callbacks.record._target_=helpers.sweep.RecordReturn",
        f"+hydra.callbacks.record.path={record}",
        env={"PYTHONPATH": str(ROOT / "tests")},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    returned = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(returned) == 2
    for r in returned:
        results = json.loads(Path(r["output_dir"], "results.json").read_text())
        assert results["monitor"]["metric"] == "val/top1_neck"
        assert r["value"] == results["metrics"]["top1_neck"] == results["monitor"]["value"]


# -- 2. a cold cache gives the same run as a warm one -------------------------------------------------------
def test_bug2_a_run_that_prepares_its_codec_equals_the_same_run_on_a_warm_cache(tmp_path):
    prepare = (
        "codec.prepare=['experiment=mini_codec','data=synthetic','trainer.max_epochs=1','callbacks.progress_bar=null',"
        "'data.train_subset=null','data.val_subset=null','trainer.enable_model_summary=false','logger=none']"
    )
    overrides = [*TINY_D1, "codec.checkpoint=${paths.cache_dir}/codecs/tiny.pt", prepare]
    metrics = []
    for name in ("cold", "warm"):
        with hydra_cfg([*overrides, f"paths.cache_dir={tmp_path / 'cache'}"], tmp_path / name) as cfg:
            metrics.append(train_run(cfg)["metrics"])
    assert (tmp_path / "cache" / "codecs" / "tiny.pt").is_file()
    assert metrics[0] == metrics[1]


# -- 3. a finished phase-2 run loads without its phase-1 run ------------------------------------------------
def test_bug3_a_finished_d2_run_opens_after_its_d1_run_moved(tmp_path):
    with hydra_cfg([*TINY, "trainer.max_epochs=1"], tmp_path / "d1") as cfg:
        train_run(cfg)
    d1 = tmp_path / "d1" / "run"
    with hydra_cfg(
        ["experiment=mini_d2", *TINY, "trainer.max_epochs=1", f"scenario.init_from={d1}"], tmp_path / "d2"
    ) as cfg:
        results = train_run(cfg)
    d2 = tmp_path / "d2" / "run"  # train.run left its config there, as Hydra does for a command-line run
    shutil.move(d1, tmp_path / "elsewhere")
    finished = open_run(d2)
    saved = torch.load(results["best_checkpoint"], weights_only=True)["state_dict"]
    for k, v in finished.module.state_dict().items():
        if k.startswith("neck."):
            assert torch.equal(v, saved[k]), k  # the d2 checkpoint's neck, not the (gone) d1 neck


# -- 4. every config key an error message names is a key Hydra accepts -------------------------------------
ERROR_KEY = re.compile(r'(?:ConfigError|CheckpointError|DataError)\(\s*f?"([a-z_][\w.]*):')


def _message_keys() -> dict[str, str]:
    """Config keys named at the start of error messages in the library (CLI flags and lmms-eval's model_args
    are not Hydra keys: cli/codec.py and mllm/lmms_model.py are left out)."""
    keys = {}
    for pkg in ("latentbridge", "lightning_modules", "datamodules"):
        for f in (ROOT / pkg).rglob("*.py"):
            if f.name in ("codec.py", "lmms_model.py") and f.parent.name in ("cli", "mllm"):
                continue
            for key in ERROR_KEY.findall(f.read_text()):
                keys[key] = str(f.relative_to(ROOT))
    return keys


def _hydra_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return hydra_quote(value) if isinstance(value, str) else str(value)


def test_bug4_every_key_named_in_an_error_message_applies_as_an_override(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from latentbridge.core.config import register_resolvers

    register_resolvers()
    keys = _message_keys()
    assert len(keys) > 15, keys  # the scan finds the messages
    primaries = {
        "train": ["experiment=mini_d1"],
        "train+d2": ["experiment=mini_d2"],
        "train+d3": ["experiment=mini_d3"],
        "train+post": ["experiment=mini_post_processing"],
        "train+codec": ["experiment=mini_codec"],
        "train+p2": ["experiment=mini_p2"],
        "train+folder": ["data=image_folder"],
        "train+convergence": ["experiment=mini_d1", "callbacks=convergence"],
        "train+rates": ["experiment=mini_d1_rates"],
        "evaluate": [],
        "reproduce": [],
        "reproduce+slurm": ["launcher=slurm"],
        "reproduce+local": ["launcher=submitit_local"],
        "mllm_evaluate": [],
        "serve": [],
    }
    unknown = dict(keys)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        for name, base in primaries.items():
            config = name.split("+")[0]
            cfg = compose(config, overrides=base)
            for key in list(unknown):
                parent, _, leaf = key.rpartition(".")
                holder = OmegaConf.select(cfg, parent) if parent else cfg
                if not (OmegaConf.is_config(holder) and leaf in holder.keys()):  # "in" skips ??? values
                    continue
                node = None if OmegaConf.is_missing(holder, leaf) else holder[leaf]
                if not OmegaConf.is_config(node):  # a value: set it as the message names it; Hydra must accept it
                    compose(config, overrides=[*base, f"{key}={_hydra_value(node)}"])
                del unknown[key]
    assert not unknown, f"error messages name keys that are not config keys: {unknown}"


# -- 5. out-of-range loss settings are one-line config errors ----------------------------------------------
def test_bug5_a_negative_lambda_is_a_one_line_error_naming_loss_lmbda(tmp_path):
    with hydra_cfg(["experiment=mini_d2", *TINY, "scenario.init_from=null", "loss.lmbda=-1"], tmp_path) as cfg:
        with pytest.raises(Exception) as e:
            instantiate(cfg.loss)
    err = user_error(e.value)
    assert isinstance(err, ConfigError) and str(err).startswith("loss.lmbda: -1")
    res = _cli("train.py", "experiment=mini_d2", *TINY, "scenario.init_from=null", "loss.lmbda=-1",
               f"paths.log_dir={tmp_path / 'logs'}", f"paths.cache_dir={tmp_path / 'cache'}")  # fmt: skip
    assert res.returncode == 2 and res.stderr.strip().startswith("error: loss.lmbda: -1"), res.stderr[-1500:]
    assert len(res.stderr.strip().splitlines()) == 1


# -- 6. under 16-bit AMP the clipping sees unscaled gradients ----------------------------------------------
_CLIP = torch.nn.utils.clip_grad_norm_


def _clipped_norms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plugins: list) -> list[float]:
    import lightning as L

    seen: list[float] = []
    clip = _CLIP

    def spy(params, max_norm, *args, **kwargs):  # type: ignore[no-untyped-def]
        params = [p for p in params if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([p.grad.float().norm() for p in params]))))
        return clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    with hydra_cfg(
        ["experiment=mini_d2", *TINY, "scenario.init_from=null", "scenario.clip_max_norm=1e9"], tmp_path
    ) as cfg:
        L.seed_everything(0)
        dm, module = instantiate(cfg.data), build_scenario(cfg)
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        limit_val_batches=0,
        plugins=plugins,
    )
    trainer.fit(module, datamodule=dm)
    return seen


def test_bug6_amp_clips_unscaled_gradients(tmp_path, monkeypatch):
    from lightning.pytorch.plugins.precision import MixedPrecision

    scale = 2.0**8  # the scaled gradients stay finite in fp16, so a clip on them would see ~256x the norm
    reference = _clipped_norms(tmp_path / "fp32", monkeypatch, [])
    amp = _clipped_norms(
        tmp_path / "amp",
        monkeypatch,
        [MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=scale))],
    )
    assert len(reference) == len(amp) == 1
    assert 0.5 < amp[0] / reference[0] < 2.0, f"clipping saw {amp[0]:.4g}, fp32 {reference[0]:.4g} (scale {scale:g})"


# -- 7. a checkpoint never runs code -----------------------------------------------------------------------
class _Payload:
    """Pickles as a call that creates a marker file: what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_bug7_a_pickled_payload_in_a_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "codec.pt"
    torch.save({"format": "latentbridge-codec/1", "name": "mini", "x": _Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(evil, "codec.checkpoint")
    from latentbridge.codecs.adapter import build_codec

    with pytest.raises(CheckpointError, match=r"^codec.checkpoint: .* refused"):
        build_codec("mini", checkpoint=str(evil))
    res = _cli("-m", "latentbridge.cli.codec", "decode", "--codec", str(evil), str(evil), "-o", str(tmp_path))
    assert res.returncode == 2 and "refused" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    with hydra_cfg([*TINY_D1, f"ckpt_path={evil}"], tmp_path) as cfg:
        with pytest.raises(CheckpointError, match=r"^ckpt_path: .* refused"):
            train_run(cfg)
    assert not marker.exists(), "a checkpoint's pickled payload ran"
