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

Each (run, rate point) is a training job and an evaluation job of the plan's job graph, the figures and findings a
report job (``workflows/jobs.py``), run in this process or as SLURM jobs (``launcher=``, ``workflows/launch.py``).

A run with ``variable_rate: true`` (one model for every rate: paper 2's codec, or a rate-conditioned neck) is trained
once into ``<out_dir>/<run>/vbr`` and evaluated at every ``plan.rates``.
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

from omegaconf import DictConfig, ListConfig, OmegaConf

from latentbridge.core.atomic_io import atomic_write_json
from latentbridge.core.config import hydra_quote
from latentbridge.core.errors import ConfigError, LatentBridgeError
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
    if isinstance(which, ListConfig) and all(isinstance(r, (int, float)) for r in which):
        return [float(r) for r in which]  # a codec with rate points of its own (Fig. 6(c)'s TCM)
    raise ConfigError(f"plan.runs: rates must be 'all', 'ablation', 'fixed' or a list of lambdas, got '{which}'")


def eval_rates_of(cfg: DictConfig, spec: DictConfig, lmbda: float | None) -> list[float]:
    """The lambdas a trained run is evaluated at: every ``plan.rates`` for a variable-rate run, else its own."""
    return list(cfg.plan.rates) if lmbda is None else [lmbda]


def placeholders(cfg: DictConfig, lmbda: float | None) -> dict[str, Any]:
    """What ``{...}`` in a plan's overrides may name: ``plan.vars``, ``lmbda``, ``rates`` (``plan.rates`` as a list)
    and, at a rate point of paper 1's released files, its index ``quality`` (1-4)."""
    from latentbridge.codecs.published import RELEASED_LAMBDAS

    fields = {**(cfg.plan.get("vars") or {}), **({} if lmbda is None else {"lmbda": lmbda})}
    fields["rates"] = "[" + ",".join(str(r) for r in cfg.plan.rates) + "]"  # a rate-conditioned run covers them all
    quality = {v: k for k, v in RELEASED_LAMBDAS.items()}.get(lmbda)
    return fields | ({"quality": quality} if quality is not None else {})


def plan_overrides(cfg: DictConfig, run: str, lmbda: float | None) -> list[str]:
    """The plan's own overrides of one (run, rate point): ``common``, ``extra``, the run's, then ``final`` (what a
    derived plan imposes on every run: plan=tiny's short runs), filled in."""
    spec, fields = cfg.plan.runs[run], placeholders(cfg, lmbda)
    try:
        given = [*cfg.plan.common, *(cfg.plan.get("extra") or []), *(spec.get("overrides") or []),
                 *(cfg.plan.get("final") or [])]  # fmt: skip
        return [str(o).format(**fields) for o in given]
    except KeyError as e:
        raise ConfigError(
            f"plan.runs.{run}.overrides: unknown placeholder {e} (plan.vars has {list(fields)})"
        ) from None


def run_overrides(cfg: DictConfig, run: str, lmbda: float | None) -> list[str]:
    """The train.py overrides of one (run, rate point)."""
    spec = cfg.plan.runs[run]
    out = run_dir(cfg, run, lmbda)
    listed = plan_overrides(cfg, run, lmbda)
    overrides = [
        f"experiment={spec.experiment}",
        *([] if lmbda is None else [f"{spec.get('rate_key') or 'codec.lmbda'}={lmbda}"]),
        *listed,
        f"paths.output_dir={hydra_quote(out)}",
        f"paths.cache_dir={hydra_quote(cfg.paths.cache_dir)}",
        f"run_group={hydra_quote(cfg.dashboard.group)}",  # the plan's wandb group (when the run logs to wandb)
        f"run_name={hydra_quote(f'{run}/{out.name}')}",
    ]
    if cfg.launcher.name == "slurm":  # the GPUs its job asked for (plan.resources)
        from latentbridge.workflows.launch import trainer_overrides

        overrides += trainer_overrides(cfg, run)
    if spec.get("init_from"):
        parent = spec.init_from
        if parent not in cfg.plan.runs:
            raise ConfigError(f"plan.runs.{run}.init_from: no run named '{parent}'")
        overrides.append(f"scenario.init_from={hydra_quote(run_dir(cfg, parent, lmbda))}")
    last = out / "checkpoints" / "last.ckpt"
    if last.is_file():
        overrides.append(f"ckpt_path={hydra_quote(last)}")
    return overrides


def trainings(cfg: DictConfig) -> list[tuple[str, float | None]]:
    """Every (run, rate point) of the plan to train, phase-1 runs before the phase-2 runs that need them
    (``only``: these runs alone)."""
    only = set(cfg.only or [])
    unknown = only - set(cfg.plan.runs)
    if unknown:
        raise ConfigError(f"only: unknown run(s) {sorted(unknown)} (plan has {list(cfg.plan.runs)})")
    todo = [(run, lmbda) for run, spec in cfg.plan.runs.items() for lmbda in rates_of(cfg, spec)]
    return [(r, lm) for r, lm in todo if not only or r in only]


def train_one(cfg: DictConfig, run: str, lmbda: float | None, where: str = "") -> None:
    """Train one (run, rate point) in its fixed directory: skipped when finished (results.json), resumed from its
    ``last.ckpt`` when interrupted. Needs Hydra's config search path (``jobs.hydra_context``)."""
    from hydra import compose

    out = run_dir(cfg, run, lmbda)
    if (out / "results.json").is_file():
        log.info("%s%s lambda=%s: finished, kept (%s)", where, run, lmbda, out)
        return
    spec = cfg.plan.runs[run]
    if spec.get("released"):  # paper 1's released model: imported, not trained (plan=released)
        from latentbridge.workflows.import_released import import_nycu

        try:
            path = str(spec.released).format(**placeholders(cfg, lmbda))
        except KeyError as e:
            raise ConfigError(f"plan.runs.{run}.released: unknown placeholder {e}") from None
        log.info("%s%s lambda=%s: importing %s", where, run, lmbda, path)
        import_nycu(path, out, overrides=plan_overrides(cfg, run, lmbda))
        return
    overrides = run_overrides(cfg, run, lmbda)
    resumed = any(o.startswith("ckpt_path=") for o in overrides)
    log.info("%s%s lambda=%s: %s", where, run, lmbda, "resuming" if resumed else "training")
    train_run(compose(config_name="train", overrides=overrides))


def evaluation_settings(cfg: DictConfig) -> tuple[DictConfig, dict[str, Any]]:
    """evaluate.py's settings for every run, and the key a cached evaluation must carry to be reused."""
    settings = OmegaConf.create({**OmegaConf.to_container(cfg.evaluate, resolve=True), "seed": cfg.seed})
    key = {"limit": cfg.evaluate.limit, "few_shot_groups": cfg.evaluate.few_shot_groups, "seed": cfg.seed}
    if int(cfg.evaluate.get("mosaic") or 1) > 1:  # mosaics are formed per batch: both decide the bytes
        key |= {"mosaic": int(cfg.evaluate.mosaic), "batch_size": int(cfg.evaluate.batch_size)}
    return settings, key


def evaluation_files(cfg: DictConfig, run: str, trained_at: float | None) -> list[tuple[float, Path]]:
    """(lambda, evaluation json) of one trained (run, rate point)."""
    out = run_dir(cfg, run, trained_at)
    return [
        (lmbda, out / ("evaluation.json" if trained_at is not None else f"evaluation_lambda{lmbda}.json"))
        for lmbda in eval_rates_of(cfg, cfg.plan.runs[run], trained_at)
    ]


def _cached(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    result = json.loads(path.read_text()) if path.is_file() else None
    return result if result is not None and result.get("key") == key else None


def evaluated(cfg: DictConfig, run: str, trained_at: float | None) -> bool:
    """Whether every evaluation of this (run, rate point) is cached under the current settings."""
    _, key = evaluation_settings(cfg)
    return all(_cached(f, key) is not None for _, f in evaluation_files(cfg, run, trained_at))


def evaluate_one(cfg: DictConfig, run: str, trained_at: float | None) -> None:
    """Evaluate one trained (run, rate point) through ``trainer.test`` at each of its rates (a variable-rate run
    is opened once for all), each result cached in its evaluation json."""
    settings, key = evaluation_settings(cfg)
    out, opened = run_dir(cfg, run, trained_at), None
    for lmbda, cached in evaluation_files(cfg, run, trained_at):
        if _cached(cached, key) is not None:
            continue
        opened = opened or ev.open_rate_point(out, settings)
        finished, dm = opened
        q = ev.rate_points(finished, [lmbda])[0]
        started = time.time()
        result = {"key": key, **ev.evaluate_rate_point(finished, dm, settings, q)}
        if result.get("few_shot_error"):
            raise ConfigError(f"evaluate.few_shot_groups: {result['few_shot_error']}; set it to 0 to skip 5-way 1-shot")
        result["seconds"] = round(time.time() - started, 1)
        atomic_write_json(cached, result)
        log.info(
            "evaluated %s lambda=%s in %.0f s: top-1 %.4f", run, lmbda, result["seconds"], result["method"]["top1"]
        )


def collect(
    cfg: DictConfig, todo: list[tuple[str, float | None]]
) -> tuple[list[dict[str, Any]], dict[tuple[str, float], dict[str, Any]], list[tuple[str, float | None]]]:
    """Curve rows and per-image columns of every cached evaluation, and the (run, rate point)s without one."""
    _, key = evaluation_settings(cfg)
    rows: list[dict[str, Any]] = []
    per_image: dict[tuple[str, float], dict[str, Any]] = {}
    missing = []
    reference = cfg.plan.reference_run  # its rate points also give the Reconstruction baseline and the bound
    for run, trained_at in todo:
        out = run_dir(cfg, run, trained_at)
        for lmbda, cached in evaluation_files(cfg, run, trained_at):
            result = _cached(cached, key)
            if result is None:
                missing.append((run, trained_at))
                break
            recon = "reconstruction" if run == reference else f"{run}/reconstruction"
            rows += ev.rows_of(run, result, str(out), lmbda, recon)
            per_image[(run, float(lmbda))] = result.get("per_image") or {}
            if run == reference and not any(r["method"] == "uncompressed" for r in rows):
                rows.append(ev.uncompressed_row(result))
    return rows, per_image, missing


def evaluate_anchors(cfg: DictConfig, compute: bool = True) -> list[dict[str, Any]]:
    """``plan.anchors`` (codec -> qualities): traditional codecs through the reference run's encoder, each cached in
    ``<out_dir>/anchors/<codec>_q<quality>.json``; unavailable codecs are skipped with the reason. ``compute``
    false: the cached rows only."""
    from latentbridge.codecs.traditional import unavailable_reason

    settings, key = evaluation_settings(cfg)
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
            row = _cached(cached, key)
            if row is None and not compute:
                continue
            if row is None:
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


def report(cfg: DictConfig) -> dict[str, Any]:
    """Figures, table and findings from every cached evaluation; the (run, rate point)s without one are listed
    with their job's state and log files. results.json / results.csv in ``out_dir``."""
    from importlib import import_module

    from rich.console import Console

    from latentbridge.analysis.findings import print_findings
    from latentbridge.analysis.premise import print_premise
    from latentbridge.analysis.report import print_table, write_csv
    from latentbridge.workflows.jobs import JobRecords, job_name

    out = Path(cfg.out_dir)
    todo = trainings(cfg)
    rows, per_image, missing = collect(cfg, todo)
    rows += evaluate_anchors(cfg, compute=False)
    plots = plot_figures(cfg, rows)
    convergence = convergence_of(cfg, todo)
    if convergence:
        from latentbridge.analysis.curves import plot_validation

        png = plot_validation(convergence, out / "validation_curves.png", f"{cfg.plan.name}: validation curves")
        if png:
            plots["validation_curves"] = str(png)
    findings_module = import_module(cfg.plan.get("findings_module") or "latentbridge.analysis.findings")
    findings = findings_module.check_findings(cfg, rows, per_image)
    checked_premise = premise_of(cfg) if cfg.plan.get("premise", True) else None
    jobs = JobRecords(out)
    records, launched = jobs.read(), jobs.launched or 0.0
    failed = []
    for run, lmbda in missing:  # the training if it did not complete, else its evaluation
        trained = records.get(job_name("train", run, lmbda), {}).get("state") in (None, "COMPLETED")
        job = job_name("evaluate" if trained else "train", run, lmbda)
        rec = records.get(job, {})
        fields = {k: rec.get(k) for k in ("state", "error", "stdout", "stderr", "job_id")}
        failed.append({"run": run, "lmbda": lmbda, "job": job, **fields})
    # this launch's jobs (finished work kept from earlier launches does not count)
    now = {n: r for n, r in records.items() if (r.get("started") or 0.0) >= launched}
    spans = [(r["started"], r.get("ended") or time.time()) for r in now.values()]
    trained = sum((r.get("ended") or r["started"]) - r["started"] for n, r in now.items() if n.startswith("train/"))
    results = {
        "plan": cfg.plan.name,
        "premise": checked_premise,
        "rows": rows,
        "plots": plots,
        "findings": findings,
        "failed": failed,
        "convergence": {
            k: {f: v[f] for f in ("converged", "stopped", "epochs", "steps")} for k, v in convergence.items()
        },
        "wall_time_s": {
            "train": round(trained, 1),
            "total": round(max(e for _, e in spans) - min(s for s, _ in spans), 1) if spans else None,
        },
    }
    atomic_write_json(out / "results.json", results)
    write_csv(out / "results.csv", rows)
    print_table(rows, Console(width=160))
    if checked_premise is not None:
        print_premise(checked_premise)
    print_findings(findings)
    if convergence:
        capped = [k for k, v in convergence.items() if not v["converged"]]
        print(f"convergence: {len(convergence) - len(capped)} of {len(convergence)} runs converged by the rule"
              + (f"; stopped at their cap, unconverged: {', '.join(capped)}" if capped else ""))  # fmt: skip
    for f in failed:
        logs = f" (logs: {f['stdout']}, {f['stderr']})" if f.get("stdout") else ""
        print(f"FAILED {f['job']}: {f.get('state') or 'not run'} {f.get('error') or ''}{logs}")
    print(f"results: {out / 'results.json'} and results.csv; figures: {', '.join(plots.values())}")
    if results["wall_time_s"]["total"] is not None:
        print(f"wall time: {results['wall_time_s']['total']:.0f} s (training {trained:.0f} s)")
    update_dashboard(cfg, rows=rows, final=True, results=results)
    return results


def convergence_of(cfg: DictConfig, todo: list[tuple[str, float | None]]) -> dict[str, dict[str, Any]]:
    """``<run>/lambda<l>`` -> the convergence record of its training (runs trained with the rule only)."""
    found = {}
    for run, lmbda in todo:
        results = run_dir(cfg, run, lmbda) / "results.json"
        if results.is_file():
            conv = json.loads(results.read_text()).get("convergence")
            if conv:
                found[f"{run}/{run_dir(cfg, run, lmbda).name}"] = conv
    return found


def update_dashboard(
    cfg: DictConfig, rows: list[dict[str, Any]] | None = None, final: bool = False, results: Any = None
) -> None:
    """The plan's figures on wandb (``latentbridge/analysis/dashboard.py``), when ``dashboard`` is on."""
    if not cfg.get("dashboard", {}).get("enabled"):
        return
    from latentbridge.analysis.dashboard import log_figures

    if rows is None:
        rows, _, _ = collect(cfg, trainings(cfg))
        rows += evaluate_anchors(cfg, compute=False)
    log_figures(cfg, rows, final=final, results=results)


def reproduce(cfg: DictConfig) -> dict[str, Any]:
    """Run the plan's job graph with ``cfg.launcher`` (``latentbridge/workflows/launch.py``)."""
    from latentbridge.workflows.launch import launch

    result = launch(cfg)
    failed = [f if isinstance(f, str) else f["job"] for f in (result or {}).get("failed") or []]
    if failed:  # a non-zero exit for scripts; the summary above names each job and its log
        raise LatentBridgeError(
            f"{len(failed)} job(s) did not succeed ({', '.join(failed)}); rerun the same command to resubmit them"
        )
    return result
