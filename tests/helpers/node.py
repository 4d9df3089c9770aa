"""One training process of the multi-node test: ``python tests/helpers/node.py <train.py overrides>``.

With ``LB_FIXED_NOISE=1``, compressai's additive quantization noise (the one random draw of a phase-2 step) is a
fixed, smooth function of the value it perturbs (within +-0.5, like the noise), so a step on 2 processes and a step
on 1 process with the same global batch draw the same noise for every sample and can be compared exactly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def fixed_noise() -> None:
    import compressai.entropy_models as em

    quantize = em.EntropyModel.quantize

    def patched(self, inputs, mode, means=None):  # noqa: ANN001, ANN202
        if mode != "noise":
            return quantize(self, inputs, mode, means)
        return inputs + 0.5 * torch.sin(7.0 * inputs.detach())  # smooth: a last-bit difference stays one

    em.EntropyModel.quantize = patched


def main(overrides: list[str]) -> None:
    from hydra import compose, initialize_config_dir

    from latentbridge.core.config import register_resolvers
    from latentbridge.workflows.train import run

    if os.environ.get("LB_FIXED_NOISE"):
        fixed_noise()
    register_resolvers()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        run(compose("train", overrides=overrides))


if __name__ == "__main__":
    main(sys.argv[1:])
