"""Run a plan's job graph (``latentbridge/workflows/jobs.py``) with a launcher (issue: cluster scale).

- ``launcher=local`` (default): every job in this process, in order; the first error stops the plan.
- ``launcher=slurm``: one SLURM job per graph node through submitit, with the plan's resources per job kind
  (``plan.resources``), ``afterok`` dependencies (phase 2 on its phase-1 run, evaluations on their run) and
  ``afterany`` for the report, so a failed job stops only what depends on it. The driver submits and returns
  (``launcher.wait=true``: it waits and prints the summary).
- ``launcher=submitit_local``: the same job functions as processes on this machine (submitit's local executor).
  That executor has no dependencies, so the driver releases a job when the jobs it needs have succeeded.

Job ids, states and log files are recorded in ``<out_dir>/jobs/state.json``. A rerun submits only what is not
finished on disk and not still queued or running according to the recorded job (SLURM's ``sacct`` through
submitit, or the local process); an interrupted training resumes from its ``last.ckpt``. ``dry_run=true``
(``--dry-run``) prints the graph and what a run would submit.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from latentbridge.core.errors import ConfigError
from latentbridge.workflows.jobs import ACTIVE, Job, JobRecords, PlanJob, finished, job_graph

log = logging.getLogger("latentbridge")

#: SLURM states of a job that is still to run or running (a rerun does not duplicate it); UNKNOWN (accounting
#: lags behind) counts as active, as submitit counts it
SLURM_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
                "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "PREEMPTED", "READY", "UNKNOWN"}  # fmt: skip
RESOURCE_KEYS = ("nodes", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min")


def resources(cfg: DictConfig, job: Job) -> dict[str, Any]:
    """``plan.resources.<kind>``, with ``plan.runs.<run>.resources`` over it for a training; one line naming the
    key when something is missing."""
    table = cfg.plan.get("resources")
    if not table or job.kind not in table:
        raise ConfigError(
            f"plan.resources.{job.kind}: missing (nodes, gpus_per_node, cpus_per_task, mem_gb, timeout_min per job "
            "kind; conf/plan/mini.yaml has an example)"
        )
    got = dict(table[job.kind])
    if job.kind == "train" and cfg.plan.runs[job.run].get("resources"):
        got |= dict(cfg.plan.runs[job.run].resources)
    for key in RESOURCE_KEYS:
        if got.get(key) is None:
            raise ConfigError(f"plan.resources.{job.kind}.{key}: missing")
    return got


def trainer_overrides(cfg: DictConfig, run: str) -> list[str]:
    """On SLURM a training uses the GPUs its job asked for: one task per GPU, Lightning reads the ranks from SLURM."""
    res = resources(cfg, Job("train/" + run, "train", run))
    nodes, gpus = int(res["nodes"]), int(res["gpus_per_node"])
    if gpus == 0:
        return ["trainer=cpu"] if nodes == 1 else []
    if nodes * gpus == 1:
        return ["trainer=gpu"]
    return ["trainer=ddp", f"trainer.devices={gpus}", f"trainer.num_nodes={nodes}"]


def check_launcher(cfg: DictConfig) -> None:
    launcher = cfg.launcher
    if launcher.name not in ("local", "slurm", "submitit_local"):
        raise ConfigError(f"launcher: '{launcher.name}' is not one of local, slurm, submitit_local")
    if launcher.name == "slurm" and OmegaConf.is_missing(launcher, "partition"):
        raise ConfigError(
            "launcher.partition: missing; set it in conf/local/default.yaml (see conf/local/example.yaml) or "
            "pass launcher.partition=<name>"
        )
    if launcher.name != "local":
        for job in job_graph(cfg):
            resources(cfg, job)
    if launcher.get("cluster") == "slurm" and not cfg.get("dry_run"):
        import shutil

        missing = [tool for tool in ("sbatch", "srun", "sacct") if shutil.which(tool) is None]
        if missing:
            raise ConfigError(
                f"launcher: slurm, but {', '.join(missing)} not on PATH (not a SLURM login node?); --dry-run shows "
                "the jobs anywhere, launcher=local runs them here"
            )


def executor_parameters(cfg: DictConfig, job: Job, after: list[str]) -> dict[str, Any]:
    """submitit's ``update_parameters`` for one job: resources, SLURM dependencies, name."""
    res = resources(cfg, job)
    gpus = int(res["gpus_per_node"])
    launcher = cfg.launcher
    params: dict[str, Any] = {
        "name": f"lb-{cfg.plan.name}-{job.name}".replace("/", "-"),
        "timeout_min": int(res["timeout_min"]),
        "nodes": int(res["nodes"]),
        "cpus_per_task": int(res["cpus_per_task"]),
        "mem_gb": float(res["mem_gb"]),
    }
    if launcher.cluster == "slurm":
        params |= {
            "tasks_per_node": max(1, gpus) if job.kind == "train" else 1,  # one task per GPU (Lightning's SLURM)
            "slurm_partition": launcher.partition,
            "slurm_signal_delay_s": int(launcher.signal_delay_s),  # SIGUSR2: last.ckpt + requeue (resume.py)
            # srun in SLURM 22.05-23.02 does not inherit --cpus-per-task from the allocation
            "slurm_setup": ["export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK}", *(launcher.setup or [])],
            "slurm_additional_parameters": {"kill-on-invalid-dep": "yes"},
        }
        if gpus:  # --gpus-per-node=0 is refused by some sites on CPU-only partitions
            params["gpus_per_node"] = gpus
        for key in ("account", "qos", "constraint"):
            if launcher.get(key):
                params[f"slurm_{key}"] = launcher[key]
        if after:
            params["slurm_dependency"] = ("afterany:" if job.kind == "report" else "afterok:") + ":".join(after)
    else:  # one process on this machine; Lightning starts its own ranks
        import torch

        params |= {"gpus_per_node": min(gpus, torch.cuda.device_count()), "tasks_per_node": 1}
    return params


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM's state of each job id, asked freshly in one ``sacct`` call. submitit's watcher caches a finished job's
    state for the life of the process, but SLURM may requeue a FAILED job under the same id, and in a long-lived
    process (a test session, a notebook) ids seen earlier would answer with their old state."""
    import submitit

    watcher = submitit.SlurmJob.watcher
    watcher.clear()
    for job_id in job_ids:
        watcher.register_job(str(job_id))
    if job_ids:
        watcher.update()
    return {str(j): watcher.get_state(str(j), mode="cache") for j in job_ids}


def _active(record: dict[str, Any], cluster: str, states: dict[str, str] | None = None) -> bool:
    """Whether a recorded job is still queued or running: SLURM's view (``states``, from :func:`slurm_states`) for any
    record that did not complete (a job that recorded FAILED may since have been requeued under the same id), or the
    local pid."""
    if not record.get("job_id"):
        return False
    if cluster == "slurm":
        if record.get("state") == "COMPLETED":
            return False
        job_id = str(record["job_id"])
        state = (states or {}).get(job_id) or slurm_states([job_id])[job_id]
        return state.split(" ")[0] in SLURM_ACTIVE
    if record.get("state") not in ACTIVE:
        return False
    pid = int(record.get("pid") or record["job_id"])
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _known_states(records: dict[str, Any], cluster: str) -> dict[str, str]:
    """SLURM states of every recorded job that did not complete, in one query (empty off SLURM)."""
    if cluster != "slurm":
        return {}
    ids = [str(r["job_id"]) for r in records.values() if r.get("job_id") and r.get("state") != "COMPLETED"]
    return slurm_states(ids)


def _status(cfg: DictConfig, job: Job, records: dict[str, Any], cluster: str, states: dict[str, str]) -> str:
    if job.kind != "report" and finished(cfg, job):
        return "finished"
    rec = records.get(job.name)
    if rec and cluster != "local" and _active(rec, cluster, states):
        return f"{rec['state'].lower()} (job {rec['job_id']})"
    return "to run"


def print_graph(cfg: DictConfig, graph: list[Job]) -> list[dict[str, Any]]:
    """``--dry-run``: every job, what it needs, its resources and what a run would do with it."""
    records = JobRecords(cfg.out_dir).read()
    cluster = cfg.launcher.get("cluster") or "local"
    states = _known_states(records, cluster)
    rows, status = [], {}
    for job in graph:
        res = resources(cfg, job) if cfg.plan.get("resources") else {}
        status[job.name] = _status(cfg, job, records, cluster, states)
        after = [d for d in job.after if status[d] != "finished"]  # what a submission would wait for
        row = {"job": job.name, "status": status[job.name], "after": after, **res}
        if job.kind == "train" and cfg.launcher.name == "slurm":
            row["trainer"] = trainer_overrides(cfg, job.run)
        rows.append(row)
    print(f"plan {cfg.plan.name}: {len(graph)} jobs, launcher={cfg.launcher.name}, out_dir={cfg.out_dir}")
    for r in rows:
        res = ""
        if "nodes" in r:
            res = f"{r['nodes']}x{r['gpus_per_node']} GPU, {r['cpus_per_task']} CPU, {r['mem_gb']:g} GB, "
            res += f"{r['timeout_min']} min"
        after = r["after"]
        shown = ", ".join(after) if len(after) <= 3 else f"{len(after)} jobs ({after[0]}, ...)"
        dep = "afterany" if r["job"] == "report" else "afterok"
        extra = f"  [{' '.join(r['trainer'])}]" if r.get("trainer") else ""
        print(f"  {r['job']:<44} {r['status']:<12} {res:<40} {dep + ': ' + shown if after else ''}{extra}")
    return rows


def launch(cfg: DictConfig) -> dict[str, Any]:
    """Run (or, with ``dry_run``, print) the plan's job graph with ``cfg.launcher``."""
    check_launcher(cfg)
    graph = job_graph(cfg)
    if cfg.get("dry_run"):
        return {"jobs": print_graph(cfg, graph)}
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    JobRecords(cfg.out_dir).mark_launch()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if cfg.launcher.name == "local":
        result: Any = None
        for job in graph:
            if job.kind != "report" and finished(cfg, job):
                log.info("%s: finished, kept", job.name)
                continue
            result = PlanJob(resolved, job)()
        return result
    return submit(cfg, graph, resolved)


def submit(cfg: DictConfig, graph: list[Job], resolved: dict[str, Any]) -> dict[str, Any]:
    """Submit the graph with submitit; returns each job's final state (or, on SLURM without ``wait``, its id)."""
    import submitit

    launcher = cfg.launcher
    cluster = str(launcher.cluster)
    records = JobRecords(cfg.out_dir)
    known = records.read()
    states = _known_states(known, cluster)
    folder = Path(cfg.out_dir) / "jobs" / "logs" / "%j"
    status: dict[str, str] = {}  # job -> done | active | failed | cancelled
    ids: dict[str, str] = {}
    handles: dict[str, Any] = {}
    for job in graph:
        if job.kind != "report" and finished(cfg, job):
            status[job.name] = "done"
        elif job.name in known and _active(known[job.name], cluster, states):
            status[job.name], ids[job.name] = "active", str(known[job.name]["job_id"])
            log.info("%s: still %s as job %s, not submitted again", job.name, known[job.name]["state"], ids[job.name])

    def _submit(job: Job, after: list[str]) -> None:
        # a fresh executor per job: update_parameters merges into the executor's settings, so a job without a
        # dependency would inherit the previous job's (--kill-on-invalid-dep would then cancel it with that one)
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster, **_python(launcher, cluster))
        executor.update_parameters(**executor_parameters(cfg, job, after))
        handle = executor.submit(PlanJob(resolved, job))
        handles[job.name], ids[job.name], status[job.name] = handle, str(handle.job_id), "active"
        records.update(
            job.name,
            job_id=str(handle.job_id),
            pid=None,
            cluster=cluster,
            folder=str(folder),
            state="SUBMITTED",
            submitted=time.time(),
            started=None,
            ended=None,
            error=None,
            stdout=str(handle.paths.stdout),
            stderr=str(handle.paths.stderr),
        )
        log.info("%s: submitted as job %s", job.name, handle.job_id)

    if cluster == "slurm":  # SLURM holds the dependencies
        for job in graph:
            if job.name not in status:
                _submit(job, [ids[d] for d in job.after if status.get(d) == "active"])
        if not launcher.get("wait"):
            print_graph(cfg, graph)
            return {"jobs": ids}
    else:
        _release_locally(cfg, graph, status, handles, _submit, records, launcher)
    _wait(cfg, graph, status, handles, records, cluster, float(launcher.poll_s))
    return _summary(cfg, graph, records)


def _python(launcher: DictConfig, cluster: str) -> dict[str, Any]:
    """``launcher.python``: the interpreter SLURM jobs run (default: the driver's ``sys.executable``, which is not the
    venv a ``setup`` line activates on the compute nodes)."""
    return {"slurm_python": str(launcher.python)} if cluster == "slurm" and launcher.get("python") else {}


def _release_locally(cfg, graph, status, handles, submit_fn, records, launcher) -> None:  # noqa: ANN001
    """The local executor's dependencies: submit a job once every job it needs has succeeded (the report: once
    they have all ended); a job whose dependency failed is cancelled, with the reason recorded."""
    max_parallel, poll_s = int(launcher.max_parallel), float(launcher.poll_s)
    while True:
        _settle(cfg, graph, status, handles, records, "local")
        running = sum(1 for j in graph if status.get(j.name) == "active")
        waiting = [j for j in graph if j.name not in status]
        if not waiting and not running:
            return
        for job in waiting:
            needs = [status.get(d) for d in job.after]
            if job.kind == "report":
                ready, broken = all(s in ("done", "failed", "cancelled") for s in needs), None
            else:
                broken = next((d for d in job.after if status.get(d) in ("failed", "cancelled")), None)
                ready = all(s == "done" for s in needs)
            if broken is not None:
                status[job.name] = "cancelled"
                records.update(job.name, state="CANCELLED", error=f"dependency {broken} did not succeed")
                log.warning("%s: cancelled (dependency %s did not succeed)", job.name, broken)
            elif ready and running < max_parallel:
                submit_fn(job, [])
                running += 1
        time.sleep(poll_s)


def _settle(cfg, graph, status, handles, records, cluster) -> None:  # noqa: ANN001
    """Mark ended jobs done or failed (a job killed before it could record its end is failed here). Jobs this
    driver submitted are asked through their submitit handle; jobs of an earlier driver through the record."""
    known = records.read()
    for job in graph:
        if status.get(job.name) != "active":
            continue
        rec = known.get(job.name, {})
        handle = handles.get(job.name)
        if (not handle.done()) if handle is not None else _active({**rec, "state": "RUNNING"}, cluster):
            continue
        known = records.read()  # the job may have recorded its end meanwhile
        rec = known.get(job.name, {})
        state = rec.get("state")
        if state in ACTIVE:  # the process is gone without a word: killed
            records.update(job.name, state="FAILED", ended=time.time(), error="the job's process ended (killed?)")
            state = "FAILED"
        ok = state == "COMPLETED" and (job.kind == "report" or finished(cfg, job) or job.run is None)
        status[job.name] = "done" if ok else "failed"


def _wait(cfg, graph, status, handles, records, cluster, poll_s) -> None:  # noqa: ANN001
    while any(s == "active" for s in status.values()):
        _settle(cfg, graph, status, handles, records, cluster)
        time.sleep(poll_s)


def _summary(cfg: DictConfig, graph: list[Job], records: JobRecords) -> dict[str, Any]:
    known = records.read()
    states = {j.name: (known.get(j.name) or {}).get("state") or "finished before" for j in graph}
    bad = {n: s for n, s in states.items() if s in ("FAILED", "CANCELLED")}
    print(f"plan {cfg.plan.name}: {len(graph) - len(bad)} of {len(graph)} jobs succeeded")
    for name in bad:
        rec = known[name]
        logs = f" logs: {rec['stdout']}" if rec.get("stdout") else ""
        print(f"  {name}: {rec['state']} - {rec.get('error') or ''}{logs}")
    return {"jobs": states, "failed": sorted(bad)}
