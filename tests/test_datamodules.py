import gzip

import numpy as np
import pytest
import torch
from helpers.config import FMNIST, needs_fmnist
from helpers.images import png_claiming
from PIL import Image

from datamodules import FashionMNISTDataModule, ImageFolderDataModule, ImageNetDataModule, SyntheticDataModule
from datamodules.classification import collate_skipping
from datamodules.fashion_mnist import CLASSNAMES, read_idx
from latentbridge.core.errors import DataError

KW = {"image_size": 64, "teacher_image_size": 32, "batch_size": 4}


@needs_fmnist
def test_fashion_mnist_reads_the_debian_idx_files():
    dm = FashionMNISTDataModule(root=str(FMNIST), **KW)
    assert len(dm.split("train")) == 55_000 and len(dm.split("val")) == 5_000 and len(dm.split("test")) == 10_000
    assert dm.classnames == list(CLASSNAMES)
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["teacher_image"].shape == (4, 3, 32, 32)
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    # grey converted to RGB: the three channels are equal
    assert torch.equal(batch["image"][:, 0], batch["image"][:, 1])
    # the first test label of Fashion-MNIST is 9 (ankle boot)
    assert batch["label"][0].item() == 9 and batch["num_skipped"] == 0


@needs_fmnist
def test_fashion_mnist_validation_is_carved_from_the_training_split():
    """Validation never sees a test image: train and val partition the 60,000 training images, always the same way."""
    dm, again = FashionMNISTDataModule(root=str(FMNIST), seed=1, **KW), FashionMNISTDataModule(root=str(FMNIST), **KW)
    full = read_idx(FMNIST / "train-images-idx3-ubyte.gz")
    train, val = dm.split("train").images, dm.split("val").images
    assert len(train) + len(val) == len(full)
    rows = {r.tobytes() for r in full.reshape(len(full), -1)}
    assert all(r.tobytes() in rows for r in val.reshape(len(val), -1)[:200])
    assert np.array_equal(val, again.split("val").images)  # independent of the run's seed
    assert not np.array_equal(val[:100], read_idx(FMNIST / "t10k-images-idx3-ubyte.gz")[:100])
    with pytest.raises(DataError, match="data.holdout: 0 is not between"):
        FashionMNISTDataModule(root=str(FMNIST), holdout=0, **KW).split("val")


def test_missing_root_names_the_key(tmp_path):
    with pytest.raises(DataError, match=f"data.root: {tmp_path / 'nope'} does not exist"):
        FashionMNISTDataModule(root=str(tmp_path / "nope"), **KW).split("train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz not found"):
        FashionMNISTDataModule(root=str(tmp_path / "empty"), **KW).split("train")


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    header = bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    path = tmp_path / "x-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(header + b"\0" * 100)
    with pytest.raises(DataError, match="is truncated"):
        read_idx(path)
    path.write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(path)


def _folder(tmp_path):
    root = tmp_path / "imgs"
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / "val/cat/rgb.png")
    Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(root / "val/cat/grey.png")
    Image.fromarray(rng.integers(0, 255, (40, 50, 4), dtype=np.uint8), "RGBA").save(root / "val/dog/rgba.png")
    Image.fromarray(rng.integers(0, 65535, (40, 50), dtype=np.uint16)).save(root / "val/dog/deep.png")
    full = (root / "val/dog/rgba.png").read_bytes()
    (root / "val/dog/truncated.png").write_bytes(full[: len(full) // 2])
    (root / "val/dog/notes.txt").write_text("not an image")
    png_claiming(root / "val/dog/bomb.png", 20000, 20000)  # Pillow's decompression bomb: skipped and counted
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / "train/dog/a.jpg")
    return root


def test_image_folder_converts_grey_rgba_16bit_and_skips_unreadable_with_a_count(tmp_path, caplog):
    root = _folder(tmp_path)
    dm = ImageFolderDataModule(root=str(root), **{**KW, "batch_size": 8})
    assert dm.classnames == ["cat", "dog"]
    assert len(dm.split("val")) == 6  # notes.txt is not an image file
    with caplog.at_level("WARNING"):
        batch = next(iter(dm.val_dataloader()))
    assert batch["num_skipped"] == 2
    assert batch["image"].shape == (4, 3, 64, 64)
    assert batch["label"].tolist() == [0, 0, 1, 1]
    assert "truncated.png" in caplog.text and "bomb.png" in caplog.text


def test_all_unreadable_batch_carries_only_the_count():
    assert collate_skipping([None, None]) == {"num_skipped": 2}


def test_classnames_file(tmp_path):
    root = _folder(tmp_path)
    names = tmp_path / "names.tsv"
    names.write_text("cat\ta small cat\ndog\ta big dog\n")
    assert ImageFolderDataModule(root=str(root), classnames_file=str(names), **KW).classnames == [
        "a small cat",
        "a big dog",
    ]
    names.write_text("only one\n")
    with pytest.raises(DataError, match="has 1 names for 2 class folders"):
        _ = ImageFolderDataModule(root=str(root), classnames_file=str(names), **KW).classnames


def test_empty_and_missing_folders_name_the_key(tmp_path):
    (tmp_path / "e" / "val" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no images under"):
        ImageFolderDataModule(root=str(tmp_path / "e"), **KW).split("val")
    with pytest.raises(DataError, match="data.root: .* does not exist"):
        ImageFolderDataModule(root=str(tmp_path / "missing"), **KW).split("val")


def test_imagenet_needs_the_1000_synsets(tmp_path):
    root = _folder(tmp_path)
    with pytest.raises(DataError, match="1000 ImageNet synset folders"):
        _ = ImageNetDataModule(root=str(root), **KW).classnames


def test_synthetic_is_deterministic():
    a = next(iter(SyntheticDataModule(**KW).val_dataloader()))
    b = next(iter(SyntheticDataModule(**KW).val_dataloader()))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_split_dataloader_reads_every_image_of_a_split_in_order():
    """Diagnostics read the training split like validation: nothing shuffled, nothing dropped (the training loader
    drops an incomplete last batch, here all of it)."""
    dm = SyntheticDataModule(train_size=50, val_size=8, batch_size=64, eval_batch_size=16, image_size=64,
                             teacher_image_size=64, teacher_mean=[0.5] * 3, teacher_std=[0.5] * 3)  # fmt: skip
    assert len(list(dm.train_dataloader())) == 0
    batches = list(dm.split_dataloader("train"))
    assert [b["index"].tolist() for b in batches] == [list(range(i, min(i + 16, 50))) for i in range(0, 50, 16)]
    assert [len(b["index"]) for b in dm.split_dataloader("train", subset=20)] == [16, 4]
