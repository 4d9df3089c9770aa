"""Import paper 1's released models as LatentBridge runs (issue: run the paper's own models).

    latentbridge-import nycu d1_3.pth.tar [--out DIR] [--elic ELIC_lambda0.016.pth.tar] [--set key=value ...]

A released file of NYCU-MAPL/BridgingCompressionMLLM (release v1.0: ``d1_1..4``, ``d2_1..4``, ``d3_1..4.pth.tar``)
holds ``{"epoch", "state_dict": ELIC_LLM, "adapter": Linear_Encoder, "optimizer", "lr_scheduler"}`` (REFERENCE.md
6). The import writes a finished run directory (``.hydra/config.yaml``, ``checkpoints/released.ckpt``,
``results.json``) that ``latentbridge-evaluate``, ``latentbridge-serve``, the lmms-eval model and ``reproduce.py``
open like a run trained here:
- the config is ``experiment=paper_d<s>`` at the file's rate point (index k -> lambda 0.004, 0.008, 0.016, 0.032),
  with ``codec.checkpoint`` = the file itself (its ELIC: frozen in d1, fine-tuned in d2 / d3) and the **reference
  pipeline** (``vision.pipeline=reference``: ln_post twice and unclipped resizing, as its ``CLIP_modify``;
  ``loss.similarity=reference`` for d1), so an imported run reproduces the reference exactly and never mixes in our
  own choices (README "Design decisions" says where ours differ);
- the checkpoint holds the released neck (``codecs/published.py``) and, for d2 / d3, the codec, with the signature
  of the scenario it was built for.
The scenario and rate point come from the file name (``d<s>_<k>.pth.tar``) or ``--scenario`` / ``--quality``; with
``--elic`` (Chandelier's ELIC at that rate point, the phase-0 codec) a d1 file's ELIC must equal it, a d3 file's g_s
too, and a d2 / d3 file's codec must differ from it: a d2 file given as d1 is refused, naming the first key.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from latentbridge.core.errors import CheckpointError, ConfigError

SCENARIOS = {"d1": "paper_d1", "d2": "paper_d2", "d3": "paper_d3"}
_NAME = re.compile(r"^(d[123])_([1-4])\.pth(\.tar)?$")


def identify(path: Path, scenario: str | None, quality: int | None) -> tuple[str, int]:
    """Scenario and rate index from the file name, or as given; a contradiction is one line naming the file."""
    m = _NAME.match(path.name)
    named = (m[1], int(m[2])) if m else (None, None)
    for key, given, found in (("--scenario", scenario, named[0]), ("--quality", quality, named[1])):
        if given is not None and found is not None and given != found:
            raise ConfigError(f"{key}: {path} is named as {found}, not {given}")
    scenario, quality = scenario or named[0], quality or named[1]
    if scenario not in SCENARIOS or quality not in (1, 2, 3, 4):
        raise ConfigError(
            f"--scenario/--quality: {path} is not named d<1-3>_<1-4>.pth.tar; give --scenario d1|d2|d3 and "
            "--quality 1-4 (the rate point: lambda 0.004, 0.008, 0.016, 0.032)"
        )
    return scenario, quality


def read_released(path: Path) -> dict[str, Any]:
    """The released file (tensors, dicts, numbers: read with ``weights_only=True``), checked for its two parts."""
    from latentbridge.core.atomic_io import read_checkpoint

    obj = read_checkpoint(path, "released file")
    if (
        not isinstance(obj, dict)
        or not isinstance(obj.get("state_dict"), dict)
        or not isinstance(obj.get("adapter"), dict)
    ):
        keys = sorted(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: not a released file of paper 1 (needs 'state_dict' and 'adapter'; has {keys})")
    return obj


def _first_difference(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> str | None:
    import torch

    for k, v in a.items():
        if k.startswith(prefix) and not k.endswith(("_quantized_cdf", "_offset", "_cdf_length", "scale_table")):
            other = b[k]
            if k.endswith("context_prediction.weight"):  # masked in place by the forward
                mask = a[k.replace("weight", "mask")]
                v, other = v * mask, other * mask
            if not torch.equal(v, other):
                return k
    return None


def check_against_base(codec: Any, base_path: Path, scenario: str, path: Path) -> None:
    """d1: the file's ELIC is the published phase-0 ELIC; d3: its g_s is; d2 / d3: its codec was fine-tuned."""
    from latentbridge.codecs.adapter import build_codec

    base = build_codec(codec.name, arch=codec.arch, checkpoint=str(base_path), lmbda=codec.lmbda)
    ours, theirs = codec.model.state_dict(), base.model.state_dict()
    if scenario == "d1" and (key := _first_difference(ours, theirs)):
        raise CheckpointError(f"{path}: a d1 file's ELIC is the frozen ELIC of --elic {base_path}, but '{key}' "
                              "differs (a d2 / d3 file, or another rate point?)")  # fmt: skip
    if scenario == "d3" and (key := _first_difference(ours, theirs, "g_s.")):
        raise CheckpointError(f"{path}: a d3 file keeps the decoder of --elic {base_path}, but '{key}' differs")
    if scenario in ("d2", "d3") and _first_difference(ours, theirs) is None:
        raise CheckpointError(f"{path}: its ELIC equals --elic {base_path}: a d1 file, not {scenario}")


def import_nycu(
    path: str | Path,
    out: str | Path,
    scenario: str | None = None,
    quality: int | None = None,
    elic: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> Path:
    """Write the run directory of one released file (see the module docstring); returns it."""
    from hydra import compose
    from omegaconf import OmegaConf

    from latentbridge.codecs import published
    from latentbridge.codecs.adapter import ENTROPY_TABLES, build_codec
    from latentbridge.core.atomic_io import atomic_torch_save, atomic_write_bytes, atomic_write_json
    from latentbridge.core.config import hydra_quote
    from latentbridge.core.run_dir import config_file
    from latentbridge.nn.transform_neck import TransformNeck
    from latentbridge.workflows.jobs import hydra_context
    from lightning_modules.bridge import scenario_signature

    path, out = Path(path).absolute(), Path(out).absolute()  # the name as given (a symlink keeps its own)
    if not path.is_file():
        raise CheckpointError(f"released file: {path} does not exist")
    scenario, quality = identify(path, scenario, quality)
    lmbda = published.RELEASED_LAMBDAS[quality]
    released = read_released(path)
    ours = [
        f"experiment={SCENARIOS[scenario]}",
        f"codec.lmbda={lmbda}",
        f"codec.checkpoint={hydra_quote(path)}",
        "vision.pipeline=reference",
        *(["loss.similarity=reference"] if scenario == "d1" else ["scenario.init_from=null"]),
        f"paths.output_dir={hydra_quote(out)}",
        "task_name=imported",
    ]
    mine = {o.split("=", 1)[0] for o in ours}
    clash = [o for o in overrides if o.split("=", 1)[0].lstrip("+") in mine]
    if clash:
        raise ConfigError(f"--set: {clash[0]} is decided by the import (the released file and the reference pipeline)")
    with hydra_context():
        cfg = compose(config_name="train", overrides=[*ours, *overrides])
    # the parts the file holds, checked against our modules (one line naming the first key or shape that differs)
    codec = build_codec(cfg.codec.name, arch=cfg.codec.arch, checkpoint=str(path), lmbda=lmbda)
    grid, vision_width = int(cfg.data.image_size) // codec.stride, _vision_width(cfg)
    neck = TransformNeck(codec.latent_channels, vision_width, vision_width // 64, grid)  # CLIP ViTs: 64 per head
    neck.load_state_dict(published.neck_state(released["adapter"], neck, str(path)))
    if elic is not None:
        check_against_base(codec, Path(elic), scenario, path)
    from hydra.utils import get_class

    scenario_cls = get_class(cfg.scenario._target_)
    state = {f"neck.{k}": v for k, v in neck.state_dict().items()}
    if "codec" in scenario_cls.trainable:
        state |= {f"codec.{k}": v for k, v in codec.state_dict().items() if not k.endswith(ENTROPY_TABLES)}
    signature = scenario_signature(scenario_cls.__name__, codec, str(cfg.vision.model_name), vision_width, (grid, grid),
                                   int(cfg.scenario.skip_blocks), str(cfg.vision.pipeline))  # fmt: skip
    ckpt = out / "checkpoints" / "released.ckpt"
    atomic_torch_save({"state_dict": state, "latentbridge": signature, "epoch": released.get("epoch")}, ckpt)
    atomic_write_bytes(config_file(out), OmegaConf.to_yaml(cfg).encode())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    results = {
        "task_name": "imported",
        "experiment": SCENARIOS[scenario],
        "scenario": scenario_cls.__name__,
        "codec": {"name": cfg.codec.name, "lmbda": lmbda},
        "vision": str(cfg.vision.model_name),
        "imported_from": {
            "file": str(path),
            "sha256": digest,
            "scenario": scenario,
            "quality": quality,
            "epoch": released.get("epoch"),
            "pipeline": "reference",
        },  # fmt: skip
        "metrics": {},
        "best_checkpoint": str(ckpt),
        "last_checkpoint": str(ckpt),
        "run_dir": str(out),
    }
    atomic_write_json(out / "results.json", results)
    return out


def _vision_width(cfg: Any) -> int:
    """The token width of the configured teacher, without building it."""
    import open_clip

    if cfg.vision.get("arch") is not None:
        return int(cfg.vision.arch.vision_cfg.width)
    model_cfg = open_clip.get_model_config(str(cfg.vision.model_name))
    if not model_cfg:
        raise ConfigError(f"vision.model_name: '{cfg.vision.model_name}' is not an open_clip model (the released "
                          "necks were trained for OpenAI's ViT-L/14)")  # fmt: skip
    return int(model_cfg["vision_cfg"]["width"])
