"""Reproduce paper 1's figures end to end (Fig. 3, 4, 6; findings of 4.2-4.5): train every run of a plan, evaluate
each through real bitstreams, plot the figures, write a results table and check each finding.

    latentbridge-reproduce                       # plan=mini: the offline mini setup on CPU (make reproduce-mini)
    latentbridge-reproduce plan=paper plan.common='[data.root=/data/imagenet,trainer=ddp,trainer.devices=8]' ...

A plan (conf/plan/) lists runs (an experiment preset + overrides, at every rate point or the ablation rate points;
phase-2 runs name the phase-1 run they start from; ``{lmbda}`` and ``plan.vars`` fill placeholders in overrides),
figures and the runs the findings compare. Every run also yields its Reconstruction curve (``<run>/reconstruction``;
the reference run's is plain ``reconstruction``). Every run has a
fixed directory ``<out_dir>/<run>/lambda<lambda>``: a rerun skips finished runs (results.json), resumes an
interrupted one from its last.ckpt and reuses finished evaluations (evaluation.json), so nothing finished is lost.

Paper 2's plans (``plan=mini_p2``) use the same machinery: a run with ``variable_rate: true`` is trained once into
``<out_dir>/<run>/vbr`` and evaluated at every ``plan.rates`` (``evaluation_lambda<lambda>.json``); a run with
``rates: fixed`` is one model per ``plan.fixed_rates``; ``plan.findings_module`` checks that paper's findings.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from latentbridge.core.atomic_io import atomic_write_json
from latentbridge.core.config import hydra_quote
from latentbridge.core.errors import ConfigError
from latentbridge.workflows import evaluate as ev
from latentbridge.workflows.train import run as train_run

log = logging.getLogger("latentbridge")


def run_dir(cfg: DictConfig, run: str, lmbda: float | None) -> Path:
    """``<out_dir>/<run>/lambda<lambda>``; a variable-rate run (one model for every rate): ``<out_dir>/<run>/vbr``."""
    return Path(cfg.out_dir) / run / ("vbr" if lmbda is None else f"lambda{lmbda}")


def rates_of(cfg: DictConfig, spec: DictConfig) -> list[float | None]:
    """The trainings of a run: one per rate point, or one (``None``) for a variable-rate run."""
    if spec.get("variable_rate"):
        return [None]
    which = spec.get("rates", "all")
    if which == "all":
        return list(cfg.plan.rates)
    if which == "ablation":
        return list(cfg.plan.ablation_rates)
    if which == "fixed":
        return list(cfg.plan.fixed_rates)
    raise ConfigError(f"plan.runs: rates must be 'all', 'ablation' or 'fixed', got '{which}'")


def eval_rates_of(cfg: DictConfig, spec: DictConfig, lmbda: float | None) -> list[float]:
    """The lambdas a trained run is evaluated at: every ``plan.rates`` for a variable-rate run, else its own."""
    return list(cfg.plan.rates) if lmbda is None else [lmbda]


def run_overrides(cfg: DictConfig, run: str, lmbda: float | None) -> list[str]:
    """The train.py overrides of one (run, rate point)."""
    spec = cfg.plan.runs[run]
    out = run_dir(cfg, run, lmbda)
    fields = {**(cfg.plan.get("vars") or {}), **({} if lmbda is None else {"lmbda": lmbda})}
    try:
        given = [*cfg.plan.common, *(cfg.plan.get("extra") or []), *(spec.get("overrides") or [])]
        listed = [str(o).format(**fields) for o in given]
    except KeyError as e:
        raise ConfigError(
            f"plan.runs.{run}.overrides: unknown placeholder {e} (plan.vars has {list(fields)})"
        ) from None
    overrides = [
        f"experiment={spec.experiment}",
        *([] if lmbda is None else [f"{spec.get('rate_key') or 'codec.lmbda'}={lmbda}"]),
        *listed,
        f"paths.output_dir={hydra_quote(out)}",
        f"paths.cache_dir={hydra_quote(cfg.paths.cache_dir)}",
    ]
    if spec.get("init_from"):
        parent = spec.init_from
        if parent not in cfg.plan.runs:
            raise ConfigError(f"plan.runs.{run}.init_from: no run named '{parent}'")
        overrides.append(f"scenario.init_from={hydra_quote(run_dir(cfg, parent, lmbda))}")
    last = out / "checkpoints" / "last.ckpt"
    if last.is_file():
        overrides.append(f"ckpt_path={hydra_quote(last)}")
    return overrides


def train_all(cfg: DictConfig) -> list[tuple[str, float | None]]:
    """Train every (run, rate point) of the plan in order (phase-1 runs before the phase-2 runs that need them)."""
    from hydra import compose

    todo = [(run, lmbda) for run, spec in cfg.plan.runs.items() for lmbda in rates_of(cfg, spec)]
    only = set(cfg.only or [])
    unknown = only - set(cfg.plan.runs)
    if unknown:
        raise ConfigError(f"only: unknown run(s) {sorted(unknown)} (plan has {list(cfg.plan.runs)})")
    for i, (run, lmbda) in enumerate(todo, 1):
        if only and run not in only:
            continue
        out = run_dir(cfg, run, lmbda)
        if (out / "results.json").is_file():
            log.info("[%d/%d] %s lambda=%s: finished, kept (%s)", i, len(todo), run, lmbda, out)
            continue
        overrides = run_overrides(cfg, run, lmbda)
        resumed = any(o.startswith("ckpt_path=") for o in overrides)
        log.info("[%d/%d] %s lambda=%s: %s", i, len(todo), run, lmbda, "resuming" if resumed else "training")
        train_run(compose(config_name="train", overrides=overrides))
    return [(r, lm) for r, lm in todo if not only or r in only]


def evaluate_all(
    cfg: DictConfig, todo: list[tuple[str, float | None]]
) -> tuple[list[dict[str, Any]], dict[tuple[str, float], dict[str, Any]]]:
    """One evaluation per (run, rate point) through ``trainer.test``, cached in its evaluation json; curve rows and
    each evaluation's per-image columns (for paired statistics). A variable-rate run is opened once for all rates."""
    rows: list[dict[str, Any]] = []
    per_image: dict[tuple[str, float], dict[str, Any]] = {}
    settings = OmegaConf.create({**OmegaConf.to_container(cfg.evaluate, resolve=True), "seed": cfg.seed})
    reference = cfg.plan.reference_run  # its rate points also give the Reconstruction baseline and the bound
    key = {"limit": cfg.evaluate.limit, "few_shot_groups": cfg.evaluate.few_shot_groups, "seed": cfg.seed}
    if int(cfg.evaluate.get("mosaic") or 1) > 1:  # mosaics are formed per batch: both decide the bytes
        key |= {"mosaic": int(cfg.evaluate.mosaic), "batch_size": int(cfg.evaluate.batch_size)}
    for run, trained_at in todo:
        out = run_dir(cfg, run, trained_at)
        opened = None
        for lmbda in eval_rates_of(cfg, cfg.plan.runs[run], trained_at):
            cached = out / ("evaluation.json" if trained_at is not None else f"evaluation_lambda{lmbda}.json")
            result = json.loads(cached.read_text()) if cached.is_file() else None
            if result is None or result.get("key") != key:
                opened = opened or ev.open_rate_point(out, settings)
                finished, dm = opened
                q = ev.rate_points(finished, [lmbda])[0]
                started = time.time()
                result = {"key": key, **ev.evaluate_rate_point(finished, dm, settings, q)}
                if result.get("few_shot_error"):
                    raise ConfigError(
                        f"evaluate.few_shot_groups: {result['few_shot_error']}; set it to 0 to skip 5-way 1-shot"
                    )
                result["seconds"] = round(time.time() - started, 1)
                atomic_write_json(cached, result)
                log.info(
                    "evaluated %s lambda=%s in %.0f s: top-1 %.4f",
                    run,
                    lmbda,
                    result["seconds"],
                    result["method"]["top1"],
                )
            recon = "reconstruction" if run == reference else f"{run}/reconstruction"
            rows += ev.rows_of(run, result, str(out), lmbda, recon)
            per_image[(run, float(lmbda))] = result.get("per_image") or {}
            if run == reference and not any(r["method"] == "uncompressed" for r in rows):
                rows.append(ev.uncompressed_row(result))
    rows += evaluate_anchors(cfg, settings, key)
    return rows, per_image


def evaluate_anchors(cfg: DictConfig, settings: DictConfig, key: dict[str, Any]) -> list[dict[str, Any]]:
    """``plan.anchors`` (codec -> qualities): traditional codecs through the reference run's encoder, each cached in
    ``<out_dir>/anchors/<codec>_q<quality>.json``; unavailable codecs are skipped with the reason."""
    from latentbridge.codecs.traditional import unavailable_reason

    anchors = cfg.plan.get("anchors") or {}
    if not anchors:
        return []
    reference = cfg.plan.reference_run
    trained_at = rates_of(cfg, cfg.plan.runs[reference])[0]
    rows, opened = [], None
    for name, qualities in anchors.items():
        reason = unavailable_reason(name, {})
        if reason:
            log.info("anchor %s skipped: %s", name, reason)
            continue
        for quality in qualities:
            cached = Path(cfg.out_dir) / "anchors" / f"{name}_q{quality}.json"
            row = json.loads(cached.read_text()) if cached.is_file() else None
            if row is None or row.get("key") != key:
                opened = opened or ev.open_rate_point(run_dir(cfg, reference, trained_at), settings)
                row = {"key": key, **ev.evaluate_anchor(*opened, name, int(quality), settings)}
                atomic_write_json(cached, row)
            rows.append({k: v for k, v in row.items() if k != "key"})
    return rows


def plot_figures(cfg: DictConfig, rows: list[dict[str, Any]]) -> dict[str, str]:
    from latentbridge.analysis.curves import plot

    plots = {}
    for name, fig in cfg.plan.figures.items():
        labels = dict(fig.methods)
        picked = [{**r, "method": labels[r["method"]]} for r in rows if r["method"] in labels]
        png = plot(picked, fig.metric, Path(cfg.out_dir) / f"{name}.png", title=fig.title)
        if png:
            plots[name] = str(png)
    return plots


def premise_of(cfg: DictConfig) -> dict[str, Any]:
    """The premise (``analysis/premise.py``) from the reference run's final validation at each rate point."""
    from latentbridge.analysis.premise import premise

    points = {}
    for lmbda in cfg.plan.rates:
        results = run_dir(cfg, cfg.plan.reference_run, lmbda) / "results.json"
        if results.is_file():
            metrics = json.loads(results.read_text()).get("metrics") or {}
            if "top1_uncompressed" in metrics and "top1_reconstruction" in metrics:
                points[float(lmbda)] = metrics
    return premise(points)


def reproduce(cfg: DictConfig) -> dict[str, Any]:
    """Train, evaluate, plot and check every run of the plan; results.json / results.csv in ``out_dir``."""
    from importlib import import_module

    from rich.console import Console

    from latentbridge.analysis.findings import print_findings
    from latentbridge.analysis.premise import print_premise
    from latentbridge.analysis.report import print_table, write_csv

    started = time.time()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    todo = train_all(cfg)
    trained_s = time.time() - started
    rows, per_image = evaluate_all(cfg, todo)
    plots = plot_figures(cfg, rows)
    findings_module = import_module(cfg.plan.get("findings_module") or "latentbridge.analysis.findings")
    findings = findings_module.check_findings(cfg, rows, per_image)
    checked_premise = premise_of(cfg) if cfg.plan.get("premise", True) else None
    results = {
        "plan": cfg.plan.name,
        "premise": checked_premise,
        "rows": rows,
        "plots": plots,
        "findings": findings,
        "wall_time_s": {"train": round(trained_s, 1), "total": round(time.time() - started, 1)},
    }
    atomic_write_json(out / "results.json", results)
    write_csv(out / "results.csv", rows)
    print_table(rows, Console(width=160))
    if checked_premise is not None:
        print_premise(checked_premise)
    print_findings(findings)
    print(f"results: {out / 'results.json'} and results.csv; figures: {', '.join(plots.values())}")
    print(f"wall time: {results['wall_time_s']['total']:.0f} s (training {trained_s:.0f} s)")
    return results
