"""Rate-accuracy bookkeeping of an evaluation (paper 4.2, Fig. 3-4, A.1): per-sample columns gathered across
DDP ranks, then de-duplicated by dataset index (a distributed sampler pads the last batch with repeats), so a
result is the same on one device or many.

Columns, one value per image (NaN: not measured): ``index``, ``label``, ``bytes`` (real bitstream), ``bits_est``
(likelihood estimate; NaN for traditional codecs), ``pixels``, ``psnr``, ``ms_ssim`` (NaN for images of 160 px a
side or less), and per path ``correct_<path>`` (zero-shot top-1) and, when 5-way
1-shot is asked for, ``emb_<path>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import CatMetric

from latentbridge.metrics.few_shot import few_shot_accuracy, sample_groups
from latentbridge.metrics.image_quality import ms_ssim, psnr
from latentbridge.metrics.zero_shot import zero_shot_correct


class RateAccuracy(nn.Module):
    """Accumulates an evaluation's per-sample columns; ``compute`` gives one row of rate, quality and accuracy."""

    def __init__(self, paths: Sequence[str], few_shot_groups: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.paths, self.few_shot_groups, self.seed = tuple(paths), int(few_shot_groups), int(seed)
        names = ["index", "label", "bytes", "bits_est", "pixels", "psnr", "ms_ssim"]
        names += [f"correct_{p}" for p in self.paths]
        if self.few_shot_groups:
            names += [f"emb_{p}" for p in self.paths]
        self.columns = nn.ModuleDict({n: CatMetric(nan_strategy="disable") for n in names})  # NaN = "not measured"

    @torch.no_grad()
    def update(
        self,
        batch: dict[str, Tensor],
        embeddings: dict[str, Tensor],
        text_emb: Tensor,
        nbytes: Sequence[int],
        x_hat: Tensor,
        bits_est: Tensor | None = None,
    ) -> None:
        """One batch: its images and labels, each path's embeddings, the bytes sent per image, the decoded images
        (cropped to the original size) and, for learned codecs, the estimated bits per image."""
        x, labels = batch["image"], batch["label"]
        n = labels.shape[0]
        dev = labels.device
        cols = self.columns
        cols["index"].update(batch["index"].to(dev).float())
        cols["label"].update(labels.float())
        cols["bytes"].update(torch.tensor([float(b) for b in nbytes], device=dev))
        not_measured = torch.full((n,), float("nan"), device=dev)
        cols["bits_est"].update(not_measured if bits_est is None else bits_est.float())
        cols["pixels"].update(torch.full((n,), float(x.shape[-2] * x.shape[-1]), device=dev))
        cols["psnr"].update(psnr(x_hat, x))
        quality = ms_ssim(x_hat, x)
        cols["ms_ssim"].update(not_measured if quality is None else quality.float())
        for path, emb in embeddings.items():
            cols[f"correct_{path}"].update(zero_shot_correct(emb, text_emb, labels))
            if self.few_shot_groups:
                cols[f"emb_{path}"].update(emb.float())

    def _column(self, name: str) -> Tensor:
        value = self.columns[name].compute()
        return value if isinstance(value, Tensor) else torch.as_tensor(value)

    def compute(self) -> dict[str, Any]:
        """The row: real and estimated bpp, PSNR, MS-SSIM, images and, per path, top-1 and 5-way 1-shot accuracy
        (``few_shot_error`` says why 5-way 1-shot is missing when groups cannot be drawn)."""
        index = self._column("index").long()
        first = {}
        for pos, i in enumerate(index.tolist()):  # one row per dataset item, in dataset order
            first.setdefault(i, pos)
        order = torch.tensor([first[i] for i in sorted(first)], dtype=torch.long, device=index.device)
        col = {n: self._column(n)[order] for n in self.columns}
        pixels = float(col["pixels"].sum())
        bits_est, quality = col["bits_est"], col["ms_ssim"]
        out: dict[str, Any] = {
            "bpp": 8 * float(col["bytes"].sum()) / pixels,
            "bpp_est": None if torch.isnan(bits_est).any() else float(bits_est.sum()) / pixels,
            "psnr": float(col["psnr"].mean()),
            "ms_ssim": None if torch.isnan(quality).all() else float(quality.nanmean()),
            "images": int(order.numel()),
        }
        labels = col["label"].long()
        groups, error = None, None
        if self.few_shot_groups:
            try:
                groups = sample_groups(labels.cpu().numpy(), self.few_shot_groups, seed=self.seed)
            except ValueError as e:
                error = str(e)
        for path in self.paths:
            out[path] = {
                "top1": float(col[f"correct_{path}"].mean()),
                "few_shot": few_shot_accuracy(col[f"emb_{path}"].cpu(), labels.cpu(), groups)
                if groups is not None
                else None,
            }
        if error:
            out["few_shot_error"] = error
        # per image, in dataset order: what paired statistics need (paper 2's findings bootstrap over images)
        out["per_image"] = {
            "index": index[order].tolist(),
            "bytes": col["bytes"].tolist(),
            **{f"correct_{p}": col[f"correct_{p}"].tolist() for p in self.paths},
        }
        return out

    def reset(self) -> None:
        for metric in self.columns.values():
            metric.reset()
