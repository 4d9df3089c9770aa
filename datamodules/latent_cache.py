"""The latent cache: per image, what a frozen codec and a frozen teacher give, computed once (issue: fast training).

Paper preprocessing is deterministic (Resize + CenterCrop), so while the codec and the teacher are frozen (d1, the
skip and loss ablations, Post-processing) every epoch recomputes the same coded latent y_hat and the same target
C(x). The cache stores them once, per image: ``y_hat`` (``dtype``), ``target`` = C(x), label and dataset index;
for validation also the constant paths (Reconstruction embedding, likelihood bits, PSNR), so validation runs only
the method's path each epoch; with token distillation the teacher's tokens after block k.

Storage is litdata's (``BinaryWriter`` chunks, read by index through ``StreamingDataset``, which also reads them
from object storage). Loading is a map-style dataset with Lightning's samplers (shuffling, DDP splitting as for
the images themselves). Layout of one split::

    <dir>/<split>/shard-00000/{chunk-*.bin,index.json}   # one shard = ``shard_size`` images, written to a
    <dir>/<split>/shard-00001/...                        #   temporary dir and renamed when complete
    <dir>/<split>/index.json                             # every shard's chunks (written after the last shard)
    <dir>/<split>/signature.json                         # what it was built from (written last: the cache is
                                                         #   complete iff this exists)

A build killed midway resumes at the first missing shard; a half-written shard is a ``.tmp`` dir that is never read.
A cache whose signature differs from the run's (another codec, teacher, dataset or preprocessing) is refused with
a one-line error naming the field; a missing or truncated chunk is an error naming the file.
Phase 2 (d2, d3) trains the codec, so its latents change every step: there the cache holds C(x) only, joined to
the images by dataset index (the teacher's forward leaves the step; the codec's stays).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch.utils.data import DataLoader, Subset

from datamodules.classification import ClassificationDataModule, collate_skipping
from datamodules.sampler import train_loader
from latentbridge.core.atomic_io import atomic_torch_save, atomic_write_json
from latentbridge.core.digest import json_digest
from latentbridge.core.errors import ConfigError, DataError
from latentbridge.core.lease_lock import LeaseLock

log = logging.getLogger("latentbridge")

CACHE_FORMAT = "latentbridge-latent-cache/1"
DENSE = "dense.pt"  # a shard's values as stacked tensors, beside litdata's chunks (the in-memory path)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _subset_indices(ds: Any) -> list[int] | None:
    return list(ds.indices) if isinstance(ds, Subset) else None


class LatentCacheSplit:
    """One split of the cache: build it (resumably) and open it for reading."""

    def __init__(self, root: Path, split: str, signature: dict[str, Any]) -> None:
        self.dir = Path(root) / split
        self.split = split
        self.signature = signature

    @property
    def complete(self) -> bool:
        return (self.dir / "signature.json").is_file()

    def check(self) -> None:
        """Refuse a cache built from anything else; a missing or truncated chunk names the file."""
        sig_file = self.dir / "signature.json"
        try:
            theirs = json.loads(sig_file.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"data.cache_dir: {sig_file} is unreadable ({type(e).__name__})") from None
        diff = _difference(theirs, self.signature)
        if diff is not None:
            key, was, now = diff
            raise DataError(
                f"data.cache_dir: {self.dir} was built for {key}={_short(was)}, this run has {key}={_short(now)}; "
                "delete it or point data.cache_dir elsewhere"
            )
        index_file = self.dir / "index.json"
        try:
            index = json.loads(index_file.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"data.cache_dir: {index_file} is missing or corrupt ({type(e).__name__})") from None
        for chunk in index["chunks"]:
            path = self.dir / chunk["filename"]
            if not path.is_file():
                raise DataError(f"data.cache_dir: chunk {path} is missing")
            if path.stat().st_size != chunk["chunk_bytes"]:
                raise DataError(
                    f"data.cache_dir: chunk {path} is corrupt ({path.stat().st_size} bytes, index says "
                    f"{chunk['chunk_bytes']})"
                )

    @torch.no_grad()
    def build(self, module: Any, loader: DataLoader, shard_batches: int, dtype: torch.dtype, device: Any) -> None:
        """Write the missing shards (``shard_batches`` loader batches each), then the index and the signature."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fields = module.cache_fields(self.split)
        started, written, skipped = time.time(), 0, 0
        batches = iter(loader)
        shard = 0
        while True:
            final = self.dir / f"shard-{shard:05d}"
            if final.is_dir():  # finished by an earlier, interrupted build: skip its batches without computing
                n = json.loads((final / "meta.json").read_text())["batches"]
                for _ in range(n):
                    next(batches, None)
                shard += 1
                continue
            tmp = self.dir / f".shard-{shard:05d}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            writer, n, dense = None, 0, []
            for batch in batches:
                n += 1
                skipped += int(batch["num_skipped"])
                if "label" in batch:
                    writer = writer or _single_writer(str(tmp))
                    values = module.cache_batch(move_data_to_device(batch, device), self.split)
                    values = {
                        f: values[f].detach().to("cpu", dtype if f in ("y_hat", "tokens") else torch.float32)
                        for f in fields
                    }
                    values |= {"index": batch["index"].long().cpu(), "label": batch["label"].long().cpu()}
                    dense.append(values)
                    for i in range(batch["label"].shape[0]):
                        item = {"index": int(values["index"][i]), "label": int(values["label"][i])}
                        item.update({f: values[f][i].clone() for f in fields})
                        writer.add_item(written, item)
                        written += 1
                if n == shard_batches:
                    break
            if n == 0:
                break
            if writer is not None:
                writer.done()
                writer.merge()
                torch.save({k: torch.cat([d[k] for d in dense]) for k in dense[0]}, tmp / DENSE)
            else:
                tmp.mkdir(parents=True)
            atomic_write_json(tmp / "meta.json", {"batches": n})
            os.replace(tmp, final)  # a shard is visible only when complete
            shard += 1
            if n < shard_batches:
                break
        self._write_index()
        atomic_write_json(self.dir / "signature.json", self.signature)
        log.info(
            "latent cache %s: %d images in %.0f s (%d unreadable skipped) -> %s",
            self.split,
            written,
            time.time() - started,
            skipped,
            self.dir,
        )

    def _write_index(self) -> None:
        chunks, config = [], None
        for shard in sorted(self.dir.glob("shard-*")):
            index_file = shard / "index.json"
            if not index_file.is_file():  # a shard of unreadable images only
                continue
            index = json.loads(index_file.read_text())
            config = config or index["config"]
            chunks += [{**c, "filename": f"{shard.name}/{c['filename']}"} for c in index["chunks"]]
        if config is None:
            raise DataError(f"data.cache: no readable image in the {self.split} split")
        atomic_write_json(self.dir / "index.json", {"chunks": chunks, "config": config, "updated_at": "0"})

    @property
    def length(self) -> int:
        """The number of cached images (from the index: the same on every process)."""
        index = json.loads((self.dir / "index.json").read_text())
        return sum(int(c["chunk_size"]) for c in index["chunks"])

    def dataset(self) -> Any:
        """The checked cache, in written order (random access by position)."""
        from litdata import StreamingDataset

        self.check()
        return StreamingDataset(str(self.dir.resolve()))

    @property
    def nbytes(self) -> int:
        """What the cached values take (the chunks' bytes): whether the split fits in memory."""
        index = json.loads((self.dir / "index.json").read_text())
        return sum(int(c["chunk_bytes"]) for c in index["chunks"])

    def dense(self) -> dict[str, torch.Tensor]:
        """Every cached value of the split as stacked tensors, in written order (``index`` and ``label`` included):
        each shard's ``dense.pt``, written with it (a shard of an older build is converted once, from litdata)."""
        self.check()
        parts = []
        for shard in sorted(self.dir.glob("shard-*")):
            if not (shard / "index.json").is_file():  # a shard of unreadable images only
                continue
            if not (shard / DENSE).is_file():
                from litdata import StreamingDataset

                items = list(StreamingDataset(str(shard.resolve())))
                stacked = {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}
                atomic_torch_save(stacked, shard / DENSE)
            parts.append(torch.load(shard / DENSE, weights_only=True))
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _single_writer(directory: str) -> Any:
    """litdata's ``BinaryWriter`` as the only writer of its directory. Under DDP it would take the process's global
    rank and wait in ``merge`` for every rank's index, but only one process per node builds the cache."""
    from litdata.streaming.writer import BinaryWriter
    from litdata.utilities.env import _DistributedEnv

    writer = BinaryWriter(directory, chunk_bytes="64MB")
    writer._distributed_env = _DistributedEnv(world_size=1, global_rank=0, num_nodes=1)
    writer._rank = 0
    return writer


def _difference(theirs: Any, ours: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    """The first field (dotted path) where two signatures differ, with both values."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        for key in sorted(set(theirs) | set(ours)):
            found = _difference(theirs.get(key), ours.get(key), f"{prefix}{key}.")
            if found is not None:
                return found
        return None
    return None if theirs == ours else (prefix.rstrip("."), theirs, ours)


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


class _Indexed(torch.utils.data.Dataset):
    """Random access into a litdata ``StreamingDataset`` as a map-style dataset of all its items (under DDP the
    streaming dataset's own ``len`` is one rank's share)."""

    def __init__(self, streaming: Any, length: int) -> None:
        self.streaming, self.length = streaming, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.streaming[index]


class _InMemory(torch.utils.data.Dataset):
    """A split's cached values held in memory (``LatentCacheSplit.dense``): items by position, as litdata serves
    them, at the cost of an index (a litdata read costs ~1 ms per item on 2 CPU cores: 64 per batch)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.ints = [k for k in ("index", "label") if k in tensors]

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: (int(v[i]) if k in self.ints else v[i]) for k, v in self.tensors.items()}


class _WithTargets(torch.utils.data.Dataset):
    """The images with their cached C(x), matched by dataset index (phase 2: the codec trains, the teacher not)."""

    def __init__(self, images: Any, cached: _Indexed) -> None:
        self.images, self.cached = images, cached
        self.position: dict[int, int] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        item = self.images[i]
        if item is None:
            return None
        if self.position is None:  # built lazily, in the process (or loader worker) that reads
            self.position = {int(self.cached[p]["index"]): p for p in range(len(self.cached))}
        if item["index"] not in self.position:
            raise DataError(f"data.cache_dir: no cached target for image index {item['index']}")
        return {**item, "target": self.cached[self.position[item["index"]]]["target"]}


class LatentCacheDataModule(L.LightningDataModule):
    """A datamodule's train and val splits served from the latent cache of ``module`` (built in ``prepare_data``,
    on one process per node, under a file lock: of parallel jobs or nodes sharing the storage, one builds); test
    (final evaluation through real bitstreams) reads the images themselves."""

    def __init__(
        self,
        base: ClassificationDataModule,
        module: Any,
        cache_dir: str | Path,
        dtype: str = "float32",
        shard_size: int = 4096,
        in_memory: str | bool = "auto",
        memory_gb: float = 4.0,
    ) -> None:
        """``in_memory``: serve a split from memory (``auto``: when its cached values take at most ``memory_gb``);
        otherwise litdata reads each item from its chunks (any size, object storage)."""
        super().__init__()
        if not hasattr(module, "cache_fields"):
            raise ConfigError(f"data.cache: {type(module).__name__} has nothing to cache (set data.cache=false)")
        if dtype not in DTYPES:
            raise ConfigError(f"data.cache_dtype: '{dtype}' is not one of {', '.join(DTYPES)}")
        in_memory = str(in_memory).lower()
        if in_memory not in ("auto", "true", "false"):
            raise ConfigError(f"data.cache_in_memory: '{in_memory}' is not one of auto, true, false")
        self.base, self.module = base, module
        self.cache_dir = Path(cache_dir)
        self.dtype = dtype
        self.shard_size = int(shard_size)
        self.in_memory, self.memory_bytes = in_memory, float(memory_gb) * 2**30
        self.prepare_data_per_node = True

    # what the rest of LatentBridge reads from a datamodule
    classnames = property(lambda self: self.base.classnames)
    templates = property(lambda self: self.base.templates)
    batch_size = property(lambda self: self.base.batch_size)

    def _images(self, split: str) -> Any:
        """The base datamodule's images of ``split`` (its subset), as its own loaders see them."""
        return self.base._dataset(split, self.base.train_subset if split == "train" else self.base.val_subset)

    def signature(self, split: str) -> dict[str, Any]:
        """Everything the cached values of ``split`` depend on."""
        ds = self._images(split)
        return {
            "format": CACHE_FORMAT,
            "split": split,
            "data": self.base.signature(),
            "subset": json_digest(_subset_indices(ds)),
            "images": len(ds),
            "model": self.module.cache_signature(),
            "fields": list(self.module.cache_fields(split)),
            "dtype": self.dtype,
        }

    def split_cache(self, split: str) -> LatentCacheSplit:
        return LatentCacheSplit(self.cache_dir, split, self.signature(split))

    def prepare_data(self) -> None:
        self.base.prepare_data()
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        for split in ("train", "val"):
            cache = self.split_cache(split)
            if cache.complete:
                cache.check()
                continue
            with LeaseLock(f"{cache.dir}.lock"):  # parallel jobs of a plan / nodes on shared storage: one builds
                if cache.complete:
                    cache.check()
                    continue
                self._build(cache, split, device)

    def _build(self, cache: LatentCacheSplit, split: str, device: Any) -> None:
        """Compute one split's cached values with the frozen codec and teacher (resumable, shard by shard)."""
        loader = self.base._loader(self._images(split), self.base.eval_batch_size, shuffle=False)
        frozen, was_training = (self.module.codec, self.module.vision), self.module.training
        for m in frozen:
            m.to(device)
        self.module.eval()  # the values that validation computes: rounding, no noise
        try:
            batches = max(1, self.shard_size // self.base.eval_batch_size)
            cache.build(self.module, loader, batches, DTYPES[self.dtype], device)
        finally:
            self.module.train(was_training)
            for m in frozen:
                m.to("cpu")

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        """The cache read by index (litdata's random access), as a map-style dataset: the training sampler
        (``EpochSampler``) shuffles and splits it between processes as it does the images themselves. (litdata's
        ``StreamingDataLoader`` partitions whole chunks between ranks: in the 2-process test, 64 cached images in
        one chunk gave one rank no training batch at all.) A targets-only cache (phase 2) is joined to the images
        by dataset index."""
        cache = self.split_cache(split)
        in_memory = self.in_memory == "true" or (self.in_memory == "auto" and cache.nbytes <= self.memory_bytes)
        ds: torch.utils.data.Dataset = (
            _InMemory(cache.dense()) if in_memory else _Indexed(cache.dataset(), cache.length)
        )
        if "y_hat" not in self.module.cache_fields(split):
            ds = _WithTargets(self._images(split), ds)
        if shuffle:  # the training order of the images themselves (datamodules/sampler.py)
            return train_loader(ds, batch_size, self.trainer, self.base.seed, self.base.num_workers, collate_skipping)
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.base.num_workers,
            collate_fn=collate_skipping,
            persistent_workers=self.base.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=shuffle,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.base.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.base.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.base.test_dataloader()

    def split_dataloader(self, split: str, subset: int | None = None) -> DataLoader:
        return self.base.split_dataloader(split, subset)
