"""Exact resume (issue: cluster scale): a run resumed from any of its checkpoints ends with the weights of the same
run left alone, and a preempted job checkpoints before SLURM kills it.

What a resumed process must reproduce, and how:
- the data order: ``datamodules/sampler.py`` (a permutation of (seed, epoch) alone; a mid-epoch resume skips the
  batches already trained on);
- the random draws of the training step (phase 2's quantization noise, paper 2's rate draws): every RNG is
  reseeded from (seed, epoch, rank) when an epoch starts, and a mid-epoch checkpoint carries the RNG states, put
  back before its first step;
- optimizer, schedulers, loop counters: Lightning's checkpoint;
- the wandb run: its id travels in the checkpoint (``wandb_run_id``), so the dashboard continues one run.

Preemption: SLURM sends a warning signal before it stops a job (submitit asks for ``SIGUSR2``, 90 s ahead). The
handler only sets a flag; at the next batch end the ranks agree, ``last.ckpt`` is written (a mid-epoch checkpoint),
rank 0 requeues the job (``scontrol requeue``, as Lightning's SLURM plugin does) and the run stops with ``Preempted``;
the requeued job resumes from ``last.ckpt``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from latentbridge.core.errors import LatentBridgeError


class Preempted(LatentBridgeError):
    """The run stopped on the preemption signal after writing ``last.ckpt``."""


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of every RNG at the start of ``epoch`` on ``rank`` (distinct per rank: independent noise)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + int(rank)) % (2**32)


def rng_states() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and Python RNG states."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": _numpy_state(),
        "python": random.getstate(),
    }


def _numpy_state() -> list[Any]:
    """numpy's state as plain lists (checkpoints are read with ``weights_only=True``: no numpy arrays)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(states["python"])


class ExactResume(Callback):
    """Per-epoch reseeding, mid-epoch RNG + data position, checkpoint-and-requeue on the preemption signal."""

    def __init__(self, seed: int = 0, signal_name: str | None = "SIGUSR2", check_every_n_steps: int = 10) -> None:
        """``signal_name``: the signal SLURM sends ahead of preemption / the time limit (null: none handled);
        ``check_every_n_steps``: how often the ranks agree on it under DDP (every step with one process)."""
        self.seed = int(seed)
        self.signal = getattr(signal, signal_name) if signal_name else None
        self.every = max(1, int(check_every_n_steps))
        self._flag = False
        self._previous: Any = None
        self._rng_to_restore: dict[str, Any] | None = None

    # -- state in the checkpoint ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rng_to_restore = state_dict.get("rng")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        from lightning.pytorch.loggers import WandbLogger

        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger) and lg._experiment is not None:
                checkpoint["wandb_run_id"] = lg.version

    # -- reseeding and the data position --------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.fit_loop.restarted_mid_epoch:
            self._rng_to_restore = None  # an epoch-end checkpoint: the next epoch reseeds
            return
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed  # saved at a batch end: that batch is done
        loader = trainer.train_dataloader
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "skip"):
            sampler.skip(done * loader.batch_size)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        s = epoch_seed(self.seed, trainer.current_epoch, trainer.global_rank)
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int) -> None:
        if self._rng_to_restore is not None:  # the first step after a mid-epoch resume
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None

    # -- preemption -----------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.signal is not None and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signal, self._on_signal)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self._previous is not None:
            signal.signal(self.signal, self._previous)
            self._previous = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._flag = True  # nothing else in a signal handler: the checkpoint waits for a consistent point

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.signal is None:
            return
        if trainer.world_size > 1:
            if trainer.global_step % self.every:
                return
            stop = trainer.strategy.reduce_boolean_decision(self._flag, all=False)
        else:
            stop = self._flag
        if not stop:
            return
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        requeued = requeue() if trainer.is_global_zero else False
        raise Preempted(
            f"training was preempted at epoch {trainer.current_epoch}, step {trainer.global_step}: {path} written"
            + ("; the SLURM job was requeued and resumes from it" if requeued else f"; resume with ckpt_path={path}")
        )


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """``<checkpoint dir>/last.ckpt`` (where ``ModelCheckpoint(save_last=True)`` keeps the newest state)."""
    cb = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    folder = Path(cb.dirpath) if cb is not None and cb.dirpath else Path(trainer.default_root_dir) / "checkpoints"
    return folder / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"


def requeue() -> bool:
    """``scontrol requeue $SLURM_JOB_ID`` inside a SLURM job; False elsewhere or when it fails."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    try:
        return subprocess.call(["scontrol", "requeue", job]) == 0
    except OSError:
        return False
