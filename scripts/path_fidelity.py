"""How close each path's embedding is to the uncompressed one, C(x) (cf. paper Fig. 7's feature-matching MSE), and
each path's top-1 on the training and the test split: a diagnostic for why a path wins or loses.

    python scripts/path_fidelity.py 'runs=[logs/reproduce/mini/d1/lambda0.0004,...]' limit=1000

Prints, per run: top-1 (test, train), the MSE and the cosine similarity of the method path and of Reconstruction
to C(x) (likelihood-free: y_hat as coded in eval mode).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from latentbridge import routes
from latentbridge.cli import hydra_command
from latentbridge.metrics.zero_shot import zero_shot_correct
from latentbridge.workflows.evaluate import open_rate_point


@torch.no_grad()
def fidelity(module, loader) -> dict[str, float]:
    out: dict[str, list[torch.Tensor]] = {"method": [], "reconstruction": [], "uncompressed": [], "label": []}
    for batch in loader:
        if "label" not in batch:
            continue
        y_hat, _ = module.codec.latent(batch["image"])
        out["method"].append(routes.latent_route(module.method_path)(module, y_hat))
        out["reconstruction"].append(routes.reconstruction(module, y_hat))
        out["uncompressed"].append(routes.uncompressed(module, batch["teacher_image"]))
        out["label"].append(batch["label"])
    e = {k: torch.cat(v) for k, v in out.items()}
    res = {}
    for path in ("method", "reconstruction", "uncompressed"):
        res[f"top1_{path}"] = float(zero_shot_correct(e[path], module.text_emb, e["label"]).mean())
    for path in ("method", "reconstruction"):
        res[f"mse_{path}"] = float(F.mse_loss(e[path], e["uncompressed"]))
        res[f"cos_{path}"] = float(F.cosine_similarity(e[path], e["uncompressed"], dim=-1).mean())
    return res


def path_fidelity(cfg: DictConfig) -> None:
    table = Table(title="path fidelity to C(x)")
    cols = ["run", "split", "top1 method", "top1 recon", "top1 C(x)"]
    cols += ["MSE method", "MSE recon", "cos method", "cos recon"]
    for c in cols:
        table.add_column(c)
    for run in cfg.runs:
        finished, dm = open_rate_point(Path(run), cfg)
        module = finished.module
        for split, loader in (("test", dm.test_dataloader()), ("train", dm.split_dataloader("train", cfg.limit))):
            r = fidelity(module, loader)
            table.add_row(
                str(run),
                split,
                *(f"{r[k]:.4f}" for k in ("top1_method", "top1_reconstruction", "top1_uncompressed")),
                *(f"{r[k]:.4f}" for k in ("mse_method", "mse_reconstruction", "cos_method", "cos_reconstruction")),
            )
    Console(width=200).print(table)


if __name__ == "__main__":
    hydra_command("evaluate", path_fidelity)()
