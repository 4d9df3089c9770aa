"""Folder datasets: ImageNet layout (``root/{train,val}/<synset>/*.JPEG``) and a generic class-per-folder layout
with a class-name file."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from datamodules.classification import ClassificationDataModule, LabelledImages
from latentbridge.core.errors import DataError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


class FolderSplit(LabelledImages):
    """``root/<class dir>/<image>``; ``classnames[i]`` names the i-th class dir in sorted order."""

    def __init__(self, root: Path, class_dirs: Sequence[str], classnames: Sequence[str]) -> None:
        self.root = root
        self.classnames = tuple(classnames)
        self.samples: list[tuple[str, int]] = []
        for label, d in enumerate(class_dirs):
            folder = root / d
            if not folder.is_dir():
                continue
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS:
                    self.samples.append((entry.path, label))
        if not self.samples:
            raise DataError(f"data.root: no images under {root} (expected {root}/<class>/<image>)")

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        return Image.open(path), label

    def describe(self, index: int) -> str:
        return self.samples[index][0]


def _class_dirs(split_root: Path) -> list[str]:
    if not split_root.is_dir():
        raise DataError(f"data.root: {split_root} does not exist")
    dirs = sorted(e.name for e in os.scandir(split_root) if e.is_dir())
    if not dirs:
        raise DataError(f"data.root: {split_root} has no class folders")
    return dirs


class ImageFolderDataModule(ClassificationDataModule):
    """Generic: ``root/{train,val}/<class dir>/``; class names from ``classnames_file`` (one ``dir<TAB>name``
    per line, or one name per line in sorted-dir order), else the folder names themselves."""

    def __init__(
        self, root: str, classnames_file: str | None = None, splits: dict[str, str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.classnames_file = Path(classnames_file) if classnames_file else None
        self.split_dirs = dict(splits or {"train": "train", "val": "val", "test": "val"})

    def names_for(self, dirs: list[str]) -> list[str]:
        if self.classnames_file is None:
            return [d.replace("_", " ") for d in dirs]
        if not self.classnames_file.is_file():
            raise DataError(f"data.classnames_file: {self.classnames_file} does not exist")
        lines = [ln.rstrip("\n") for ln in self.classnames_file.read_text().splitlines() if ln.strip()]
        if all("\t" in ln for ln in lines):
            table = dict(ln.split("\t", 1) for ln in lines)
            missing = [d for d in dirs if d not in table]
            if missing:
                raise DataError(f"data.classnames_file: {self.classnames_file} has no name for folder '{missing[0]}'")
            return [table[d] for d in dirs]
        if len(lines) != len(dirs):
            raise DataError(
                f"data.classnames_file: {self.classnames_file} has {len(lines)} names for {len(dirs)} class folders"
            )
        return lines

    def build_split(self, split: str) -> FolderSplit:
        if not self.root.is_dir():
            raise DataError(f"data.root: {self.root} does not exist")
        split_root = self.root / self.split_dirs[split]
        dirs = self._reference_dirs()
        return FolderSplit(split_root, dirs, self.names_for(dirs))

    def _reference_dirs(self) -> list[str]:
        """Class folders are indexed by the train split (falls back to val) so labels agree across splits."""
        for key in ("train", "val"):
            p = self.root / self.split_dirs[key]
            if p.is_dir():
                return _class_dirs(p)
        raise DataError(f"data.root: {self.root} has neither {self.split_dirs['train']}/ nor {self.split_dirs['val']}/")


class ImageNetDataModule(ImageFolderDataModule):
    """ImageNet-1k in synset folders: class names are open_clip's ImageNet class names, prompts its 80 templates.

    Sorted synset ids are the standard class order, which open_clip's ``IMAGENET_CLASSNAMES`` follows.
    """

    def __init__(self, root: str, **kwargs: Any) -> None:
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        kwargs.setdefault("templates", OPENAI_IMAGENET_TEMPLATES)
        super().__init__(root=root, **kwargs)

    def names_for(self, dirs: list[str]) -> list[str]:
        if self.classnames_file is not None:
            return super().names_for(dirs)
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        if len(dirs) != len(IMAGENET_CLASSNAMES) or not all(d.startswith("n") and d[1:].isdigit() for d in dirs):
            raise DataError(
                f"data.root: {self.root} does not hold the 1000 ImageNet synset folders (found {len(dirs)}); "
                "use data=image_folder with data.classnames_file for a subset"
            )
        return list(IMAGENET_CLASSNAMES)
