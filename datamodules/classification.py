"""The shared datamodule: a labelled image dataset -> batches of codec input, teacher input and label.

Each dataset subclass only says how to read one split and what its class names are. Unreadable images are
skipped: the batch carries how many were dropped, and the LightningModule logs the running count.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from datamodules.sampler import train_loader
from datamodules.transforms import codec_transform, teacher_transform
from latentbridge.core.images import UNREADABLE

log = logging.getLogger(__name__)

# Templates for the mini setup's class prompts (ImageNet uses open_clip's 80 OpenAI templates).
MINI_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "a photo of the {}.", "an image of a {}.")


class LabelledImages(Dataset):
    """Base for a split: ``load(i) -> (PIL image, label)``; ``describe(i)`` names the source of item i."""

    classnames: Sequence[str]

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, index: int) -> tuple[Any, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self, index: int) -> str:
        return f"item {index}"


class _Transformed(Dataset):
    """Applies the codec and teacher transforms; an unreadable image becomes ``None`` (dropped in collate)."""

    def __init__(self, base: LabelledImages, codec_tf: Any, teacher_tf: Any) -> None:
        self.base, self.codec_tf, self.teacher_tf = base, codec_tf, teacher_tf

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        try:
            img, label = self.base.load(index)
            img.load()
        except UNREADABLE as e:  # truncated / corrupt files, decompression bombs
            log.warning("skipping unreadable image %s: %s", self.base.describe(index), e)
            return None
        return {"image": self.codec_tf(img), "teacher_image": self.teacher_tf(img), "label": label, "index": index}


def collate_skipping(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Stack the readable items; ``num_skipped`` counts the rest."""
    good = [it for it in items if it is not None]
    batch: dict[str, Any] = {"num_skipped": len(items) - len(good)}  # a Python int: reading it never syncs a device
    if good:
        batch.update(torch.utils.data.default_collate(good))
    return batch


class ClassificationDataModule(L.LightningDataModule):
    """Train / val splits of a labelled dataset, transformed for the codec and the teacher."""

    def __init__(
        self,
        image_size: int = 256,
        teacher_image_size: int = 224,
        teacher_mean: Sequence[float] = (0.48145466, 0.4578275, 0.40821073),
        teacher_std: Sequence[float] = (0.26862954, 0.26130258, 0.27577711),
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        train_subset: int | None = None,
        val_subset: int | None = None,
        test_subset: int | None = None,
        templates: Sequence[str] | None = None,
        seed: int = 0,
        cache: bool = False,
        cache_dir: str | None = None,
        cache_dtype: str = "float32",
        cache_shard_size: int = 4096,
        cache_in_memory: str | bool = "auto",
        cache_memory_gb: float = 4.0,
    ) -> None:
        """``cache*``: the latent cache (``datamodules/latent_cache.py``), applied by the training workflow."""
        super().__init__()
        self.cache, self.cache_dir, self.cache_dtype, self.cache_shard_size = (
            cache,
            cache_dir,
            cache_dtype,
            cache_shard_size,
        )
        self.cache_in_memory, self.cache_memory_gb = cache_in_memory, cache_memory_gb
        self.image_size = image_size
        self.codec_tf = codec_transform(image_size)
        self.teacher_tf = teacher_transform(teacher_image_size, teacher_mean, teacher_std)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.train_subset, self.val_subset, self.test_subset = train_subset, val_subset, test_subset
        self.teacher_image_size, self.teacher_mean, self.teacher_std = (
            teacher_image_size,
            list(teacher_mean),
            list(teacher_std),
        )
        self._templates = tuple(templates) if templates else None
        self.seed = seed
        self._splits: dict[str, LabelledImages] = {}

    # -- what a subclass provides -------------------------------------------------------------------------
    def build_split(self, split: str) -> LabelledImages:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def templates(self) -> tuple[str, ...]:
        return self._templates or MINI_TEMPLATES

    # -- shared -------------------------------------------------------------------------------------------
    def split(self, name: str) -> LabelledImages:
        if name not in self._splits:
            self._splits[name] = self.build_split(name)
        return self._splits[name]

    @property
    def classnames(self) -> list[str]:
        return list(self.split("val").classnames)

    def _dataset(self, name: str, subset: int | None) -> Dataset:
        ds: Dataset = _Transformed(self.split(name), self.codec_tf, self.teacher_tf)
        if subset is not None and subset < len(ds):
            g = torch.Generator().manual_seed(self.seed)
            ds = Subset(ds, torch.randperm(len(ds), generator=g)[:subset].tolist())
        return ds

    def _loader(self, ds: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate_skipping,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=shuffle,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled by (seed, epoch) alone, split between the trainer's ranks (``datamodules/sampler.py``)."""
        ds = self._dataset("train", self.train_subset)
        return train_loader(ds, self.batch_size, self.trainer, self.seed, self.num_workers, collate_skipping)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("val", self.val_subset), self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The final evaluation's split (``test``; for ImageNet its val set, as the paper evaluates)."""
        return self._loader(self._dataset("test", self.test_subset), self.eval_batch_size, shuffle=False)

    def signature(self) -> dict[str, Any]:
        """What the images of this datamodule depend on (a cache built from it is valid for nothing else)."""
        return {
            "dataset": type(self).__name__,
            "image_size": self.image_size,
            "teacher_image_size": self.teacher_image_size,
            "teacher_mean": self.teacher_mean,
            "teacher_std": self.teacher_std,
            "seed": self.seed,
        }

    def split_dataloader(self, split: str, subset: int | None = None) -> DataLoader:
        """Every image of a split (a seeded ``subset`` of it), in order, in evaluation batches: for diagnostics that
        read the training split the way validation reads its own (nothing shuffled, nothing dropped)."""
        return self._loader(self._dataset(split, subset), self.eval_batch_size, shuffle=False)
