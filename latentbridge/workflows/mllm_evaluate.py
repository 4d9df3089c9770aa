"""MLLM rate-accuracy (paper 4.1-4.2, Fig. 3): lmms-eval tasks answered by LLaVA-1.5 reading compressed images,
one trained run per rate point, for the neck path, the Reconstruction baseline and uncompressed images. Joins the
harness's scores with the bits recorded per sample into rows, curves and files like evaluate.py's.

    latentbridge-mllm-evaluate 'runs=[logs/paper_d1_llava/runs/<a>,...]' 'tasks=[pope,coco_karpathy_test]' \\
      llava=llava-hf/llava-1.5-7b-hf include_path=/data/lmms_tasks device=cuda

A paper-2 run (variable-rate codec + pre-editor) is loaded once and evaluated at every ``rates`` (lambdas of its
ladder or ``q=<0..1>``; null: 8 points), each image coded at its native resolution and read by LLaVA's pixel path.
Tasks must read local data (``include_path``: task YAMLs pointing at local files; nothing fetched by URL).
``join=<evaluate.py results.json>`` puts evaluate.py's rows (zero-shot, few-shot, PSNR, anchors) in the same files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from rich.console import Console

from latentbridge.analysis.report import write_csv
from latentbridge.core.atomic_io import atomic_write_json
from latentbridge.core.errors import ConfigError


def task_score(results: dict[str, Any], task: str, metric: str | None) -> tuple[str, float]:
    """(metric name, value) of one task in lmms-eval's results: ``metric`` or the first non-stderr number."""
    found = results["results"].get(task)
    if found is None:
        raise ConfigError(f"tasks: lmms-eval returned no results for '{task}'")
    for key, value in found.items():
        name = key.split(",")[0]
        if isinstance(value, (int, float)) and "stderr" not in key and (metric is None or name == metric):
            return name, float(value)
    raise ConfigError(f"tasks: '{task}' has no numeric metric {metric or ''} in {list(found)}")


def evaluate_path(
    cfg: DictConfig,
    reader: Any,
    path: str,
    run: str | tuple[Any, int, float | None] | None,
    out_dir: Path,
    rate: str | float | None = None,
) -> list[dict[str, Any]]:
    """One lmms-eval pass: ``run`` is a run directory or an already loaded (module, size, lambda)."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from latentbridge.mllm.lmms_model import LatentBridgeLLaVA, load_run

    module, size, lmbda, method = None, None, None, path
    if run is not None:
        module, size, lmbda = load_run(run) if isinstance(run, (str, Path)) else run
        method = module.scenario_name if path in ("neck", "preedit") else "reconstruction"
    if rate is not None:
        lmbda = module.codec.ladder.lmbda(module.codec.ladder.resolve(rate))
    tag = f"{method}_lambda{lmbda}" if lmbda is not None else method
    bits = out_dir / f"bits_{tag}.json"
    lm = LatentBridgeLLaVA(
        reader=reader,
        module=module,
        image_size=size,
        lmbda=lmbda,
        path=path,
        bits_file=str(bits),
        device=cfg.device,
        rate=rate,
    )
    manager = TaskManager(include_path=cfg.include_path) if cfg.include_path else TaskManager()
    results = simple_evaluate(model=lm, tasks=list(cfg.tasks), task_manager=manager, limit=cfg.limit, log_samples=False)
    recorded = lm.records
    bpp = sum(8 * r["bytes"] for r in recorded) / max(sum(r["pixels"] for r in recorded), 1)
    rows = []
    for task in cfg.tasks:
        metric, value = task_score(results, task, (cfg.metrics or {}).get(task))
        rows.append({"method": method, "lmbda": lmbda, "bpp": bpp, "task": task, "metric": metric, task: value})
    return rows


def mllm_evaluate(cfg: DictConfig) -> dict[str, Any]:
    from latentbridge.analysis.curves import plot
    from latentbridge.mllm.llava_reader import LlavaReader

    if not cfg.runs:
        raise ConfigError("runs: give the trained runs, one per rate point ('runs=[<run dir>,...]')")
    out_dir = Path(cfg.paths.output_dir)
    reader = LlavaReader.from_pretrained(cfg.llava, dtype=cfg.dtype, device=cfg.device)
    rows: list[dict[str, Any]] = []
    from latentbridge.mllm.lmms_model import load_run

    for run in cfg.runs:
        loaded = load_run(str(run))  # once per run, whatever the number of rates and paths
        if hasattr(loaded[0], "eval_rate"):
            raise ConfigError(
                f"runs: {run} is a rate-conditioned run (d1_rates); the lmms-eval model reads one rate point per "
                "run: evaluate it with evaluate.py, or serve it (latentbridge-serve) and query the MLLM there"
            )
        if getattr(loaded[0].codec, "variable_rate", False):
            for rate in cfg.get("rates") or [f"q={i / 7}" for i in range(8)]:
                rows += evaluate_path(cfg, reader, "preedit", loaded, out_dir, rate)
            continue
        for path in cfg.paths_to_evaluate:
            rows += evaluate_path(cfg, reader, path, loaded, out_dir)
    if cfg.uncompressed:
        rows += evaluate_path(cfg, reader, "uncompressed", None, out_dir)
    if cfg.join:  # evaluate.py's rows (zero-shot, few-shot, PSNR, anchors) beside the MLLM rows, one file
        joined = Path(cfg.join)
        if not joined.is_file():
            raise ConfigError(f"join: {joined} does not exist (an evaluate.py results.json)")
        rows = json.loads(joined.read_text())["rows"] + rows
    plots = {}
    for task in cfg.tasks:
        png = plot(
            [r for r in rows if r.get("task") == task], task, out_dir / f"rate_{task}.png", title=f"{task} (LLaVA)"
        )
        if png:
            plots[task] = str(png)
    results = {"rows": rows, "plots": plots}
    atomic_write_json(out_dir / "results.json", results)
    write_csv(out_dir / "results.csv", rows)
    Console().print(f"results: {out_dir / 'results.json'}; plots: {', '.join(plots.values())}")
    return results
