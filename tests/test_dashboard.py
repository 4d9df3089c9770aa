"""The plan's wandb dashboard (issue: cluster scale), offline: every training of a plan in one group, and the
figures as tables + line plots in one ``figures`` run that every evaluation resumes, gaining points each time."""

from __future__ import annotations

import json

from helpers.config import CONF

from latentbridge.analysis.dashboard import figures_run_id, log_figures


def _cfg(tmp_path, *overrides):
    from hydra import compose, initialize_config_dir

    from latentbridge.core.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(
            "reproduce",
            overrides=["plan=tiny", f"out_dir={tmp_path / 'out'}", "paths.output_dir=.", *overrides],
        )


def test_every_training_of_a_plan_logs_to_the_plan_group_under_its_run_name(tmp_path):
    from hydra import compose, initialize_config_dir

    from latentbridge.workflows.reproduce import run_overrides

    cfg = _cfg(tmp_path, "plan.extra=['logger=wandb']")
    with initialize_config_dir(str(CONF), version_base="1.3"):
        train = compose("train", overrides=run_overrides(cfg, "d2", 0.0035))
    assert train.logger.wandb.group == "reproduce-tiny" and train.logger.wandb.name == "d2/lambda0.0035"


def _tables(out, figure):
    """Rows of each logged table of ``figure``, in the order the offline runs were written."""
    found = []
    for run in sorted((out / "wandb").glob("offline-run-*")):
        for f in sorted((run / "files" / "media" / "table" / figure).glob("*.table.json")):
            found.append(json.loads(f.read_text())["data"])
    return found


def test_the_figures_gain_points_as_evaluations_finish(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = _cfg(tmp_path)
    rows = [
        {"method": "d1", "lmbda": 0.0018, "bpp": 0.30, "top1": 0.61, "psnr": 20.1},
        {"method": "reconstruction", "lmbda": 0.0018, "bpp": 0.30, "top1": 0.52, "psnr": 20.1},
    ]
    folder = log_figures(cfg, rows)  # the first evaluation finished
    rows.append({"method": "d1", "lmbda": 0.0035, "bpp": 0.45, "top1": 0.66, "psnr": 22.0})  # the second
    log_figures(cfg, rows)
    out = tmp_path / "out"
    assert (out / "wandb").is_dir() and folder.startswith(str(out / "wandb"))
    fig3 = _tables(out, "fig3_rate_accuracy")
    assert [len(t) for t in fig3] == [2, 3]  # Fig. 3 drawn with 2 points, then 3
    assert fig3[-1][0] == ["Reconstruction", 0.0018, 0.30, 0.52]
    assert [len(t) for t in _tables(out, "fig4_rate_psnr")] == [1, 2]  # d1 only: Fig. 4 plots d1, d2, d3
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(figures_run_id(cfg) in r.name for r in runs)  # one wandb run, resumed
