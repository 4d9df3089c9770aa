"""A small synthetic labelled dataset for tests: coloured squares on noise (class = colour)."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from datamodules.classification import ClassificationDataModule, LabelledImages

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}


class SyntheticSplit(LabelledImages):
    classnames = tuple(f"{c} square" for c in COLOURS)

    def __init__(self, size: int, length: int, seed: int) -> None:
        self.size, self.length, self.seed = size, length, seed

    def __len__(self) -> int:
        return self.length

    def load(self, index: int) -> tuple[Any, int]:
        rng = np.random.default_rng(self.seed * 1_000_003 + index)
        label = int(rng.integers(len(COLOURS)))
        img = rng.integers(0, 80, (self.size, self.size, 3), dtype=np.uint8)
        side = int(rng.integers(self.size // 3, self.size // 2))
        top, left = rng.integers(0, self.size - side, 2)
        img[top : top + side, left : left + side] = list(COLOURS.values())[label]
        return Image.fromarray(img), label


class SyntheticDataModule(ClassificationDataModule):
    """Deterministic coloured squares; ``train_size`` / ``val_size`` images of ``raw_size`` pixels."""

    def __init__(self, train_size: int = 64, val_size: int = 32, raw_size: int = 48, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sizes = {"train": train_size, "val": val_size, "test": val_size}
        self.raw_size = raw_size

    def build_split(self, split: str) -> SyntheticSplit:
        return SyntheticSplit(self.raw_size, self.sizes[split], seed={"train": 1, "val": 2, "test": 2}[split])
