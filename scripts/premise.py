"""Check the mini's premise (latentbridge/analysis/premise.py) before training any transform-neck: at each rate
point of a plan, validate the reference run's configuration with its neck untouched and report what the codec
costs the teacher (uncompressed vs Reconstruction top-1 on the held-out validation split). Missing codecs and the
teacher are prepared (trained and cached) first, as training would.

    python scripts/premise.py                     # plan=mini
    python scripts/premise.py plan.rates='[0.0002,0.0004]'
"""

from __future__ import annotations

import lightning as L
from hydra import compose
from omegaconf import DictConfig

from latentbridge.analysis.premise import premise, print_premise
from latentbridge.cli import hydra_command
from latentbridge.core.atomic_io import atomic_write_json
from latentbridge.runs import build_scenario
from latentbridge.workflows.reproduce import run_overrides
from latentbridge.workflows.train import prepare_dependencies


def measure(cfg: DictConfig) -> dict:
    from hydra.utils import instantiate

    points = {}
    for lmbda in cfg.plan.rates:
        overrides = [o for o in run_overrides(cfg, cfg.plan.reference_run, lmbda) if not o.startswith("ckpt_path=")]
        run_cfg = compose(config_name="train", overrides=overrides)
        prepare_dependencies(run_cfg)
        L.seed_everything(run_cfg.seed, verbose=False)
        module = build_scenario(run_cfg)
        dm = instantiate(run_cfg.data)
        trainer = L.Trainer(accelerator="auto", devices=1, logger=False, enable_progress_bar=False)
        metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
        points[float(lmbda)] = {k.removeprefix("val/"): float(v) for k, v in metrics.items()}
    result = premise(points)
    print_premise(result)
    atomic_write_json(f"{cfg.out_dir}/premise.json", result)
    return result


if __name__ == "__main__":
    hydra_command("reproduce", measure)()
