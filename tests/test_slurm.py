"""The plan's SLURM path against SLURM as it behaves (issue: SLURM as it behaves): stand-in ``sbatch`` / ``sacct`` /
``scontrol`` where a requeued job keeps its id and goes back to PENDING and accounting can answer UNKNOWN.
Each job's dependency is exactly what ``--dry-run`` shows; a requeued job is recorded REQUEUED and never submitted a
second time; a job outside ``fit`` (cache build, final validation, evaluation) is requeued by submitit instead of
failing; CPU-only jobs ask for no GPUs; srun gets the job's CPUs; jobs run the configured interpreter."""

from __future__ import annotations

import json
import re
import signal

import pytest
from helpers.config import CONF

from latentbridge.workflows import launch as ln
from latentbridge.workflows.jobs import Job, JobRecords, PlanJob, job_graph


def _compose(tmp_path, *overrides: str):
    from hydra import compose, initialize_config_dir

    from latentbridge.core.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        base = [f"out_dir={tmp_path / 'out'}", f"paths.cache_dir={tmp_path / 'cache'}", "paths.output_dir=.",
                "dashboard.enabled=false"]  # fmt: skip
        return compose("reproduce", overrides=[*base, *overrides])


def _launch(cfg):
    from hydra import initialize_config_dir

    with initialize_config_dir(str(CONF), version_base="1.3"):
        return ln.launch(cfg)


def _scripts(spool):
    return {str(int(p.stem.split("-")[1])): p.read_text() for p in spool.glob("job-*.sh")}


def test_each_job_waits_for_exactly_what_the_dry_run_shows(tmp_path, fake_slurm, capsys):
    """submitit's update_parameters merges into its executor: post_processing's trainings (no dependency) used to
    inherit the dependency of the d2 training submitted before them."""
    only = ["plan=tiny", "only=[d1,d2,post_processing]", "launcher=slurm", "launcher.partition=gpu"]
    cfg = _compose(tmp_path, *only, "dry_run=true")
    _launch(cfg)
    shown = {}
    for line in capsys.readouterr().out.splitlines()[1:]:
        name = line.split()[0]
        shown[name] = re.findall(r"(?:afterok|afterany): (.*)$", line.strip())
    ids = _launch(_compose(tmp_path, *only))["jobs"]
    scripts = _scripts(fake_slurm)
    graph = {j.name: j for j in job_graph(cfg)}
    for name, job_id in ids.items():
        found = re.findall(r"#SBATCH --dependency=(\S+)", scripts[job_id])
        expected = [ids[d] for d in graph[name].after if d in ids]
        if not expected:
            assert not found, f"{name} carries a dependency it does not have: {found}"
            continue
        kind, listed = found[0].split(":", 1)
        assert kind == ("afterany" if name == "report" else "afterok") and listed.split(":") == expected, name
    assert not shown["train/post_processing/lambda0.0018"]  # the dry run shows none either
    assert "--dependency" not in scripts[ids["train/post_processing/lambda0.0018"]]


def test_a_requeued_job_is_recorded_requeued_and_never_submitted_twice(tmp_path, fake_slurm):
    cfg = _compose(tmp_path, "plan=tiny", "only=[d1]", "launcher=slurm", "launcher.partition=gpu")
    first = _launch(cfg)["jobs"]
    records = JobRecords(tmp_path / "out")
    d1 = "train/d1/lambda0.0018"
    # the job itself: preempted inside fit, it checkpointed and SLURM requeued it (same id, PENDING again)
    from lightning_modules.resume import Preempted

    def preempted(*_):
        raise Preempted("training was preempted at epoch 0, step 3: last.ckpt written", requeued=True)

    resolved = dict(__import__("omegaconf").OmegaConf.to_container(cfg, resolve=True))
    job = next(j for j in job_graph(cfg) if j.name == d1)
    import latentbridge.workflows.jobs as jobs

    orig = jobs.run_job
    jobs.run_job = preempted
    try:
        with pytest.raises(Preempted):
            PlanJob(resolved, job)()
    finally:
        jobs.run_job = orig
    assert records.read()[d1]["state"] == "REQUEUED"
    states = {i: "RUNNING" for i in first.values()}
    states[first[d1]] = "PENDING"  # requeued: the same id
    # a job that recorded FAILED before SLURM requeued it, and one accounting does not know yet
    other = "train/d1/lambda0.0035"
    records.update(other, state="FAILED", error="killed")
    states[first[other]] = "REQUEUED"
    states[first["evaluate/d1/lambda0.0035"]] = "UNKNOWN"
    (fake_slurm / "states.json").write_text(json.dumps(states))
    again = _launch(cfg)["jobs"]
    assert again == first  # nothing submitted a second time
    assert len(_scripts(fake_slurm)) == len(first)


def test_the_warning_signal_outside_fit_requeues_the_job_instead_of_failing_it(tmp_path, monkeypatch):
    """SIGUSR2 while a job builds a cache, validates or evaluates reaches submitit's handler: the job is
    checkpointable (the same job again: it continues from what is on disk), requeued and recorded REQUEUED."""
    from submitit.core import job_environment as je
    from submitit.core.utils import DelayedSubmission

    cfg = _compose(tmp_path, "plan=tiny", "only=[d1]")
    resolved = dict(__import__("omegaconf").OmegaConf.to_container(cfg, resolve=True))
    job = PlanJob(resolved, Job("evaluate/d1/lambda0.0018", "evaluate", "d1", 0.0018))
    requeued = []

    class Env:
        global_rank = 0

        def _requeue(self, countdown):
            requeued.append(countdown)

    paths = type("Paths", (), {"submitted_pickle": tmp_path / "submitted.pkl"})()
    delayed = DelayedSubmission(job)
    delayed.set_timeout(timeout_min=60, max_num_timeout=3)
    handler = je.SignalHandler(Env(), paths, delayed)
    handler._start_time -= 3600  # the time limit's warning
    with pytest.raises(SystemExit):
        handler.checkpoint_and_try_requeue(signal.SIGUSR2)
    assert requeued and (tmp_path / "submitted.pkl").is_file()
    assert JobRecords(tmp_path / "out").read()["evaluate/d1/lambda0.0018"]["state"] == "REQUEUED"


def test_cpu_jobs_ask_for_no_gpus_srun_gets_the_cpus_and_jobs_run_the_configured_python(tmp_path, fake_slurm):
    cfg = _compose(tmp_path, "plan=tiny", "only=[d1]", "launcher=slurm", "launcher.partition=cpu",
                   "launcher.python=/shared/venv/bin/python")  # fmt: skip
    ids = _launch(cfg)["jobs"]
    scripts = _scripts(fake_slurm)
    train, report = scripts[ids["train/d1/lambda0.0018"]], scripts[ids["report"]]
    assert "--gpus-per-node" not in report and "#SBATCH --gpus-per-node=1" in train  # the report asks for 0 GPUs
    assert "export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK}" in train
    assert "/shared/venv/bin/python -u -m submitit.core._submit" in train


def test_launcher_slurm_without_slurm_is_one_line_and_dry_run_still_works(tmp_path, monkeypatch, capsys):
    """Off a SLURM login node (no sbatch / srun / sacct on PATH): one line naming what is missing, nothing recorded;
    --dry-run still prints the jobs."""
    from latentbridge.core.errors import ConfigError

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    cfg = _compose(tmp_path, "plan=tiny", "only=[d1]", "launcher=slurm", "launcher.partition=gpu")
    with pytest.raises(ConfigError) as err:
        _launch(cfg)
    message = str(err.value)
    assert message.startswith("launcher: slurm, but sbatch, srun, sacct not on PATH") and "\n" not in message
    assert not (tmp_path / "out" / "jobs").exists()
    cfg = _compose(tmp_path, "plan=tiny", "only=[d1]", "launcher=slurm", "launcher.partition=gpu", "dry_run=true")
    assert len(_launch(cfg)["jobs"]) == 6
