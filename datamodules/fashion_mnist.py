"""Fashion-MNIST from IDX files (Debian's ``dataset-fashion-mnist`` by default; torchvision's download online).

Splits: ``val`` is ``holdout`` images carved from the 60,000 training images by a fixed permutation (checkpoint
selection and any tuning never see test images), ``train`` is the rest, and ``test`` is the official t10k set,
read only by final evaluation (evaluate.py, reproduce.py).
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from datamodules.classification import ClassificationDataModule, LabelledImages
from latentbridge.core.errors import DataError

CLASSNAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
_FILES = {"train": "train", "val": "train", "test": "t10k"}
HOLDOUT_SEED = 20240717  # fixed: the carved validation set never changes with the run's seed


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) -> numpy array; a clear error for a truncated or foreign file."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"data.root: cannot read {path} ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"data.root: {path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise DataError(f"data.root: {path} is truncated ({len(data) - offset} of {int(np.prod(dims))} bytes)")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


class FashionMNISTSplit(LabelledImages):
    classnames = CLASSNAMES

    def __init__(self, root: Path, split: str, holdout: int = 0) -> None:
        prefix = _FILES[split]
        images, labels = (root / f"{prefix}-images-idx3-ubyte", root / f"{prefix}-labels-idx1-ubyte")
        images, labels = (p if p.exists() else p.with_name(p.name + ".gz") for p in (images, labels))
        for p in (images, labels):
            if not p.exists():
                raise DataError(
                    f"data.root: {p} not found (apt-get install dataset-fashion-mnist, or data.download=true)"
                )
        self.images, self.labels = read_idx(images), read_idx(labels)
        if len(self.images) != len(self.labels):
            raise DataError(f"data.root: {images} and {labels} hold different numbers of items")
        if prefix == "train" and (holdout or split == "val"):
            if not 0 < holdout < len(self.labels):
                raise DataError(f"data.holdout: {holdout} is not between 0 and {len(self.labels)} training images")
            order = np.random.default_rng(HOLDOUT_SEED).permutation(len(self.labels))
            keep = np.sort(order[:holdout] if split == "val" else order[holdout:])
            self.images, self.labels = self.images[keep], self.labels[keep]

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int) -> tuple[Any, int]:
        return Image.fromarray(self.images[index], mode="L"), int(self.labels[index])


class FashionMNISTDataModule(ClassificationDataModule):
    """Fashion-MNIST (10 classes, 28x28 grey, converted to RGB and resized to ``image_size``)."""

    def __init__(self, root: str = DEBIAN_ROOT, download: bool = False, holdout: int = 5000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.download = download
        self.holdout = holdout

    def prepare_data(self) -> None:
        if self.download:  # online only: torchvision writes the same IDX file names under root/FashionMNIST/raw
            from torchvision.datasets import FashionMNIST

            for train in (True, False):
                FashionMNIST(str(self.root), train=train, download=True)

    def build_split(self, split: str) -> FashionMNISTSplit:
        root = self.root
        if (root / "FashionMNIST" / "raw").is_dir():
            root = root / "FashionMNIST" / "raw"
        if not root.is_dir():
            raise DataError(f"data.root: {self.root} does not exist (apt-get install dataset-fashion-mnist)")
        return FashionMNISTSplit(root, split, self.holdout)

    def signature(self) -> dict[str, Any]:
        return {**super().signature(), "root": str(self.root.resolve()), "holdout": self.holdout}


__all__ = ["CLASSNAMES", "FashionMNISTDataModule", "read_idx"]
