"""Exact resume (issue: cluster scale): a run killed mid-epoch (``kill -9``) or preempted (the SLURM warning
signal) and resumed from its ``last.ckpt`` ends with exactly the weights of the same run left alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers.config import ROOT, TINY, hydra_cfg

from latentbridge.core.config import hydra_quote
from latentbridge.workflows.train import run as train_run
from lightning_modules.resume import Preempted

# phase 0 on random-init mini codec and synthetic images: every step draws quantization noise, so equal weights
# need the data order *and* the RNG streams restored; 3 epochs of 8 steps
CODEC = [
    "experiment=mini_codec",
    *TINY,
    "data.train_size=64",
    "data.batch_size=8",
    "trainer.max_epochs=3",
    "scenario.scheduler.milestones=[2]",
]


def _weights(run_dir):
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return ckpt["global_step"], ckpt["state_dict"]


def _assert_same(a, b):
    (step_a, sd_a), (step_b, sd_b) = a, b
    assert step_a == step_b == 24
    assert sd_a.keys() == sd_b.keys()
    differ = [k for k in sd_a if not torch.equal(sd_a[k], sd_b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    """The uninterrupted run."""
    tmp = tmp_path_factory.mktemp("alone")
    with hydra_cfg(CODEC, tmp) as cfg:
        train_run(cfg)
    return _weights(tmp / "run")


def test_a_run_killed_mid_epoch_and_resumed_from_last_ckpt_equals_the_run_left_alone(tmp_path, alone):
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run_dir = tmp_path / "run"
    paths = [f"paths.output_dir={hydra_quote(run_dir)}", f"paths.cache_dir={hydra_quote(tmp_path / 'cache')}"]
    killer = ["+callbacks.kill._target_=helpers.interrupt.SignalAt", "+callbacks.kill.step=13"]  # epoch 2 of 3
    cmd = [sys.executable, str(ROOT / "train.py"), *CODEC, *paths]
    killed = subprocess.run([*cmd, *killer], env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]  # kill -9 in its second epoch
    step, _ = _weights(run_dir)
    assert step == 8  # last.ckpt: the end of the first epoch
    resumed = subprocess.run(
        [*cmd, f"ckpt_path={hydra_quote(run_dir / 'checkpoints' / 'last.ckpt')}"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same(_weights(run_dir), alone)


def test_a_run_preempted_mid_epoch_checkpoints_there_and_resumes_to_the_same_weights(tmp_path, alone):
    signal_at = [
        "+callbacks.preempt._target_=helpers.interrupt.SignalAt",
        "+callbacks.preempt.step=13",
        "+callbacks.preempt.signal_name=SIGUSR2",
    ]
    with hydra_cfg([*CODEC, *signal_at], tmp_path) as cfg, pytest.raises(Preempted, match="step 14"):
        train_run(cfg)
    step, _ = _weights(tmp_path / "run")
    assert step == 14  # a mid-epoch checkpoint, at the first batch end after the signal
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with hydra_cfg([*CODEC, f"ckpt_path={hydra_quote(last)}"], tmp_path) as cfg:
        train_run(cfg)
    _assert_same(_weights(tmp_path / "run"), alone)


def test_resuming_without_the_exact_resume_callback_gives_other_weights(tmp_path, alone):
    """The control: the same preemption and resume, with the RNG streams not restored, ends elsewhere (so the
    equality above is the callback's doing, not a run without randomness)."""
    signal_at = [
        "+callbacks.preempt._target_=helpers.interrupt.SignalAt",
        "+callbacks.preempt.step=13",
        "+callbacks.preempt.signal_name=SIGUSR2",
    ]
    with hydra_cfg([*CODEC, *signal_at], tmp_path) as cfg, pytest.raises(Preempted):
        train_run(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["callbacks"] = {k: v for k, v in ckpt["callbacks"].items() if "ExactResume" not in k}
    torch.save(ckpt, last)
    with hydra_cfg([*CODEC, f"ckpt_path={hydra_quote(last)}", "callbacks.exact_resume=null"], tmp_path) as cfg:
        train_run(cfg)
    step, state = _weights(tmp_path / "run")
    assert step == 24
    assert any(not torch.equal(state[k], alone[1][k]) for k in state)


def test_under_slurm_a_preempted_run_requeues_its_job(tmp_path, monkeypatch):
    """Inside a SLURM job, rank 0 asks SLURM to requeue the job after the preemption checkpoint (a stand-in
    ``scontrol`` records the call); the requeued job then resumes from last.ckpt as above."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "scontrol.args"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    signal_at = ["+callbacks.preempt._target_=helpers.interrupt.SignalAt", "+callbacks.preempt.step=3",
                 "+callbacks.preempt.signal_name=SIGUSR2", "trainer.max_epochs=1"]  # fmt: skip
    with hydra_cfg([*CODEC, *signal_at], tmp_path) as cfg, pytest.raises(Preempted, match="the SLURM job was requeued"):
        train_run(cfg)
    assert (tmp_path / "scontrol.args").read_text().split() == ["requeue", "4242"]
    assert _weights(tmp_path / "run")[0] == 4


def test_preemption_by_sigterm_checkpoints_and_resumes_to_the_same_weights(tmp_path, alone):
    """SLURM preempts with SIGTERM (GraceTime before SIGKILL); Lightning's own SIGTERM path stopped without a
    checkpoint. Here: last.ckpt at the next batch end, and the resumed run ends with the weights left alone."""
    signal_at = ["+callbacks.preempt._target_=helpers.interrupt.SignalAt", "+callbacks.preempt.step=13",
                 "+callbacks.preempt.signal_name=SIGTERM"]  # fmt: skip
    with hydra_cfg([*CODEC, *signal_at], tmp_path) as cfg, pytest.raises(Preempted, match="step 14"):
        train_run(cfg)
    assert _weights(tmp_path / "run")[0] == 14
    with hydra_cfg(CODEC, tmp_path) as cfg:  # the same command again (resume: auto): continues from last.ckpt
        train_run(cfg)
    _assert_same(_weights(tmp_path / "run"), alone)


def test_last_ckpt_stays_the_newest_after_a_preemption_in_the_first_epoch(tmp_path):
    """Preempted at step 3 (before ModelCheckpoint had a last.ckpt of its own) and resumed: last.ckpt must follow
    the resumed run to its end (it stayed at step 3, the resumed run wrote last-v1.ckpt beside it)."""
    signal_at = ["+callbacks.preempt._target_=helpers.interrupt.SignalAt", "+callbacks.preempt.step=3",
                 "+callbacks.preempt.signal_name=SIGUSR2"]  # fmt: skip
    with hydra_cfg([*CODEC, *signal_at], tmp_path) as cfg, pytest.raises(Preempted, match="step 4"):
        train_run(cfg)
    with hydra_cfg(CODEC, tmp_path) as cfg:
        results = train_run(cfg)
    folder = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in folder.glob("last*.ckpt")) == ["last.ckpt"]
    assert _weights(tmp_path / "run")[0] == 24 and results["last_checkpoint"] == str(folder / "last.ckpt")


def test_resume_never_starts_a_rerun_from_scratch(tmp_path):
    signal_at = ["+callbacks.preempt._target_=helpers.interrupt.SignalAt", "+callbacks.preempt.step=3",
                 "+callbacks.preempt.signal_name=SIGUSR2", "trainer.max_epochs=1"]  # fmt: skip
    with hydra_cfg([*CODEC, *signal_at], tmp_path) as cfg, pytest.raises(Preempted):
        train_run(cfg)
    with hydra_cfg([*CODEC, "trainer.max_epochs=1", "resume=never"], tmp_path) as cfg:
        assert train_run(cfg)["steps"] == 8


def test_a_finished_fit_leaves_the_signal_handlers_it_found_and_frees_its_model(tmp_path):
    """Lightning restores its handlers before the callbacks' teardown; ours used to put Lightning's back afterwards:
    SIGTERM then went to the finished trainer (the process no longer ended on it) and its closure kept the model
    alive — every run of a Hydra sweep or a test session added its model (the slow suite was OOM-killed)."""
    import gc
    import signal
    import weakref

    import lightning as L

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR2)}
    modules = []
    original = L.LightningModule.setup

    def record(self, stage):  # noqa: ANN001, ANN202
        modules.append(weakref.ref(self))
        return original(self, stage)

    L.LightningModule.setup = record
    try:
        with hydra_cfg([*CODEC, "trainer.max_epochs=1"], tmp_path) as cfg:
            train_run(cfg)
    finally:
        L.LightningModule.setup = original
    assert {sig: signal.getsignal(sig) for sig in before} == before
    gc.collect()
    assert modules and all(m() is None for m in modules), "the finished run's model is still referenced"


def test_last_ckpt_is_the_newest_state_when_the_monitored_metric_stops_improving(tmp_path):
    """Lightning >= 2.6 writes last.ckpt only with a new top-k file: a tiny d1 run (random teacher: top-1 on a
    plateau after epoch 0) ended with last.ckpt at step 8 of 24, and a run killed later resumed from there.
    ``LastCheckpoint`` keeps it the newest state; results.json names it."""
    import json

    from helpers.config import TINY_D1

    overrides = [*TINY_D1, "trainer.max_epochs=3", "data.train_size=64", "data.batch_size=8", "data.val_size=40"]
    with hydra_cfg(overrides, tmp_path) as cfg:
        results = train_run(cfg)
    step, _ = _weights(tmp_path / "run")
    assert step == results["steps"] == 24
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["last_checkpoint"].endswith("last.ckpt") and saved["best_checkpoint"].endswith(".ckpt")
