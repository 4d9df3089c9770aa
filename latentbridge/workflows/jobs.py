"""A reproduction plan as a graph of jobs (issue: cluster scale), and what one job does.

    prepare                          mini teacher / codecs of every run, once, in one process (no rank trains them)
    train/<run>/<rate>               one training; after prepare and, for phase 2, its phase-1 run at that rate
    evaluate/<run>/<rate>            its evaluation through real bitstreams (every plan rate for a vbr run)
    evaluate/anchors                 the traditional anchors, through the reference run's encoder
    report                           figures, table, findings; after every evaluation, whether it succeeded or not

The same graph runs in this process (``launcher=local``), as processes (``submitit_local``) or as SLURM jobs
(``slurm``): ``latentbridge/workflows/launch.py``. Every job is idempotent: it finds what is finished in the plan's
fixed directories (results.json, evaluation json) and skips it, resumes an interrupted training from its
``last.ckpt``, and records its state in ``<out_dir>/jobs/state.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from latentbridge.core.atomic_io import atomic_write_json
from latentbridge.core.errors import ConfigError

log = logging.getLogger("latentbridge")

KINDS = ("prepare", "train", "evaluate", "report")
#: job states (SLURM's words) that are still to come: a REQUEUED job runs again under the same id
ACTIVE = ("SUBMITTED", "PENDING", "RUNNING", "REQUEUED")


@dataclass(frozen=True)
class Job:
    """One node of the graph: ``after`` must succeed first (``report``: must have ended, whatever their state)."""

    name: str
    kind: str
    run: str | None = None
    lmbda: float | None = None
    after: tuple[str, ...] = field(default=())


def job_name(kind: str, run: str, lmbda: float | None) -> str:
    return f"{kind}/{run}/{'vbr' if lmbda is None else f'lambda{lmbda}'}"


def job_graph(cfg: DictConfig) -> list[Job]:
    """The plan's jobs in an order where every job comes after the jobs it needs."""
    from latentbridge.workflows.reproduce import rates_of, trainings

    todo = trainings(cfg)
    jobs = [Job("prepare", "prepare")]
    for run, lmbda in todo:
        parent = cfg.plan.runs[run].get("init_from")
        if parent and parent not in cfg.plan.runs:
            raise ConfigError(f"plan.runs.{run}.init_from: no run named '{parent}'")
        needs = ("prepare", job_name("train", parent, lmbda)) if parent and (parent, lmbda) in todo else ("prepare",)
        jobs.append(Job(job_name("train", run, lmbda), "train", run, lmbda, needs))
    for run, lmbda in todo:
        jobs.append(Job(job_name("evaluate", run, lmbda), "evaluate", run, lmbda, (job_name("train", run, lmbda),)))
    reference = cfg.plan.reference_run
    if cfg.plan.get("anchors") and any(r == reference for r, _ in todo):
        first = job_name("train", reference, rates_of(cfg, cfg.plan.runs[reference])[0])
        jobs.append(Job("evaluate/anchors", "evaluate", after=(first,)))
    jobs.append(Job("report", "report", after=tuple(j.name for j in jobs if j.kind == "evaluate")))
    return jobs


def finished(cfg: DictConfig, job: Job) -> bool:
    """Whether the job's work is already on disk (a rerun does not submit it)."""
    from latentbridge.workflows import reproduce as rp

    if job.kind == "prepare":
        return all(Path(p).is_file() for p in needed_assets(cfg))
    if job.kind == "train":
        return (rp.run_dir(cfg, job.run, job.lmbda) / "results.json").is_file()
    if job.kind == "evaluate" and job.run is None:
        return False  # anchors: cheap to check inside the job (each quality is cached)
    if job.kind == "evaluate":
        return rp.evaluated(cfg, job.run, job.lmbda)
    return False  # the report is rewritten whenever the plan runs


def training_configs(cfg: DictConfig) -> Iterator[DictConfig]:
    """The composed train config of every (run, rate point) of the plan (inside ``hydra_context``)."""
    from hydra import compose

    from latentbridge.workflows.reproduce import run_overrides, trainings

    for run, lmbda in trainings(cfg):
        yield compose(config_name="train", overrides=run_overrides(cfg, run, lmbda))


def needed_assets(cfg: DictConfig) -> list[str]:
    """Checkpoints with a ``prepare`` recipe (the mini teacher and codecs) that the plan's trainings use."""
    from latentbridge.runs import scenario_uses

    found: list[str] = []
    with hydra_context():
        for train_cfg in training_configs(cfg):
            for key in scenario_uses(train_cfg):
                node = train_cfg[key]
                if node.get("checkpoint") and node.get("prepare") and str(node.checkpoint) not in found:
                    found.append(str(node.checkpoint))
    return found


# -- records ------------------------------------------------------------------------------------------------
class JobRecords:
    """``<out_dir>/jobs/state.json``: per job, its id, state, times and log files; updated under a file lock by
    the launcher and by the jobs themselves (atomic writes)."""

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / "jobs" / "state.json"

    def _load(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise ConfigError(f"out_dir: {self.path} is unreadable ({type(e).__name__}); delete it") from None

    def read(self) -> dict[str, dict[str, Any]]:
        return self._load().get("jobs", {})

    @property
    def launched(self) -> float | None:
        """When the plan was last launched (the report's wall time counts the jobs started since)."""
        return self._load().get("launched")

    def _write(self, change: Any) -> None:
        from latentbridge.core.lease_lock import LeaseLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with LeaseLock(f"{self.path}.lock"):
            state = self._load()
            change(state)
            atomic_write_json(self.path, state)

    def update(self, name: str, **fields: Any) -> None:
        def change(state: dict[str, Any]) -> None:
            jobs = state.setdefault("jobs", {})
            jobs[name] = {**jobs.get(name, {}), **fields}

        self._write(change)

    def mark_launch(self) -> None:
        self._write(lambda state: state.__setitem__("launched", time.time()))


# -- running one job ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def hydra_context(conf_dir: str | None = None) -> Iterator[None]:
    """Hydra's config search path for ``compose`` (already there inside a Hydra app or a test)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from latentbridge.core.config import conf_path, register_resolvers

    register_resolvers()
    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_dir(str(conf_dir or conf_path()), version_base="1.3"):
        yield


class PlanJob:
    """What a launcher runs for one job: picklable (submitit), from the plan's resolved config.

    Requeues: a training preempted inside ``fit`` checkpoints, requeues its SLURM job and raises ``Preempted``
    (``lightning_modules/resume.py``); anywhere else (a cache build, the final validation, an evaluation) SLURM's
    warning signal reaches submitit's handler, which calls ``checkpoint`` and requeues the same job (every job is
    idempotent: it continues from what is on disk). Either way the record says REQUEUED, not FAILED, so a rerun of
    the plan does not submit a second copy while SLURM runs the first again under the same id."""

    def __init__(self, cfg: dict[str, Any], job: Job) -> None:
        self.cfg, self.job = cfg, job
        self._requeued = False

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's hook on the time-limit / preemption signal outside ``fit``: resubmit this same job."""
        import submitit

        self._requeued = True
        self._record(state="REQUEUED", ended=time.time(), error="requeued by SLURM's warning signal")
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    def _record(self, **fields: Any) -> None:
        # a multi-node training runs this in every SLURM task: the first task speaks for the job
        if int(os.environ.get("SLURM_PROCID", "0")) == 0:
            JobRecords(self.cfg["out_dir"]).update(self.job.name, **fields)

    def __call__(self) -> Any:
        from lightning_modules.resume import Preempted

        cfg = OmegaConf.create(self.cfg)
        job_threads(cfg)
        if not logging.getLogger().handlers:  # a job process of its own: its log file shows the progress
            logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
        # ended=None: a rerun's record must not keep the previous run's end (a report-only rerun printed a negative
        # wall time from it)
        self._record(state="RUNNING", started=time.time(), ended=None, host=socket.gethostname(), pid=os.getpid())
        try:
            with hydra_context():
                result = run_job(cfg, self.job)
        except Preempted as e:
            state = "REQUEUED" if e.requeued else "FAILED"
            self._record(state=state, ended=time.time(), error=f"Preempted: {str(e).splitlines()[0]}")
            raise
        except BaseException as e:
            if not (self._requeued and isinstance(e, SystemExit)):  # submitit exits after it requeued the job
                first = (str(e).splitlines() or [type(e).__name__])[0]
                self._record(state="FAILED", ended=time.time(), error=f"{type(e).__name__}: {first}")
            if isinstance(e, Exception):
                log.error("%s failed:\n%s", self.job.name, traceback.format_exc())
            raise
        self._record(state="COMPLETED", ended=time.time(), error=None)
        return result


def job_threads(cfg: DictConfig) -> None:
    """``launcher.threads_per_job``: the intra-op threads of a job process (null: torch's default, every core). On a
    CPU machine ``max_parallel`` x ``threads_per_job`` = its cores: two one-thread jobs side by side trained 1.47x as
    many steps per second as one two-thread job on 2 cores (README "Mini reproduction")."""
    threads = (cfg.get("launcher") or {}).get("threads_per_job")
    if threads is None:
        return
    if int(threads) < 1:
        raise ConfigError(f"launcher.threads_per_job: {threads} is not a number of threads (>= 1, or null)")
    import torch

    torch.set_num_threads(int(threads))


def run_job(cfg: DictConfig, job: Job) -> Any:
    """Do one job's work (inside ``hydra_context``); the report job returns the plan's results."""
    from latentbridge.workflows import reproduce as rp

    if job.kind == "prepare":
        prepare_assets(cfg)
    elif job.kind == "train":
        rp.train_one(cfg, job.run, job.lmbda)
    elif job.kind == "evaluate" and job.run is None:
        rp.evaluate_anchors(cfg)
    elif job.kind == "evaluate":
        rp.evaluate_one(cfg, job.run, job.lmbda)
        rp.update_dashboard(cfg)
    elif job.kind == "report":
        return rp.report(cfg)
    else:  # pragma: no cover - the graph makes only these
        raise ConfigError(f"job kind '{job.kind}' is not one of {KINDS}")
    return None


def prepare_assets(cfg: DictConfig) -> None:
    """Train and cache every missing mini teacher / codec the plan's trainings use, in this one process."""
    from latentbridge.workflows.train import prepare_dependencies

    for train_cfg in training_configs(cfg):
        prepare_dependencies(train_cfg)
