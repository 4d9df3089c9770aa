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
- kappa and w_pix: the total distortion weight of phase 0 (lambda 255^2 MSE) is kept and split between the pixel and
  the machine terms: w_pix = 1 - s and kappa E[machine] = s 255^2 E[MSE] over the 21 points, s = 0.5 (the machine
  share, fixed before any run), machine = ltk L_tk + lrk L_rk of each loss variant (the method: L_tk + L_rk; its
  ablation without the rank term: L_tk); 2 significant digits. (The earlier rule, kappa E[L_tk] = 10 x the pixel
  term, made the total distortion weight ~11x phase 0's: every point then spent the bits of a codec at ~7-12x its
  lambda, so a rate shift, not the method, decided the comparison.)
Everything is coded as in training, validation and test: ``mosaic`` x ``mosaic`` mosaics (scenario.mosaic).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

CHANCE = 0.10
POINTS = 21
MACHINE_SHARE = 0.5


def significant(v: float, digits: int = 2) -> float:
    return float(f"{v:.{digits - 1}e}")


def main(argv: list[str]) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from latentbridge.core.config import register_resolvers
    from latentbridge.core.mosaic import tile, untile
    from latentbridge.losses.token import rank_loss, token_distortion
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
    lrk = {q: 0.0 for q in grid}
    m = int(cfg.scenario.get("mosaic") or 1)
    bound, n = 0.0, 0
    with torch.no_grad():
        for batch in dm.val_dataloader():
            x, labels = batch["image"], batch["label"]
            emb = module.teacher_embedding(batch["teacher_image"])
            bound += float(zero_shot_correct(emb, module.text_emb, labels).sum())
            tokens = module.tokens(x)
            for q in grid:
                coded, count = tile(x, m) if m > 1 else (x, x.shape[0])
                y_hat, _ = module.codec.latent(coded, ladder.gain(q))
                x_hat = module.codec.synthesize(y_hat)
                x_hat = untile(x_hat, m, count) if m > 1 else x_hat
                correct[q] += float(zero_shot_correct(decoded_image(module, x_hat), module.text_emb, labels).sum())
                mse[q] += float(((x_hat - x) ** 2).mean((1, 2, 3)).sum())
                tokens_hat = module.tokens(x_hat)
                ltk[q] += float(token_distortion(tokens_hat, tokens)) * labels.shape[0]
                lrk[q] += float(rank_loss(tokens_hat, tokens)) * labels.shape[0]
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
    pixel = 255**2 * sum(mse.values())
    kappa = significant(MACHINE_SHARE * pixel / max(sum(ltk.values()) + sum(lrk.values()), 1e-12))
    kappa_tk = significant(MACHINE_SHARE * pixel / max(sum(ltk.values()), 1e-12))
    print(f"lambda_lo = {lo:.4g} (q = {q_lo:.3f}); lambda_hi = {hi:g}")
    print("conf/plan/mini_p2.yaml:")
    print(f"  rates: {rates}")
    print(f"  fixed_rates: {rates[0::2]}")
    print(
        f"conf/experiment/mini_p2.yaml: loss.w_pix: {1 - MACHINE_SHARE:g}, loss.kappa: {kappa:g}   (E[MSE] "
        f"{sum(mse.values()) / n / POINTS:.6f}, E[L_tk] {sum(ltk.values()) / n / POINTS:.5f}, E[L_rk] "
        f"{sum(lrk.values()) / n / POINTS:.5f})"
    )
    print(f"conf/plan/mini_p2.yaml, the run without the rank term: loss.kappa={kappa_tk:g}; without token terms: "
          "loss.w_pix=1")  # fmt: skip
    if not math.isfinite(kappa):
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
