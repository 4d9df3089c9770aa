"""reproduce.py as a job graph (issue: cluster scale): the graph of plan=paper, SLURM submission with afterok /
afterany dependencies (against stand-in sbatch / sacct commands), no duplicate of a queued job, one-line errors for
missing resources or partition, the 2-node training a SLURM job composes, and (slow) the whole tiny plan as local
processes through submitit with a job killed mid-run, whose dependents alone stop, and a rerun that completes it."""

from __future__ import annotations

import json
import os

import pytest
import torch
from helpers.config import CONF, ROOT

from latentbridge.core.errors import ConfigError
from latentbridge.workflows import launch as ln
from latentbridge.workflows.jobs import JobRecords, job_graph

PAPER_VARS = [
    "plan.vars.imagenet=/data/in",
    "plan.vars.elic=/ckpt/elic",
    "plan.vars.mbt=/ckpt/mbt",
    "plan.vars.tcm=/ckpt/tcm",
]


def _compose(tmp_path, *overrides: str, name: str = "reproduce"):
    from hydra import compose, initialize_config_dir

    from latentbridge.core.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(
            name,
            overrides=[
                f"out_dir={tmp_path / 'out'}",
                f"paths.cache_dir={tmp_path / 'cache'}",
                "paths.output_dir=.",
                "dashboard.enabled=false",
                *overrides,
            ],
        )


def _launch(cfg):
    from hydra import initialize_config_dir

    with initialize_config_dir(str(CONF), version_base="1.3"):
        return ln.launch(cfg)


def test_the_paper_plan_is_a_graph_phase_two_after_phase_one_evaluations_after_runs_report_after_all(tmp_path, capsys):
    cfg = _compose(tmp_path, "plan=paper", *PAPER_VARS, "launcher=slurm", "launcher.partition=gpu", "dry_run=true")
    graph = {j.name: j for j in job_graph(cfg)}
    trainings = [n for n in graph if n.startswith("train/")]
    assert len(trainings) == 60 and len([n for n in graph if n.startswith("evaluate/")]) == 60  # 15 runs x 4 rates
    assert "train/d1_tcm/lambda0.0067" in graph  # Fig. 6(c)'s Transformer codec at its own rate points
    assert graph["train/d2/lambda0.008"].after == ("prepare", "train/d1/lambda0.008")
    assert graph["train/d3_convnext/lambda0.004"].after == ("prepare", "train/d1_convnext/lambda0.004")  # Fig. 8
    assert graph["evaluate/d3/lambda0.032"].after == ("train/d3/lambda0.032",)
    assert set(graph["report"].after) == {n for n in graph if n.startswith("evaluate/")}
    _launch(cfg)
    out = capsys.readouterr().out
    assert "plan paper: 122 jobs, launcher=slurm" in out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("train/d2/lambda0.008"))
    assert "1x8 GPU" in line and "afterok: train/d1/lambda0.008  " in line  # prepare: nothing to do here
    assert "[trainer=ddp trainer.devices=8 trainer.num_nodes=1]" in line
    assert "afterany: 60 jobs" in next(ln for ln in out.splitlines() if ln.strip().startswith("report"))
    assert not (tmp_path / "out" / "jobs").exists()  # a dry run submits and records nothing


def test_missing_partition_or_resources_is_a_one_line_error_naming_the_key(tmp_path):
    cfg = _compose(tmp_path, "plan=tiny", "launcher=slurm")
    with pytest.raises(ConfigError, match=r"^launcher.partition: missing; set it in conf/local/default.yaml"):
        _launch(cfg)
    cfg = _compose(tmp_path, "plan=tiny", "launcher=slurm", "launcher.partition=gpu", "~plan.resources.train")
    with pytest.raises(ConfigError, match=r"^plan.resources.train: missing"):
        _launch(cfg)
    cfg = _compose(tmp_path, "plan=tiny", "launcher=submitit_local", "plan.resources.evaluate.timeout_min=null")
    with pytest.raises(ConfigError, match=r"^plan.resources.evaluate.timeout_min: missing"):
        _launch(cfg)


def test_a_two_node_training_composes_ddp_over_both_nodes_with_one_slurm_task_per_gpu(tmp_path):
    from hydra import compose, initialize_config_dir

    from latentbridge.workflows.jobs import Job
    from latentbridge.workflows.reproduce import run_overrides

    res = ["plan.resources.train.nodes=2", "plan.resources.train.gpus_per_node=8"]
    cfg = _compose(tmp_path, "plan=paper", *PAPER_VARS, "launcher=slurm", "launcher.partition=gpu", *res)
    params = ln.executor_parameters(cfg, Job("train/d1/lambda0.004", "train", "d1", 0.004), ["41"])
    assert (params["nodes"], params["tasks_per_node"], params["gpus_per_node"]) == (2, 8, 8)
    assert params["slurm_dependency"] == "afterok:41" and params["slurm_partition"] == "gpu"
    with initialize_config_dir(str(CONF), version_base="1.3"):
        train = compose("train", overrides=run_overrides(cfg, "d1", 0.004))
    assert (train.trainer.num_nodes, train.trainer.devices, train.trainer.accelerator) == (2, 8, "gpu")
    assert train.trainer.strategy._target_.endswith("DDPStrategy") and train.run_group == "reproduce-paper"


def test_slurm_gets_the_graph_as_dependent_jobs_and_a_rerun_never_duplicates_a_queued_one(tmp_path, fake_slurm):
    cfg = _compose(tmp_path, "plan=tiny", "only=[d1,d2]", "launcher=slurm", "launcher.partition=gpu")
    first = _launch(cfg)["jobs"]
    assert len(first) == 9  # 2 x d1, 2 x d2, 4 evaluations, report (random-init tiny plan: nothing to prepare)
    script = {int(p.stem.split("-")[1]): p.read_text() for p in fake_slurm.glob("job-*.sh")}
    d2 = script[int(first["train/d2/lambda0.0018"])]
    deps = f"afterok:{first['train/d1/lambda0.0018']}"
    assert f"#SBATCH --dependency={deps}" in d2 and "#SBATCH --partition=gpu" in d2
    assert "#SBATCH --kill-on-invalid-dep=yes" in d2 and "#SBATCH --signal=USR2@120" in d2
    report = script[int(first["report"])]
    evals = [first[n] for n in first if n.startswith("evaluate/")]
    assert f"#SBATCH --dependency=afterany:{':'.join(evals)}" in report
    recorded = JobRecords(tmp_path / "out").read()
    assert recorded["train/d1/lambda0.0018"]["job_id"] == first["train/d1/lambda0.0018"]
    assert recorded["train/d1/lambda0.0018"]["stdout"].endswith("_log.out")

    # rerun: d1 at 0.0018 failed in SLURM (never wrote results.json), everything else is still queued or running
    states = {first[n]: "RUNNING" for n in first}
    states[first["train/d1/lambda0.0018"]] = "FAILED"
    (fake_slurm / "states.json").write_text(json.dumps(states))
    again = _launch(cfg)["jobs"]
    new = {n for n in again if again[n] != first[n]}
    assert new == {"train/d1/lambda0.0018"}  # only the failed job is submitted again; nothing is duplicated
    assert len(list(fake_slurm.glob("job-*.sh"))) == 10


@pytest.mark.slow
def test_the_tiny_plan_as_local_jobs_survives_a_killed_job_and_a_rerun_completes_it(tmp_path, monkeypatch):
    """submitit's local executor: the 32 jobs SLURM would run, as processes. One d2 training is killed (kill -9) in
    its second epoch: its evaluation is cancelled, everything else completes and the report lists the failed run
    with its log; the rerun submits that training (resumed from its last.ckpt), its evaluation and the report."""
    monkeypatch.setenv("PYTHONPATH", f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "killed-once"
    kill = [
        "+callbacks.kill._target_=helpers.interrupt.SignalAt",
        "+callbacks.kill.step=6",
        f"+callbacks.kill.once={marker}",
    ]
    d2 = ["trainer.max_epochs=2", "epoch_samples=null", "data.batch_size=16", *kill]  # 4 steps per epoch
    d2 = "plan.runs.d2.overrides=[" + ",".join(f"'{o}'" for o in d2) + "]"
    cfg = _compose(tmp_path, "plan=tiny", "launcher=submitit_local", d2)  # the whole graph: 17 runs
    first = _launch(cfg)
    states = first["jobs"]
    killed = [n for n in states if n.startswith("train/d2/") and states[n] == "FAILED"]
    assert len(killed) == 1, states  # the first d2 to reach step 6 is killed; the other finishes
    evaluation = killed[0].replace("train/", "evaluate/")
    assert states[evaluation] == "CANCELLED"
    assert states.pop("prepare") == "finished before"  # random-init tiny plan: nothing to prepare
    assert all(s == "COMPLETED" for n, s in states.items() if n not in (killed[0], evaluation)), states
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    (failed,) = results["failed"]
    assert failed["job"] == killed[0] and failed["state"] == "FAILED" and os.path.isfile(failed["stdout"])
    assert len(states) == 35 and set(results["plots"]) >= {"fig3_rate_accuracy", "fig4_rate_psnr"}

    records = JobRecords(tmp_path / "out").read()
    second = _launch(cfg)["jobs"]
    again = JobRecords(tmp_path / "out").read()
    resubmitted = {n for n in again if again[n].get("job_id") != records[n].get("job_id")}
    assert resubmitted == {killed[0], evaluation, "report"}
    assert all(s in ("COMPLETED", "finished before") for s in second.values()), second
    log = open(again[killed[0]]["stderr"]).read() + open(again[killed[0]]["stdout"]).read()
    assert "resuming" in log  # from the last.ckpt of its first epoch
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["failed"] == [] and len(results["rows"]) > 0


def test_no_rank_of_a_multi_process_launch_trains_a_missing_teacher_or_codec(tmp_path, monkeypatch):
    """Preparation belongs to the plan's prepare job (one process): a SLURM task of several that finds the mini
    teacher / codec missing stops with one line instead of training it on every rank."""
    from helpers.config import hydra_cfg

    from latentbridge.workflows.train import prepare_dependencies

    monkeypatch.setenv("SLURM_NTASKS", "2")
    overrides = ["experiment=mini_d1", "use_shipped_assets=false"]
    with hydra_cfg(overrides, tmp_path) as cfg, pytest.raises(ConfigError) as err:
        prepare_dependencies(cfg)
    assert "is missing and this is one of 2 processes launched together" in str(err.value)
    assert str(err.value).split(":")[0] in ("codec.checkpoint", "vision.checkpoint")


def test_a_job_process_takes_the_launchers_threads_per_job():
    from omegaconf import OmegaConf

    from latentbridge.core.errors import ConfigError
    from latentbridge.workflows.jobs import job_threads

    before = torch.get_num_threads()
    try:
        job_threads(OmegaConf.create({"launcher": {"name": "submitit_local", "threads_per_job": 1}}))
        assert torch.get_num_threads() == 1
        job_threads(OmegaConf.create({"launcher": {"name": "local"}}))  # unset: left as it is
        assert torch.get_num_threads() == 1
        with pytest.raises(ConfigError, match="launcher.threads_per_job: 0 is not a number of threads"):
            job_threads(OmegaConf.create({"launcher": {"threads_per_job": 0}}))
    finally:
        torch.set_num_threads(before)
