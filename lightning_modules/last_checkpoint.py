"""Checkpoints: the best by the module's monitor, and ``last.ckpt`` = the newest state after every validation.

Lightning >= 2.6 writes ``last.ckpt`` only in a step where a top-k file was saved ("saves a last.ckpt copy whenever a
checkpoint file gets saved"): with ``save_top_k=1`` and a metric on a plateau, last.ckpt stayed at the best epoch
(measured: a 3-epoch tiny d1 run ended with last.ckpt at step 8 of 24), so a run killed after a non-improving epoch
resumed from the best one and repeated epochs (``train.py``'s ``resume: auto``), and ``results.json``'s
``last_checkpoint`` was not the last state. ``LastCheckpoint`` also writes last.ckpt when no top-k file was.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` (``save_last=True``) follows every validation (or training epoch end,
    where it saves there), not only the ones that produced a new top-k file."""

    def _save_last_too(self, trainer: L.Trainer, on_train_epoch_end: bool) -> None:
        if (
            self.save_last
            and not self._should_skip_saving_checkpoint(trainer)  # also: already saved at this step
            and self._should_save_on_train_epoch_end(trainer) == on_train_epoch_end
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_too(trainer, True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._save_last_too(trainer, False)


__all__ = ["LastCheckpoint"]
