"""reproduce.py on the tiny plan: phase 1 -> phase 2 chaining, nothing finished is redone after an interruption,
evaluation through real bitstreams, figures and the findings table."""

import json
import logging

import pytest
from helpers.config import CONF

from latentbridge.core.errors import ConfigError
from latentbridge.workflows import reproduce


def _cfg(tmp_path, *overrides: str):
    from hydra import compose, initialize_config_dir

    from latentbridge.core.config import register_resolvers

    register_resolvers()

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(
            "reproduce",
            overrides=[
                "plan=tiny",
                f"out_dir={tmp_path / 'out'}",
                f"paths.cache_dir={tmp_path / 'cache'}",
                "paths.output_dir=.",
                "dashboard.enabled=false",
                *overrides,
            ],
        )
    return cfg


def _run(cfg):
    from hydra import initialize_config_dir

    with initialize_config_dir(str(CONF), version_base="1.3"):  # reproduce composes each run's train config
        return reproduce.reproduce(cfg)


@pytest.mark.slow  # minutes on 2 cores; make test-slow (CI runs it)
def test_phase2_follows_phase1_and_a_rerun_keeps_finished_runs_and_resumes_the_rest(tmp_path, caplog):
    cfg = _cfg(tmp_path, "only=[d1,d2]")
    results = _run(cfg)
    out = tmp_path / "out"
    methods = {r["method"] for r in results["rows"]}
    assert methods == {"d1", "d2", "reconstruction", "d2/reconstruction", "uncompressed"}
    d2_cfg = (out / "d2" / "lambda0.0018" / ".hydra" / "config.yaml").read_text()
    assert str(out / "d1" / "lambda0.0018") in d2_cfg  # phase 2 starts from the same rate point's phase 1
    evaluated = json.loads((out / "d2" / "lambda0.0018" / "evaluation.json").read_text())
    assert evaluated["images"] == 32 and evaluated["bpp"] > 0  # the synthetic val split, real bitstreams
    assert {f["id"]: f["holds"] for f in results["findings"]}["v"] is None  # ablations not run: not measured

    # a run killed after its last checkpoint but before results.json, and a finished run: rerun
    finished = out / "d1" / "lambda0.0018" / "results.json"
    stamp = finished.stat().st_mtime_ns
    (out / "d2" / "lambda0.0035" / "results.json").unlink()
    (out / "d2" / "lambda0.0035" / "evaluation.json").unlink()
    with caplog.at_level(logging.INFO, logger="latentbridge"):
        again = _run(cfg)
    assert finished.stat().st_mtime_ns == stamp
    assert "train/d1/lambda0.0018: finished, kept" in caplog.text
    assert "d2 lambda=0.0035: resuming" in caplog.text
    assert (out / "d2" / "lambda0.0035" / "results.json").is_file()
    assert len(again["rows"]) == len(results["rows"])


def test_bad_plan_entries_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"only: unknown run\(s\) \['nope'\]"):
        _run(_cfg(tmp_path, "only=[nope]"))
    with pytest.raises(ConfigError, match="plan.runs.d1.overrides: unknown placeholder 'where'"):
        _run(_cfg(tmp_path, "only=[d1]", "plan.runs.d1.overrides=['data.root={where}']"))


@pytest.mark.slow
def test_the_whole_tiny_plan_gives_every_figure_and_a_verdict_on_every_finding(tmp_path):
    results = _run(_cfg(tmp_path))
    assert set(results["plots"]) == {
        "fig3_rate_accuracy",
        "fig4_rate_psnr",
        "fig6a_skipped_blocks",
        "fig6b_training_objective",
        "fig6c_other_codecs",  # paper Fig. 6(c)'s mini row: d1 with the mini Transformer codec
        "fig8_other_encoders",  # paper Fig. 8's mini row: d1 with the mini ConvNeXt teacher
        "token_distillation",  # beyond the paper: the token-distillation ablation row
        "one_neck_for_every_rate",  # beyond the paper: one rate-conditioned neck vs the per-rate necks
        "validation_curves",  # every run's validation curve (the convergence rule's record)
    }
    assert all((tmp_path / "out" / f"{name}.png").stat().st_size > 1000 for name in results["plots"])
    verdicts = {f["id"]: f["holds"] for f in results["findings"]}
    assert list(verdicts) == ["i", "ii", "iii", "iv", "v", "vi"]
    assert all(v in (True, False) for v in verdicts.values()), results["findings"]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["findings"] == results["findings"]
    assert [r["lmbda"] for r in saved["premise"]["rows"]] == [0.0018, 0.0035]  # from the d1 runs' validation


def test_findings_compare_curves_at_equal_rate():
    from latentbridge.analysis.findings import Rows, _cmp_at_rate

    rows = Rows(
        [
            {"method": "d1", "lmbda": 1, "bpp": 0.10, "top1": 0.70},
            {"method": "d1", "lmbda": 2, "bpp": 0.30, "top1": 0.80},
            {"method": "d3", "lmbda": 1, "bpp": 0.05, "top1": 0.60},  # below d1's rate range: left out
            {"method": "d3", "lmbda": 2, "bpp": 0.20, "top1": 0.76},  # d1 at 0.20 bpp: 0.75
        ]
    )
    assert rows.at_rate("d1", 0.2, "top1") == pytest.approx(0.75) and rows.at_rate("d1", 0.05, "top1") is None
    (ok, text), *rest = _cmp_at_rate(rows, "d3", "d1", "top1", lambda a, b: a >= b)
    assert ok and not rest and text == "0.200 bpp: d3 0.7600 vs d1 0.7500"
    assert _cmp_at_rate(rows, "d3", "nope", "top1", lambda a, b: a >= b)[0][0] is None


def test_the_paper_plan_composes_every_run(tmp_path):
    """plan=paper: every (run, rate point) composes into a train config with its codec checkpoint and phase-1 parent."""
    from hydra import compose, initialize_config_dir

    vars_ = [
        "plan.vars.imagenet=/data/in",
        "plan.vars.elic=/ckpt/elic",
        "plan.vars.mbt=/ckpt/mbt",
        "plan.vars.tcm=/ckpt/tcm",
    ]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("reproduce", overrides=["plan=paper", *vars_, f"out_dir={tmp_path}", "paths.output_dir=."])
        seen = set()
        for run, spec in cfg.plan.runs.items():
            for lmbda in reproduce.rates_of(cfg, spec):
                sub = compose(config_name="train", overrides=reproduce.run_overrides(cfg, run, lmbda))
                assert sub.codec.lmbda == lmbda and sub.data.root == "/data/in"
                ending = f"/ckpt/tcm/{lmbda}.pth.tar" if run == "d1_tcm" else f"_lambda{lmbda}.pt"  # TCM's own names
                assert sub.codec.checkpoint.endswith(ending)
                if spec.get("init_from"):
                    assert sub.scenario.init_from == str(tmp_path / spec.init_from / f"lambda{lmbda}")
                seen.add(run)
    assert seen == {
        "d1",
        "d2",
        "d3",
        "post_processing",
        "ce_only",
        "dist_only",
        "skip1",
        "skip4",
        "skip8",
        "d1_hyperprior",
        "d1_convnext",  # Fig. 8
        "d2_convnext",
        "d3_convnext",
        "d1_siglip",
        "d1_tcm",  # Fig. 6(c)'s Transformer codec, at its own rate points
    }


def test_premise_and_training_benchmark_scripts_run(tmp_path):
    """scripts/premise.py prints and writes the premise table for a plan's rate points; scripts/benchmark_train.py
    prints every variant side by side with its ratio to the first."""
    import subprocess
    import sys

    from helpers.config import ROOT

    premise = [sys.executable, "scripts/premise.py", "plan=tiny", f"out_dir={tmp_path / 'out'}"]
    premise += [f"paths.cache_dir={tmp_path / 'cache'}", f"paths.log_dir={tmp_path / 'logs'}"]
    res = subprocess.run(premise, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    saved = json.loads((tmp_path / "out" / "premise.json").read_text())
    assert [r["lmbda"] for r in saved["rows"]] == [0.0018, 0.0035] and saved["holds"] in (True, False)
    assert "premise (Reconstruction loses >= 0.08" in res.stdout
    bench = [sys.executable, "scripts/benchmark_train.py", "--experiment", "mini_d1", "--batch", "4", "--steps", "1"]
    bench += ["--warmup", "0", "--readback", "4"]
    res = subprocess.run(bench, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert any(line.startswith("uncached-fp32") and line.endswith("1.00x") for line in lines)
    assert any(line.startswith("cached-fp32") for line in lines) and "read-back of y_hat" in res.stdout


@pytest.mark.slow
def test_the_tiny_paper2_plan_trains_one_variable_rate_model_evaluates_it_at_every_rate_and_reruns_nothing(
    tmp_path, caplog
):
    cfg = _cfg(tmp_path, "plan=tiny_p2")
    results = _run(cfg)
    out = tmp_path / "out"
    rows = [r for r in results["rows"] if r["method"] == "p2"]
    assert [r["lmbda"] for r in rows] == [1.0e-5, 0.0001, 0.001, 0.0032] and len({r["run"] for r in rows}) == 1
    assert sorted(p.name for p in (out / "p2" / "vbr").glob("evaluation_lambda*.json")) == [
        "evaluation_lambda0.0001.json",
        "evaluation_lambda0.001.json",
        "evaluation_lambda0.0032.json",
        "evaluation_lambda1e-05.json",
    ]
    assert [r["lmbda"] for r in results["rows"] if r["method"] == "p2_fixed"] == [0.0001]
    verdicts = {f["id"]: f["holds"] for f in results["findings"]}
    assert list(verdicts) == ["F1", "F2", "F3", "F4", "F5", "F6", "F7"]
    assert verdicts["F3"] is None and verdicts["F4"] is None  # the tiny plan has no such runs: not measured
    assert verdicts["F1"] in (True, False) and verdicts["F2"] in (True, False)
    assert results["premise"] is None and (out / "p2_rate_accuracy.png").is_file()
    jpeg = [r for r in results["rows"] if r["method"] == "jpeg"]  # anchors on the same 2x2 mosaics
    assert [r["quality"] for r in jpeg] == [10, 50] and all(r["images"] == 30 for r in jpeg + rows)
    with caplog.at_level(logging.INFO, logger="latentbridge"):
        again = _run(cfg)
    kept = [line for line in caplog.text.splitlines() if line.endswith(": finished, kept")]
    assert "evaluated" not in caplog.text and sum(" - train/" in k or " train/" in k for k in kept) == 4
    assert sum(" evaluate/" in k for k in kept) == 4  # 4 trainings, their evaluations: nothing redone
    assert again["rows"] == results["rows"]


def test_paper2_findings_say_yes_no_or_not_measured_on_synthetic_rows():
    from omegaconf import OmegaConf

    from latentbridge.analysis.findings_p2 import check_findings

    def rows(method, top1s, bpps=(0.2, 0.3, 0.4, 0.5)):
        return [
            {"method": method, "lmbda": lm, "bpp": b, "bpp_est": b - 0.2, "top1": t}
            for lm, b, t in zip((1, 2, 3, 4), bpps, top1s)
        ]

    cfg = OmegaConf.create(
        {
            "plan": {
                "reference_run": "codec0",
                "findings": {"vbr": "p2", "fixed": "fx", "pixel": "px", "noedit": "ne", "token_only": "tk"},
            }
        }
    )
    n = 200
    per_image = {}
    good = [0.6, 0.7, 0.8, 0.85]
    data = rows("p2", good) + rows("px", [0.5, 0.6, 0.7, 0.8]) + rows("fx", [0.6, 0.7, 0.8, 0.86])
    data += rows("ne", [0.65, 0.75, 0.8, 0.9])
    for method, tops in (("p2", good), ("px", [0.5, 0.6, 0.7, 0.8]), ("ne", [0.65, 0.75, 0.8, 0.9])):
        for lm, t in zip((1, 2, 3, 4), tops):
            correct = [1.0] * int(t * n) + [0.0] * (n - int(t * n))
            per_image[(method, float(lm))] = {"index": list(range(n)), "correct_method": correct}
    verdicts = {f["id"]: f["holds"] for f in check_findings(cfg, data, per_image)}
    assert verdicts["F1"] is True  # within 0.01 of every fixed point
    assert verdicts["F2"] is True  # higher everywhere, and the paired interval excludes 0
    assert verdicts["F3"] is False  # the model without the editor is better
    assert verdicts["F4"] is None and verdicts["F5"] is None  # no such rows / no anchors


def test_a_report_only_rerun_reports_its_own_time_not_a_negative_one(tmp_path):
    """A rerun whose runs are all finished only reports: its wall time is that report's, never the previous
    launch's end subtracted from the new start (it printed "wall time: -208 s")."""
    cfg = _cfg(tmp_path, "only=[d1]", "plan.rates=[0.0018]")
    first = _run(cfg)
    again = _run(cfg)
    assert first["wall_time_s"]["train"] > 0 and again["wall_time_s"]["train"] == 0
    assert 0 <= again["wall_time_s"]["total"] < first["wall_time_s"]["total"]


def test_mini_full_extends_plan_mini_into_its_out_dir_with_the_same_trainings(tmp_path):
    """``make reproduce-mini`` runs the six findings' 24 runs alone (the budgeted plan); ``plan=mini_full`` adds the
    rows beyond them and must find plan=mini's finished runs: same out_dir, and every run of plan=mini composed to
    the same train.py overrides (so the same run directory and the same training)."""
    from hydra import compose, initialize_config_dir

    from latentbridge.core.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        mini, full = (
            compose("reproduce", overrides=[f"plan={p}", f"paths.log_dir={tmp_path}", "paths.output_dir=."])
            for p in ("mini", "mini_full")
        )
    assert sorted(mini.plan.runs) == sorted(
        ["d1", "d2", "d3", "post_processing", "ce_only", "dist_only", "skip1", "skip4"]
    )
    assert sorted(set(full.plan.runs) - set(mini.plan.runs)) == sorted(
        ["token_distillation", "d1_convnext", "d1_tcm", "d1_rates", "d1_rates_total"]
    )
    assert full.out_dir == mini.out_dir == f"{tmp_path}/reproduce/mini"
    for run, lmbda in reproduce.trainings(mini):
        assert reproduce.run_overrides(full, run, lmbda) == reproduce.run_overrides(mini, run, lmbda)
    assert set(mini.plan.figures) < set(full.plan.figures)
    assert mini.plan.findings == full.plan.findings
