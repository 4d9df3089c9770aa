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

Preemption and time limits: SLURM sends ``SIGUSR2`` ahead of the time limit (``--signal=USR2@120``: submitit asks for
it), and preempts with ``SIGCONT`` + ``SIGTERM``, then ``SIGKILL`` after the partition's GraceTime (``send_user_signal``
is a site setting; Lightning's own SIGTERM handling stops without a checkpoint). Both signals are handled here: the
handler only sets a flag; at the next training batch end the ranks agree, ``last.ckpt`` is written (a mid-epoch
checkpoint, with every rank's RNG states), rank 0 requeues the job (``scontrol requeue``, as Lightning's SLURM plugin
does) while the other ranks wait for it, and the run stops with ``Preempted``; the requeued job resumes from
``last.ckpt`` (``train.py``'s ``resume: auto``). The flag is checked at training batch ends only: a validation loop
longer than the grace time is not interrupted.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from latentbridge.core.errors import LatentBridgeError


class Preempted(LatentBridgeError):
    """The run stopped on the preemption signal after writing ``last.ckpt`` (``requeued``: SLURM requeued it)."""

    def __init__(self, message: str, requeued: bool = False) -> None:
        super().__init__(message)
        self.requeued = requeued


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

    def __init__(self, seed: int = 0, signals: Sequence[str] = ("SIGUSR2", "SIGTERM"), check_every_n_steps: int = 1
                 ) -> None:  # fmt: skip
        """``signals``: those SLURM sends ahead of the time limit (USR2) and on preemption (TERM); empty: none
        handled. ``check_every_n_steps``: how often the ranks agree on the flag under DDP (one all-reduce of a bool;
        every step by default, so a short grace time is enough)."""
        self.seed = int(seed)
        self.signals = [getattr(signal, name) for name in (signals or ())]
        self.every = max(1, int(check_every_n_steps))
        self._flag = False
        self._previous: dict[int, Any] = {}
        self._before_fit: dict[int, Any] = {}
        self._rng_to_restore: Any = None

    # -- state in the checkpoint: every rank's RNG states ---------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Called on every rank when a checkpoint is written (rank 0 writes it): the states of all ranks."""
        import torch.distributed as dist

        mine = rng_states()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ranks: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, mine)
            return {"rng": ranks[0], "rng_per_rank": ranks}
        return {"rng": mine, "rng_per_rank": [mine]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rng_to_restore = state_dict.get("rng_per_rank") or [state_dict.get("rng")]  # (older: rank 0's only)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        from lightning.pytorch.loggers import WandbLogger

        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger) and lg._experiment is not None:
                checkpoint["wandb_run_id"] = lg.version

    # -- reseeding and the data position --------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()
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
        if self._rng_to_restore is not None:  # the first step after a mid-epoch resume: this rank's own states
            states = self._rng_to_restore
            if trainer.global_rank >= len(states) or len(states) != trainer.world_size:
                raise LatentBridgeError(
                    f"ckpt_path: this mid-epoch checkpoint holds the RNG states of {len(states)} process(es), the run "
                    f"has {trainer.world_size}; resume it on as many, or from an epoch-end checkpoint"
                )
            set_rng_states(states[trainer.global_rank])
            self._rng_to_restore = None

    # -- preemption -----------------------------------------------------------------------------------------
    def _install(self) -> None:
        """Our handlers replace Lightning's for the fit (it registers them after the callbacks' ``setup``, so this runs
        at train start): its SIGTERM path stops without a checkpoint, and submitit's would requeue without one."""
        if threading.current_thread() is threading.main_thread() and not self._previous:
            self._previous = {sig: signal.getsignal(sig) for sig in self.signals}
            for sig in self.signals:
                signal.signal(sig, self._on_signal)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # the handlers before this fit, captured before Lightning registers its own (they are what a fit leaves)
        if threading.current_thread() is threading.main_thread():
            self._before_fit = {sig: signal.getsignal(sig) for sig in self.signals}

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Lightning's own teardown (which runs first) has put back the handlers from before the fit; ours are replaced
        only where they are still installed, by those same handlers — never by Lightning's, whose closure would keep
        the finished trainer and its model alive and send a later SIGTERM to it instead of ending the process."""
        if stage == "fit" and threading.current_thread() is threading.main_thread():
            for sig in self._previous:
                if signal.getsignal(sig) == self._on_signal:
                    signal.signal(sig, self._before_fit.get(sig, signal.SIG_DFL))
            self._previous = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._flag = True  # nothing else in a signal handler: the checkpoint waits for a consistent point

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if not self.signals:
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
        checkpointer = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        if checkpointer is not None and checkpointer.save_last:
            # ModelCheckpoint's own last.ckpt from now on (its state goes into this checkpoint): without this, a
            # resumed run's ModelCheckpoint would not own last.ckpt and would write last-v1.ckpt next to it
            checkpointer.last_model_path = str(path)
        trainer.save_checkpoint(path)
        requeued = requeue() if trainer.is_global_zero else False
        if trainer.world_size > 1:  # no rank ends the step before rank 0 has requeued the job
            requeued = bool(trainer.strategy.broadcast(requeued, src=0))
            trainer.strategy.barrier("latentbridge-preempted")
        raise Preempted(
            f"training was preempted at epoch {trainer.current_epoch}, step {trainer.global_step}: {path} written"
            + ("; the SLURM job was requeued and resumes from it" if requeued else f"; resume with ckpt_path={path}"),
            requeued,
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
