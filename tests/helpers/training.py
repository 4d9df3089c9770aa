"""Fitting a module quietly in tests."""

from __future__ import annotations

from typing import Any


def fit(module: Any, datamodule: Any, epochs: int = 2, **trainer_args: Any) -> Any:
    """Fit ``module`` for ``epochs`` on CPU with nothing written (no logger, no checkpoints, no progress bar)."""
    import lightning as L

    settings = dict(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer = L.Trainer(**{**settings, **trainer_args})
    trainer.fit(module, datamodule=datamodule)
    return trainer
