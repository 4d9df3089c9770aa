"""Complexity report (paper 4.4, Table 3) for any configuration: params and kMAC/pixel of the server-side parts.

    latentbridge-complexity                                      # the mini setup
    latentbridge-complexity experiment=paper_d1 codec.checkpoint=null vision.pretrained=null   # Table 3, offline

Rows: the transform-neck (neck path), the codec decoder g_s and the first k blocks of the vision encoder with
its patch embedding (what the Reconstruction path runs and the neck path skips). Weights do not change the
counts, so random initialisation is enough. Writes ``complexity.json`` in the run directory and prints a table.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from latentbridge.core.atomic_io import atomic_write_json
from latentbridge.metrics.macs import ComponentCost, cost
from latentbridge.runs import build_scenario

PAPER_TABLE3 = {
    "transform-neck": (13.19, 52.795),
    "codec decoder g_s": (7.34, 112.00),
    "encoder patch embedding + first k blocks": (25.78, 70.24),
    "post-processing network": (31.04, 835.72),
}


def complexity_report(cfg: DictConfig) -> list[ComponentCost]:
    """Build the scenario's parts (random weights are fine) and count each server-side component."""
    module = build_scenario(cfg)
    size, k = int(cfg.data.image_size), module.skip_blocks
    pixels = size * size
    x = torch.rand(1, 3, size, size)
    if hasattr(module, "editor"):
        return edge_and_server(module, x)
    rate = getattr(module, "rates", (None,))[0]  # one neck for every rate: counted at its lowest rate (FiLM included)
    codec = module.coder(rate)[0] if rate is not None else module.codec
    with torch.no_grad():
        y_hat = module.latent_at(x, rate)[0] if rate is not None else codec.latent(x).y_hat
    vision = module.vision
    image = vision.preprocess(x)
    rows = []
    if module.neck is not None:
        neck = module.neck if rate is None else (lambda y: module.neck(y, rate))
        rows.append(cost("transform-neck", [module.neck], neck, y_hat, pixels=pixels))
    rows.append(cost("codec decoder g_s", [codec.model.g_s], codec.synthesize, y_hat, pixels=pixels))
    post = getattr(module, "post", None)
    if post is not None:
        rows.append(cost("post-processing network", [post], post.eval(), x, pixels=pixels))
    k = k or 2  # the blocks the neck path skips (Table 3 counts 2)
    prefix = lambda im: vision.run_blocks(vision.embed(im), 0, k)  # noqa: E731
    used = used_parameters(prefix, image, vision.visual)
    rows.append(cost("encoder patch embedding + first k blocks", [], prefix, image, pixels=pixels, extra_params=used))
    return rows


def used_parameters(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, module: torch.nn.Module) -> int:
    """The parameters of ``module`` that ``fn(x)`` depends on (those its output has a gradient for): the skipped
    prefix of any encoder (a ViT's patch embedding and first k blocks, a ConvNeXt's stem, blocks and downsamplings)."""
    params = [p for p in module.parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            grads = torch.autograd.grad(fn(x).float().sum(), params, allow_unused=True)
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    return sum(p.numel() for p, g in zip(params, grads) if g is not None)


def edge_and_server(module: torch.nn.Module, x: torch.Tensor) -> list[ComponentCost]:
    """Paper 2 (pixel path): the edge runs the pre-editor and the codec's encoder, the server the decoder (then the
    large model's own vision tower, unchanged)."""
    pixels = x.shape[-2] * x.shape[-1]
    codec, gain = module.codec, module.codec.ladder.gain(0.5)
    with torch.no_grad():
        y_hat = codec.latent(x, gain).y_hat
    rows = []
    if list(module.editor.parameters()):
        rows.append(cost("pre-editor (edge)", [module.editor], lambda im: module.editor(im, 0.5), x, pixels=pixels))
    rows.append(cost("codec encoder g_a (edge)", [codec.model.g_a], codec.model.g_a, x, pixels=pixels))
    rows.append(cost("codec decoder g_s (server)", [codec.model.g_s], codec.synthesize, y_hat, pixels=pixels))
    return rows


def complexity(cfg: DictConfig) -> list[ComponentCost]:
    """Count, print the table (with the paper's Table 3 beside it for paper presets), write complexity.json."""
    rows = complexity_report(cfg)
    # Table 3 beside the presets it describes (ELIC into OpenAI's ViT-L/14), not beside paper 4.6's other encoders
    # and codecs
    paper = str(cfg.get("experiment_name") or "").startswith("paper_") and "ViT-L-14" in str(cfg.vision.model_name)
    paper = paper and str(cfg.codec.name).startswith("elic")
    where = f"k={cfg.scenario.skip_blocks}" if "skip_blocks" in cfg.scenario else "pixel path"
    table = Table(
        title=f"complexity at {cfg.data.image_size}x{cfg.data.image_size} ({cfg.codec.name}, "
        f"{cfg.vision.model_name}, {where})"
    )
    for col in ("component", "params (M)", "GMAC", "kMAC/pixel") + (("paper Table 3",) if paper else ()):
        table.add_column(col, justify="left" if col == "component" else "right")
    for r in rows:
        ref = PAPER_TABLE3.get(r.component)
        table.add_row(
            r.component,
            f"{r.params / 1e6:.2f}",
            f"{r.macs / 1e9:.3f}",
            f"{r.kmac_per_pixel:.3f}",
            *((f"{ref[0]:.2f}M / {ref[1]:.3f}" if ref else "",) if paper else ()),
        )
    Console().print(table)
    macs = {r.component: r.macs for r in rows}
    if "pre-editor (edge)" in macs:
        print(f"pre-editor / codec encoder MACs: {macs['pre-editor (edge)'] / macs['codec encoder g_a (edge)']:.2f}x")
    out = Path(cfg.paths.output_dir) / "complexity.json"
    atomic_write_json(out, {"image_size": cfg.data.image_size, "rows": [r.as_dict() for r in rows]})
    print(f"complexity: {out}")
    return rows
