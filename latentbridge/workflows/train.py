"""Training (``latentbridge-train`` / ``python train.py``): prepare missing components, fit, validate the best
checkpoint, export the artifact, write results.json.

A run whose codec / teacher checkpoint is missing but whose config carries a ``prepare`` recipe (the mini setup)
first trains and caches it, in a run of its own; the main run is seeded after that, so a run on a cold cache and
the same run on a warm cache are the same run.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from latentbridge.core.config import hydra_quote
from latentbridge.core.errors import ConfigError, DataError, LatentBridgeError
from latentbridge.runs import build_scenario, codec_nodes, scenario_uses

log = logging.getLogger("latentbridge")


def validate_names(cfg: DictConfig) -> None:
    """Cheap checks of component names, before any preparation or training can take minutes."""
    uses = scenario_uses(cfg)
    if "codec" in uses:
        from latentbridge.codecs.adapter import codec_spec

        codec_spec(cfg.codec.name)
    open_clip_target = str(cfg.vision.get("_target_", "")).endswith("open_clip_encoder.build_vision_encoder")
    if "vision" in uses and open_clip_target and cfg.vision.get("arch") is None:
        import open_clip

        if cfg.vision.model_name not in open_clip.list_models():
            raise ConfigError(f"vision.model_name: unknown open_clip model '{cfg.vision.model_name}'")


def prepare_dependencies(cfg: DictConfig) -> None:
    """Train and cache the components the scenario uses whose checkpoint is missing and that have a recipe (or copy the
    shipped asset built by that recipe: ``use_shipped_assets``, :mod:`latentbridge.workflows.assets`)."""
    from hydra import compose

    from latentbridge.core.lease_lock import LeaseLock
    from latentbridge.workflows.assets import take_shipped

    for key, node in [(k, n) for k in scenario_uses(cfg) for n in (codec_nodes(cfg) if k == "codec" else [cfg[k]])]:
        ckpt, recipe = node.get("checkpoint"), node.get("prepare")
        if not ckpt or not recipe or Path(ckpt).is_file():
            continue
        Path(ckpt).parent.mkdir(parents=True, exist_ok=True)
        with LeaseLock(f"{ckpt}.lock"):
            if Path(ckpt).is_file():  # another process prepared it meanwhile
                continue
            if cfg.get("use_shipped_assets", True) and take_shipped(ckpt, cfg.paths.cache_dir, list(recipe)):
                log.info("%s.checkpoint %s: the shipped asset built by %s (assets/mini)", key, ckpt, list(recipe))
                continue
            if launched_ranks() > 1:
                raise ConfigError(
                    f"{key}.checkpoint: {ckpt} is missing and this is one of {launched_ranks()} processes launched "
                    "together; prepare it first in one process (latentbridge-reproduce's prepare job, or make train)"
                )
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


def launched_ranks() -> int:
    """How many processes a cluster launcher started together (SLURM tasks, torchrun's WORLD_SIZE); 1 when this
    process starts its own ranks (Lightning's ddp launcher re-runs the script only after preparation)."""
    import os

    for var in ("WORLD_SIZE", "SLURM_NTASKS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


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


def check_batches(datamodule: Any, trainer: Any) -> None:
    """Refuse a run that could not take a single training step: each rank drops its incomplete last batch."""
    datamodule = getattr(datamodule, "base", datamodule)  # a latent cache counts the images it is built from
    batch_size = getattr(datamodule, "batch_size", None)
    if not batch_size:
        return
    images = len(datamodule.train_dataloader().dataset)
    if images // trainer.world_size < batch_size:
        raise DataError(
            f"data.batch_size: {batch_size} is more than the {images} training images give each of "
            f"{trainer.world_size} process(es); no training step could be taken (incomplete batches are dropped)"
        )


def latent_cache_dir(cfg: DictConfig, datamodule: Any, module: Any) -> Path:
    """``data.cache_dir``, or one directory per (codec, rate point, teacher, their weights, images, cached fields)
    under ``paths.cache_dir/latents``: a retrained codec or teacher gets a new cache, never a stale one. The
    signature inside a cache refuses any other use of it (e.g. an explicit ``data.cache_dir`` of another run)."""
    from latentbridge.core.digest import json_digest

    if cfg.data.get("cache_dir"):
        return Path(cfg.data.cache_dir)
    key = {
        "data": datamodule.signature(),
        "train": datamodule.train_subset,
        "val": datamodule.val_subset,
        "fields": [module.cache_fields(s) for s in ("train", "val")],
        "skip": module.skip_blocks if getattr(module.loss_fn, "token_weight", 0.0) else None,
        "dtype": datamodule.cache_dtype,
        "weights": [module.cache_signature().get(k) for k in ("codec_weights", "vision_weights")],
    }
    rates = cfg.scenario.get("rates")
    name = f"{cfg.codec.name}-" + (f"rates{min(rates)}-{max(rates)}" if rates else f"lambda{cfg.codec.lmbda}")
    return Path(cfg.paths.cache_dir) / "latents" / name / str(cfg.vision.model_name) / json_digest(key)


def with_latent_cache(cfg: DictConfig, datamodule: Any, module: Any) -> Any:
    """The datamodule served from the latent cache (``data.cache=true``)."""
    from datamodules.latent_cache import LatentCacheDataModule

    return LatentCacheDataModule(
        datamodule,
        module,
        latent_cache_dir(cfg, datamodule, module),
        dtype=datamodule.cache_dtype,
        shard_size=datamodule.cache_shard_size,
        in_memory=datamodule.cache_in_memory,
        memory_gb=datamodule.cache_memory_gb,
    )


def set_epoch_length(cfg: DictConfig, datamodule: Any, trainer: Any) -> None:
    """``epoch_samples``: an epoch is this many training samples over all processes, whatever the number of
    devices (``trainer.limit_train_batches`` counts batches per process: with 8 GPUs an "epoch" of 3,337 batches
    would be 8x the paper's, at an unchanged learning rate and schedule)."""
    samples = cfg.get("epoch_samples")
    if samples is None:
        return
    if cfg.trainer.get("limit_train_batches") is not None:
        raise ConfigError("epoch_samples: set it or trainer.limit_train_batches, not both")
    per_step = datamodule.batch_size * trainer.world_size * int(cfg.trainer.get("accumulate_grad_batches") or 1)
    if samples < per_step:
        raise ConfigError(
            f"epoch_samples: {samples} is less than one step ({datamodule.batch_size} x {trainer.world_size} "
            "process(es))"
        )
    trainer.limit_train_batches = int(samples) // (datamodule.batch_size * trainer.world_size)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Prepare, fit, validate the best checkpoint, export the artifact, write results.json. Returns the results;
    ``results["monitor"]["value"]`` is the metric that selected the best checkpoint (what a sweeper optimizes)."""
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.utilities import rank_zero_only

    from latentbridge.analysis.report import print_results
    from latentbridge.core.atomic_io import atomic_torch_save, atomic_write_bytes, atomic_write_json, read_checkpoint
    from latentbridge.core.run_dir import config_file

    # Frozen parts (codec in d1, the teacher) are kept in eval mode on purpose (BridgeModule.train).
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    started = time.time()
    out_dir = Path(cfg.paths.output_dir)
    validate_names(cfg)
    prepare_dependencies(cfg)
    L.seed_everything(
        cfg.seed, workers=True, verbose=False
    )  # after preparation: a cold cache gives the same run as a warm one

    if rank_zero_only.rank == 0 and not config_file(out_dir).is_file():  # Hydra writes it for command-line runs
        atomic_write_bytes(config_file(out_dir), OmegaConf.to_yaml(cfg).encode())  # open_run reads it
    datamodule = instantiate(cfg.data)
    module = build_scenario(cfg)
    if getattr(datamodule, "cache", False):
        datamodule = with_latent_cache(cfg, datamodule, module)
    ckpt_path = resume_from(cfg, out_dir)
    # missing, unreadable or unsafe (a pickled payload): one line before Lightning loads it
    resumed = read_checkpoint(ckpt_path, "ckpt_path") if ckpt_path is not None else None
    run_id = resumed.get("wandb_run_id") if isinstance(resumed, dict) else None
    del resumed
    loggers = [instantiate(node, **logger_resume(node, run_id)) for node in (cfg.get("logger") or {}).values() if node]
    callbacks = build_callbacks(cfg, module, has_logger=bool(loggers))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    set_epoch_length(cfg, datamodule, trainer)
    check_batches(datamodule, trainer)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    if trainer.interrupted:
        raise LatentBridgeError("training was interrupted; resume with ckpt_path=<run dir>/checkpoints/last.ckpt")

    converging = next((c for c in trainer.callbacks if type(c).__name__ == "Convergence"), None)
    # lightning_modules/convergence.py: converged or stopped at the cap, and the curve (before the final validation,
    # which restores the best checkpoint's callback states)
    convergence = converging.summary(trainer) if converging is not None else None
    checkpoint_cb = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    best = checkpoint_cb.best_model_path if checkpoint_cb and checkpoint_cb.best_model_path else None
    last = checkpoint_cb.last_model_path or None if checkpoint_cb else None  # before validate restores best's state
    metrics: dict[str, float] = {}
    if cfg.get("final_eval", True):
        validated = trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True)
        metrics = {k.removeprefix("val/"): float(v) for k, v in (validated[0] if validated else {}).items()}

    uses = scenario_uses(cfg)
    monitor, mode = module.monitor
    results: dict[str, Any] = {
        "task_name": cfg.task_name,
        "experiment": cfg.get("experiment_name"),
        "scenario": type(module).__name__,
        "codec": codec_entry(cfg) if "codec" in uses else None,
        "vision": cfg.vision.model_name if "vision" in uses else None,
        "metrics": metrics,
        "monitor": {"metric": monitor, "mode": mode, "value": metrics.get(monitor.removeprefix("val/"))},
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "best_checkpoint": best,
        "last_checkpoint": last,
        "run_dir": str(out_dir.resolve()),
        "wall_time_s": round(time.time() - started, 1),
    }
    if convergence is not None:
        results["convergence"] = convergence
    if trainer.is_global_zero:
        if hasattr(module, "export"):
            export_path = Path(cfg.get("export_path") or out_dir / "export.pt").resolve()
            atomic_torch_save(module.export(), export_path)
            results["export"] = str(export_path)
        atomic_write_json(out_dir / "results.json", results)
        print_results(results, out_dir / "results.json")
    finish_loggers(loggers)
    return results


def codec_entry(cfg: DictConfig) -> dict[str, Any]:
    """results.json's codec: its name and rate point, or the rates a rate-conditioned neck covers."""
    rates = cfg.scenario.get("rates")
    if rates:
        return {"name": cfg.codec.name, "lmbda": None, "rates": [float(r) for r in rates]}
    return {"name": cfg.codec.name, "lmbda": cfg.codec.get("lmbda")}


def resume_from(cfg: DictConfig, out_dir: Path) -> str | None:
    """``ckpt_path``, else (``resume: auto``) the run directory's own ``checkpoints/last.ckpt`` when there is one: a
    requeued SLURM job (a plan's, or a sweep point of ``train.py -m hydra/launcher=slurm``) reruns the same command
    in the same directory and must continue, not start over."""
    mode = cfg.get("resume", "auto")
    if mode not in ("auto", "never"):
        raise ConfigError(f"resume: '{mode}' is not one of auto, never")
    if cfg.get("ckpt_path") is not None or mode == "never":
        return cfg.get("ckpt_path")
    last = out_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.info("resume=auto: %s exists, resuming from it", last)
        return str(last)
    return None


def logger_resume(node: DictConfig, run_id: str | None) -> dict[str, Any]:
    """A resumed run continues its wandb run: the id its checkpoint carries (``lightning_modules/resume.py``)."""
    if run_id and str(node.get("_target_", "")).endswith("WandbLogger"):
        return {"id": run_id, "resume": "allow"}
    return {}


def finish_loggers(loggers: list[Any]) -> None:
    """Close each run's wandb run: Lightning's WandbLogger would otherwise reuse it for the next run in this
    process (the preparation runs and the main run would share one wandb run)."""
    from lightning.pytorch.loggers import WandbLogger

    for lg in loggers:
        if isinstance(lg, WandbLogger) and lg._experiment is not None:
            lg.experiment.finish()
