"""Synthetic files in the exact formats of paper 1's published models (REFERENCE.md 6), from the manifests of the
reference fixtures (``tests/fixtures/reference/``: the reference code's own parameter names and shapes): random
weights, real keys and shapes. Chandelier's ELIC: ``{"epoch", "state_dict"}``; a released d<s>_<k> file:
``{"epoch", "state_dict": ELIC_LLM (DataParallel's "module." prefix), "adapter": Linear_Encoder, "optimizer",
"lr_scheduler"}``. A d1 file carries the base ELIC unchanged, d3 a fine-tuned encoder side with the base g_s, d2 a
fine-tuned codec."""

from __future__ import annotations

from pathlib import Path

import torch

from helpers.seeded import seeded_state

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reference"


def _manifests() -> tuple[list, list]:
    elic = torch.load(FIXTURES / "elic_chandelier.pt", weights_only=True)["manifest"]
    neck = torch.load(FIXTURES / "neck_nycu.pt", weights_only=True)["neck_manifest"]
    return elic, neck


def write_release(folder: Path, qualities: tuple[int, ...] = (1,), scenarios: tuple[str, ...] = ("d1", "d2", "d3"),
                  seed: int = 100) -> dict[str, Path]:  # fmt: skip
    """``elic_lambda<l>.pth.tar`` (Chandelier) and ``d<s>_<k>.pth.tar`` (released) per quality k; their paths."""
    from latentbridge.codecs.published import RELEASED_LAMBDAS

    elic_m, neck_m = _manifests()
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for k in qualities:
        base = seeded_state(elic_m, seed + k)
        paths[f"elic{k}"] = folder / f"elic_lambda{RELEASED_LAMBDAS[k]}.pth.tar"
        torch.save({"epoch": 3999, "state_dict": base}, paths[f"elic{k}"])
        for s in scenarios:
            codec = dict(base)
            if s in ("d2", "d3"):  # phase 2 fine-tunes the codec (d3: all but the decoder)
                for name, v in codec.items():
                    if not (s == "d3" and name.startswith("g_s.")):
                        codec[name] = v + 1e-3 * torch.randn(v.shape, generator=torch.Generator().manual_seed(7))
            adapter = seeded_state(neck_m, seed + 10 * k + {"d1": 1, "d2": 2, "d3": 3}[s])
            paths[f"{s}_{k}"] = folder / f"{s}_{k}.pth.tar"
            torch.save({"epoch": 59, "state_dict": {f"module.{n}": v for n, v in codec.items()}, "adapter": adapter,
                        "optimizer": {"state": {}, "param_groups": []}, "lr_scheduler": {"milestones": {20: 1}}},
                       paths[f"{s}_{k}"])  # fmt: skip
    return paths
