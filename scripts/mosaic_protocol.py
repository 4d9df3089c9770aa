"""Does the mosaic protocol matter? (paper 2 on the mini, README decision D18.) One finished paper-2 run, the same
test images, evaluated through real bitstreams as trained (m x m mosaics, ``scenario.mosaic``) and as isolated 32x32
images (m = 1): top-1 of the path the run trains, real and estimated bpp, PSNR, per rate point.

    python scripts/mosaic_protocol.py logs/reproduce/mini_p2/p2/vbr [rates=[1e-5,0.00012,0.0032]] [limit=1000]
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf


def main(argv: list[str]) -> None:
    from latentbridge.workflows.evaluate import evaluate_rate_point, open_rate_point, rate_points

    if not argv or not Path(argv[0]).is_dir():
        print("usage: python scripts/mosaic_protocol.py <paper-2 run dir> [rates=[...]] [limit=N]", file=sys.stderr)
        sys.exit(2)
    options = OmegaConf.from_dotlist(argv[1:])
    cfg = OmegaConf.create(
        {"limit": options.get("limit", 1000), "batch_size": 96, "few_shot_groups": 0, "seed": 0, "mosaic": 1,
         "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true", "enable_progress_bar": False}}
    )  # fmt: skip
    run, datamodule = open_rate_point(Path(argv[0]), cfg)
    trained = int(run.module.mosaic)
    path = "method"  # the run's own path: editor -> codec -> the encoder on the decoded image
    print(f"{argv[0]}: trained on {trained}x{trained} mosaics; {cfg.limit} test images")
    print("lambda      mosaic  top-1   real bpp  est. bpp  PSNR")
    for q in rate_points(run, list(options.get("rates") or [])):
        for m in (trained, 1):
            run.module.mosaic = m  # the module codes m x m mosaics in test_step
            cfg.mosaic = m
            r = evaluate_rate_point(run, datamodule, cfg, q)
            lmbda = run.module.codec.ladder.lmbda(q)
            top1, bpp, est = r[path]["top1"], r["bpp"], r["bpp_est"]
            print(f"{lmbda:.3e}  {m}x{m}     {top1:.4f}  {bpp:.4f}    {est:.4f}    {r['psnr']:.2f}")
    run.module.mosaic = trained


if __name__ == "__main__":
    main(sys.argv[1:])
