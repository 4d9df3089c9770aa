"""A callback that interrupts its own run at a given step, as a cluster would (tests of exact resume)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback


class SignalAt(Callback):
    """Send ``signal_name`` to this process at the end of training step ``step`` (``SIGKILL``: ``kill -9``).
    With ``once``, a marker file makes later runs (the resumed one) go on undisturbed."""

    def __init__(self, step: int, signal_name: str = "SIGKILL", once: str | None = None) -> None:
        self.step, self.signal, self.once = int(step), getattr(signal, signal_name), once

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step != self.step:
            return
        if self.once is not None:
            if Path(self.once).exists():
                return
            Path(self.once).touch()
        os.kill(os.getpid(), self.signal)
