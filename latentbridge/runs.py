"""Scenarios from configs, and finished runs from their directories (one place for both).

A run directory holds ``.hydra/config.yaml`` (the composed config), ``results.json`` (metrics and the best / last
checkpoint) and ``checkpoints/``. ``open_run`` rebuilds its module from these alone: a phase-2 run does not need
its phase-1 run any more (the phase-1 neck is read only when training starts).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from latentbridge.core.atomic_io import read_checkpoint
from latentbridge.core.errors import CheckpointError, ConfigError
from latentbridge.core.run_dir import checkpoint_of, config_file


def scenario_uses(cfg: DictConfig) -> list[str]:
    """The component groups the scenario is built from (codec, vision): its class's ``uses``. Explicit in code,
    so ``instantiate(cfg.scenario)`` stays a plain Hydra call."""
    from hydra.utils import get_class

    return list(getattr(get_class(cfg.scenario._target_), "uses", ()))


def family_rates(cfg: DictConfig) -> list[float] | None:
    """``scenario.rates`` of a rate-conditioned scenario over a fixed-rate codec: the family's rate points (None
    for every other run, a variable-rate codec's included: its one model covers them)."""
    rates = cfg.scenario.get("rates")
    if not rates or "codec" not in cfg or cfg.codec.get("lmbda") is None:
        return None
    return [float(r) for r in rates]


def codec_nodes(cfg: DictConfig) -> list[DictConfig]:
    """The codec configs a run builds: ``cfg.codec``, or one per rate of a family (``codec.lmbda`` set to each, so
    that its checkpoint and preparation recipe follow the rate as for a run at that rate)."""
    rates = family_rates(cfg)
    if rates is None:
        return [cfg.codec]
    return [OmegaConf.merge(cfg, {"codec": {"lmbda": r}}).codec for r in rates]


def build_scenario(cfg: DictConfig) -> Any:
    """The scenario's LightningModule from ``cfg.scenario`` (Hydra's ``instantiate``); a rate-conditioned scenario
    over a fixed-rate codec gets the family of that codec at each of ``scenario.rates`` (``codecs/family.py``)."""
    from hydra.utils import instantiate

    if family_rates(cfg) is None:
        return instantiate(cfg.scenario)
    from latentbridge.codecs.family import CodecFamily

    return instantiate(cfg.scenario, codec=CodecFamily([instantiate(node) for node in codec_nodes(cfg)]))


@dataclass
class FinishedRun:
    """A trained run: its directory, composed config and module (eval mode)."""

    dir: Path
    config: DictConfig
    module: Any

    @property
    def lmbda(self) -> float | None:
        return self.config.codec.get("lmbda")

    @property
    def image_size(self) -> int:
        return int(self.config.data.image_size)


def run_config(run_dir: str | Path, key: str = "runs") -> DictConfig:
    """The composed config of a run directory; one-line errors when it is not a finished run."""
    run_dir = Path(run_dir)
    for f in (run_dir / "results.json", config_file(run_dir)):
        if not f.is_file():
            raise ConfigError(f"{key}: {f} is missing (not a finished LatentBridge run directory)")
    return OmegaConf.load(config_file(run_dir))


def open_run(run_dir: str | Path, key: str = "runs", data: dict[str, Any] | None = None) -> FinishedRun:
    """Rebuild the trained module of a finished run from its directory alone (best checkpoint, entropy tables
    updated, eval mode, on the CPU: a Trainer or ``.to`` moves it). ``data`` overrides its data settings. Seeds
    like training before building, so parts without a checkpoint are the ones the run trained with."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir, key)
    if data:
        cfg = OmegaConf.merge(cfg, {"data": data})
    ckpt = checkpoint_of(run_dir, key)
    L.seed_everything(cfg.get("seed", 0), verbose=False)  # as training did: frozen parts with random weights
    module = build_scenario(cfg)  # (no checkpoint: tests, tiny plans) come back exactly as they trained
    state = read_checkpoint(ckpt, key)
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(f"{key}: {ckpt} is not a Lightning checkpoint")
    module.on_load_checkpoint(state)
    module.load_state_dict(state["state_dict"], strict=False)
    module.codec.update_tables()
    return FinishedRun(run_dir, cfg, module.eval())
