"""Pre-register paper 2's mini evaluation rates and the token-loss weight kappa, before any paper-2 run (design
``paper2.md`` 5.1 and 2.5). Both rules are fixed here; the script prints the values for conf/plan/mini_p2.yaml and
conf/experiment/mini_p2.yaml and is rerun only if the phase-0 codec or the teacher changes.

    python scripts/calibrate_p2.py [key=value ...]        # train.py overrides (default: experiment=mini_p2)

On the validation images (carved from the training split; t10k is not touched), with the phase-0 variable-rate
codec and no pre-editor, at 21 rate points q = 0, 0.05, ..., 1:
- rates: lambda_hi = the ladder's top; lambda_lo = lambda(q) where the Reconstruction top-1 (the decoded image
  through the teacher) crosses the midpoint between chance (0.10) and the uncompressed top-1, interpolated in q;
  the ladder's bottom if it is above the midpoint everywhere. 8 lambdas log-uniform in [lambda_lo, lambda_hi] (2
  significant digits); the fixed-rate models at every other one, from the lowest.
- kappa: kappa * E[L_tk] = 10 * 255^2 * E[MSE] over the 21 points (the machine term ten times the pixel term at the
  start of joint training), 2 significant digits.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

CHANCE = 0.10
POINTS = 21
MACHINE_OVER_PIXEL = 10.0


def significant(v: float, digits: int = 2) -> float:
    return float(f"{v:.{digits - 1}e}")


def main(argv: list[str]) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from latentbridge.core.config import register_resolvers
    from latentbridge.losses.token import token_distortion
    from latentbridge.metrics.zero_shot import zero_shot_correct
    from latentbridge.routes import decoded_image
    from latentbridge.workflows.train import prepare_dependencies

    register_resolvers()
    conf = str(Path(__file__).resolve().parents[1] / "conf")
    overrides = ["experiment=mini_p2", "preedit=none", "data.val_subset=2000", "logger=none", *argv]
    with initialize_config_dir(conf, version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "paths.output_dir=logs/calibrate_p2"])
        prepare_dependencies(cfg)
        torch.manual_seed(0)
        dm = instantiate(cfg.data)
        module = instantiate(cfg.scenario).eval()
    dm.setup("validate")
    module.set_classes(dm.classnames, dm.templates)
    ladder = module.ladder
    grid = [i / (POINTS - 1) for i in range(POINTS)]
    correct = {q: 0.0 for q in grid}
    mse = {q: 0.0 for q in grid}
    ltk = {q: 0.0 for q in grid}
    bound, n = 0.0, 0
    with torch.no_grad():
        for batch in dm.val_dataloader():
            x, labels = batch["image"], batch["label"]
            emb = module.teacher_embedding(batch["teacher_image"])
            bound += float(zero_shot_correct(emb, module.text_emb, labels).sum())
            tokens = module.tokens(x)
            for q in grid:
                y_hat, _ = module.codec.latent(x, ladder.gain(q))
                x_hat = module.codec.synthesize(y_hat)
                correct[q] += float(zero_shot_correct(decoded_image(module, x_hat), module.text_emb, labels).sum())
                mse[q] += float(((x_hat - x) ** 2).mean((1, 2, 3)).sum())
                ltk[q] += float(token_distortion(module.tokens(x_hat), tokens)) * labels.shape[0]
            n += labels.shape[0]
    bound /= n
    top1 = {q: correct[q] / n for q in grid}
    midpoint = (CHANCE + bound) / 2
    print(f"validation images: {n}; uncompressed top-1 {bound:.4f}; midpoint {midpoint:.4f}")
    print("q       lambda      top-1   MSE       L_tk")
    for q in grid:
        print(f"{q:.2f}  {ladder.lmbda(q):.3e}  {top1[q]:.4f}  {mse[q] / n:.6f}  {ltk[q] / n:.5f}")
    q_lo = 0.0
    for a, b in zip(grid, grid[1:]):
        if top1[a] < midpoint <= top1[b]:
            q_lo = a + (b - a) * (midpoint - top1[a]) / (top1[b] - top1[a])
    if top1[grid[0]] >= midpoint:
        print("Reconstruction top-1 stays above the midpoint over the whole ladder: lambda_lo = lambda_min")
    lo, hi = ladder.lmbda(q_lo), ladder.lmbda_max
    rates = [significant(lo * (hi / lo) ** (i / 7)) for i in range(8)]
    rates[-1] = hi
    kappa = significant(MACHINE_OVER_PIXEL * 255**2 * sum(mse.values()) / max(sum(ltk.values()), 1e-12))
    print(f"lambda_lo = {lo:.4g} (q = {q_lo:.3f}); lambda_hi = {hi:g}")
    print("conf/plan/mini_p2.yaml:")
    print(f"  rates: {rates}")
    print(f"  fixed_rates: {rates[0::2]}")
    print(
        f"conf/experiment/mini_p2.yaml: loss.kappa: {kappa:g}   (E[MSE] {sum(mse.values()) / n / POINTS:.6f}, "
        f"E[L_tk] {sum(ltk.values()) / n / POINTS:.5f})"
    )
    if not math.isfinite(kappa):
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
