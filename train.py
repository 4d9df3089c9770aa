"""Train a LatentBridge model (Hydra entry point; configs in conf/, presets in conf/experiment/).

    python train.py                                   # d1 on the offline mini setup (the default)
    python train.py experiment=paper_d1 data.root=... codec.checkpoint=... trainer=ddp trainer.devices=8
    python train.py -m experiment=mini_d1 codec.lmbda=0.0018,0.0035,0.0067,0.013   # rate points
    python train.py ckpt_path=<run dir>/checkpoints/last.ckpt                        # resume

A run whose codec / teacher checkpoint is missing but whose config carries a ``prepare`` recipe (the mini
setup) first trains and caches it. The run ends with a validation of the best checkpoint, written atomically to
``<run dir>/results.json`` and printed as a table.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from latentbridge.errors import CheckpointError, ConfigError, LatentBridgeError

log = logging.getLogger("latentbridge")
T = TypeVar("T")


def _wandb_offline() -> bool:
    """Offline unless an API key is set or WANDB_MODE asks for online."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("online", "run"):
        return False
    return mode in ("offline", "dryrun", "disabled") or not os.environ.get("WANDB_API_KEY")


# Frozen parts (codec in d1, the teacher) are kept in eval mode on purpose (BridgeModule.train).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
OmegaConf.register_new_resolver("lb_uid", lambda: secrets.token_hex(3), use_cache=True, replace=True)
OmegaConf.register_new_resolver("lb_wandb_offline", _wandb_offline, replace=True)


def user_error(exc: BaseException) -> LatentBridgeError | None:
    """The LatentBridgeError behind ``exc`` (Hydra wraps errors raised inside instantiated targets), if any."""
    seen = exc
    while seen is not None:
        if isinstance(seen, LatentBridgeError):
            return seen
        if isinstance(seen, OmegaConfBaseException) and not isinstance(seen, InstantiationException):
            key = getattr(seen, "full_key", None)
            return ConfigError(f"{key}: {str(seen).splitlines()[0]}" if key else str(seen).splitlines()[0])
        seen = seen.__cause__ or seen.__context__
    return None


def run_cli(fn: Callable[..., T], *args: Any) -> T:
    """Run an entry point's work; a user error (bad config, missing file, wrong checkpoint) is one line on stderr
    and exit status 2, never a traceback. Used by every entry point (train, evaluate, reproduce, ...)."""
    try:
        return fn(*args)
    except Exception as e:
        err = user_error(e)
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def scenario_inputs(cfg: DictConfig) -> list[str]:
    """Top-level component groups the scenario is built from (``codec: ${codec}`` and so on)."""
    raw = OmegaConf.to_container(cfg.scenario, resolve=False)
    return [k for k, v in raw.items() if isinstance(v, str) and v == f"${{{k}}}"]


def validate_names(cfg: DictConfig) -> None:
    """Cheap checks of component names, before any preparation or training can take minutes."""
    inputs = scenario_inputs(cfg)
    if "codec" in inputs:
        from models.codec_adapter import codec_spec

        codec_spec(cfg.codec.name)
    open_clip_target = str(cfg.vision.get("_target_", "")).endswith("vision_encoder.build_vision_encoder")
    if "vision" in inputs and open_clip_target and cfg.vision.get("arch") is None:
        import open_clip

        if cfg.vision.model_name not in open_clip.list_models():
            raise ConfigError(f"vision.model_name: unknown open_clip model '{cfg.vision.model_name}'")


def prepare_dependencies(cfg: DictConfig) -> None:
    """Train and cache the components the scenario needs whose checkpoint is missing and that have a recipe."""
    from filelock import FileLock
    from hydra import compose

    for key in ("vision", "codec"):
        if key not in scenario_inputs(cfg):
            continue
        node = cfg[key]
        ckpt, recipe = node.get("checkpoint"), node.get("prepare")
        if not ckpt or not recipe or Path(ckpt).is_file():
            continue
        Path(ckpt).parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{ckpt}.lock"):
            if Path(ckpt).is_file():  # another process prepared it meanwhile
                continue
            log.info("%s.checkpoint %s is missing: preparing it with %s", key, ckpt, list(recipe))
            sub = compose(
                config_name="train",
                overrides=[
                    *recipe,
                    f"export_path={hydra_quote(ckpt)}",
                    f"paths.output_dir={hydra_quote(Path(cfg.paths.output_dir) / 'prepare' / key)}",
                    f"paths.cache_dir={hydra_quote(cfg.paths.cache_dir)}",
                    f"logger={_choice('logger', 'none')}",
                ],
            )
            run(sub)


def hydra_quote(value: object) -> str:
    """A value as a quoted Hydra override string (paths may hold '=', ',' or brackets)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _choice(group: str, default: str) -> str:
    from hydra.core.hydra_config import HydraConfig

    try:
        return str(HydraConfig.get().runtime.choices.get(group, default))
    except ValueError:  # not inside a Hydra app (tests composing configs)
        return default


def build_callbacks(cfg: DictConfig, module: Any, has_logger: bool) -> list[Any]:
    """Instantiate callbacks; a checkpoint callback with ``monitor: null`` monitors the module's own metric.
    The learning-rate monitor needs a logger and is left out without one (``logger=none``)."""
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import LearningRateMonitor

    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None:
            continue
        if name == "model_checkpoint" and node.get("monitor") is None:
            metric, mode = module.monitor
            callbacks.append(instantiate(node, monitor=metric, mode=mode))
        else:
            callback = instantiate(node)
            if has_logger or not isinstance(callback, LearningRateMonitor):
                callbacks.append(callback)
    return callbacks


def run(cfg: DictConfig) -> dict[str, Any]:
    """Prepare, fit, validate the best checkpoint, export the artifact, write results.json. Returns the results."""
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint

    from latentbridge.atomic_io import atomic_torch_save, atomic_write_json
    from latentbridge.report import print_results

    started = time.time()
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    validate_names(cfg)
    prepare_dependencies(cfg)

    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.scenario)
    loggers = [instantiate(node) for node in (cfg.get("logger") or {}).values() if node is not None]
    callbacks = build_callbacks(cfg, module, has_logger=bool(loggers))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None and not Path(ckpt_path).is_file():
        raise CheckpointError(f"ckpt_path: {ckpt_path} does not exist")
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if trainer.interrupted:
        raise LatentBridgeError("training was interrupted; resume with ckpt_path=<run dir>/checkpoints/last.ckpt")

    checkpoint_cb = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    best = checkpoint_cb.best_model_path if checkpoint_cb and checkpoint_cb.best_model_path else None
    metrics: dict[str, float] = {}
    if cfg.get("final_eval", True):
        validated = trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)
        metrics = {k.removeprefix("val/"): float(v) for k, v in (validated[0] if validated else {}).items()}

    inputs = scenario_inputs(cfg)
    results: dict[str, Any] = {
        "task_name": cfg.task_name,
        "experiment": cfg.get("experiment_name"),
        "scenario": type(module).__name__,
        "codec": {"name": cfg.codec.name, "lmbda": cfg.codec.get("lmbda")} if "codec" in inputs else None,
        "vision": cfg.vision.model_name if "vision" in inputs else None,
        "metrics": metrics,
        "epochs": trainer.current_epoch,
        "best_checkpoint": best,
        "last_checkpoint": checkpoint_cb.last_model_path if checkpoint_cb else None,
        "run_dir": str(out_dir.resolve()),
        "wall_time_s": round(time.time() - started, 1),
    }
    if trainer.is_global_zero:
        if hasattr(module, "export"):
            export_path = Path(cfg.get("export_path") or out_dir / "export.pt").resolve()
            atomic_torch_save(module.export(), export_path)
            results["export"] = str(export_path)
        atomic_write_json(out_dir / "results.json", results)
        print_results(results, out_dir / "results.json")
    finish_loggers(loggers)
    return results


def finish_loggers(loggers: list[Any]) -> None:
    """Close each run's wandb run: Lightning's WandbLogger would otherwise reuse it for the next run in this
    process (the preparation runs and the main run would share one wandb run)."""
    from lightning.pytorch.loggers import WandbLogger

    for lg in loggers:
        if isinstance(lg, WandbLogger) and lg._experiment is not None:
            lg.experiment.finish()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry; returns the monitored metric (for sweepers)."""
    results = run_cli(run, cfg)
    values = list(results["metrics"].values())
    return values[0] if values else None


if __name__ == "__main__":
    main()
