"""Paper 2's semantic pre-editing network (Li et al. 2024: "a pre-editing module ... at the edge"; design
``paper2.md`` 2.2). The abstract does not describe it; this architecture is our decision (README, "Paper 2").

P(x, q) = clamp(x + r(x, q), 0, 1): a residual U-Net with 3 scales (c, 2c, 4c channels), two [3x3 conv, GroupNorm,
SiLU] per block, stride-2 downsampling, bilinear upsampling + 3x3 conv, skip concatenation. Every block is
FiLM-modulated by the rate point q (one editor serves every rate and must edit differently at each). The head and
the FiLM generators start at zero, so P(x, q) = x exactly at initialisation. No BatchNorm (batch-1 inference, DDP);
any H x W (replicate-padded to a multiple of 4 inside, cropped back). Guidance by the large model's tokens enters
through the training loss only: no vision model runs at the edge.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentbridge.core.digest import state_digest
from latentbridge.core.errors import CheckpointError

EDITOR_FORMAT = "latentbridge-preeditor/1"


class FiLM(nn.Module):
    """(gamma, beta) = MLP(q) per channel; starts as the identity (gamma = 1, beta = 0)."""

    def __init__(self, channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, 2 * channels))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, h: Tensor, q: Tensor) -> Tensor:
        gamma, beta = self.mlp(q.view(-1, 1).to(h.dtype)).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return h * (1 + gamma) + beta


class Block(nn.Module):
    """Two [3x3 conv, GroupNorm(8), SiLU], then FiLM(q)."""

    def __init__(self, cin: int, cout: int, film: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1),
            nn.GroupNorm(min(8, cout), cout),
            nn.SiLU(),
            nn.Conv2d(cout, cout, 3, padding=1),
            nn.GroupNorm(min(8, cout), cout),
            nn.SiLU(),
        )
        self.film = FiLM(cout) if film else None

    def forward(self, h: Tensor, q: Tensor) -> Tensor:
        h = self.body(h)
        return self.film(h, q) if self.film is not None else h


class PreEditor(nn.Module):
    """x (B, 3, H, W) in [0, 1] and the rate point q (scalar or (B,)) -> the edited image, same size, in [0, 1]."""

    levels = 3

    def __init__(self, width: int = 16, rate_conditioning: str = "film") -> None:
        super().__init__()
        if rate_conditioning not in ("film", "none"):
            raise ValueError(f"preedit.rate_conditioning: '{rate_conditioning}' is not film or none")
        if width < 1:
            raise ValueError(f"preedit.width: {width} must be positive")
        film = rate_conditioning == "film"
        self.width, self.rate_conditioning = int(width), rate_conditioning
        c = [width * 2**i for i in range(self.levels)]
        self.enc = nn.ModuleList([Block(3, c[0], film), Block(c[0], c[1], film), Block(c[1], c[2], film)])
        self.down = nn.ModuleList(nn.Conv2d(c[i], c[i], 3, stride=2, padding=1) for i in range(self.levels - 1))
        self.up = nn.ModuleList(nn.Conv2d(c[i + 1], c[i], 3, padding=1) for i in reversed(range(self.levels - 1)))
        self.dec = nn.ModuleList(Block(2 * c[i], c[i], film) for i in reversed(range(self.levels - 1)))
        self.head = nn.Conv2d(c[0], 3, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def residual(self, x: Tensor, q: Tensor) -> Tensor:
        """r(x, q) on an image whose sides are multiples of 4."""
        skips, h = [], x
        for i, block in enumerate(self.enc):
            h = block(h, q)
            if i < len(self.down):
                skips.append(h)
                h = self.down[i](h)
        for up, block in zip(self.up, self.dec, strict=True):
            skip = skips.pop()
            h = up(F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False))
            h = block(torch.cat([skip, h], dim=1), q)
        return self.head(h)

    def forward(self, x: Tensor, q: float | Tensor) -> Tensor:
        q = torch.as_tensor(q, dtype=x.dtype, device=x.device).expand(x.shape[0])
        h, w = x.shape[-2:]
        m = 2 ** (self.levels - 1)
        padded = F.pad(x, (0, (-w) % m, 0, (-h) % m), mode="replicate") if h % m or w % m else x
        return (x + self.residual(padded, q)[..., :h, :w]).clamp(0, 1)


class IdentityEditor(nn.Module):
    """``preedit=none``: the "pre-editing off" ablation on the same code path (no parameters)."""

    width = 0
    rate_conditioning = "none"

    def forward(self, x: Tensor, q: float | Tensor) -> Tensor:
        return x


def codec_identity(codec: Any) -> dict[str, Any]:
    """What an editor was trained in front of: the codec's name, architecture, ladder and weights."""
    ladder = codec.ladder.as_dict() if getattr(codec, "ladder", None) else None
    return {"name": codec.name, "arch": dict(codec.arch), "ladder": ladder, "weights": state_digest(codec.model)}


def editor_checkpoint(editor: PreEditor, codec: Any) -> dict[str, Any]:
    """The stored pre-editor: its settings, weights and the codec it was trained with."""
    return {
        "format": EDITOR_FORMAT,
        "width": editor.width,
        "rate_conditioning": editor.rate_conditioning,
        "codec": codec_identity(codec),
        "state_dict": editor.state_dict(),
    }


def load_editor(obj: Any, codec: Any, source: str) -> PreEditor:
    """A pre-editor from ``editor_checkpoint`` output, refused (one line naming ``source``) unless it was trained in
    front of exactly this codec."""
    if not (isinstance(obj, dict) and obj.get("format") == EDITOR_FORMAT):
        raise CheckpointError(f"{source}: holds no pre-editor (export a paper-2 run: experiment=mini_p2)")
    theirs, ours = obj["codec"], codec_identity(codec)
    for key in ("name", "arch", "ladder", "weights"):
        if theirs.get(key) != ours[key]:
            raise CheckpointError(
                f"{source}: the pre-editor was trained with codec {key}={theirs.get(key)}, this codec has {ours[key]}"
            )
    editor = PreEditor(int(obj["width"]), str(obj["rate_conditioning"]))
    try:
        editor.load_state_dict(obj["state_dict"])
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(
            f"{source}: pre-editor weights do not fit width {obj['width']} ({type(e).__name__})"
        ) from None
    return editor.eval()


__all__ = ["FiLM", "IdentityEditor", "PreEditor", "editor_checkpoint", "load_editor"]
