"""The latent cache (datamodules/latent_cache.py): equal results, refusal of stale caches, resumable builds."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from helpers.config import TINY_D1, hydra_cfg
from hydra.utils import instantiate

from latentbridge.core.errors import DataError
from latentbridge.runs import build_scenario
from latentbridge.workflows.train import with_latent_cache

CACHED = [
    *TINY_D1,
    "data.train_size=48",
    "data.val_size=40",
    "data.eval_batch_size=16",
    "data.cache_shard_size=16",
    "data.batch_size=16",
]


def _setup(tmp_path, extra=()):
    with hydra_cfg([*CACHED, *extra], tmp_path) as cfg:
        L.seed_everything(0, verbose=False)
        dm = instantiate(cfg.data)
        module = build_scenario(cfg)
        return cfg, dm, module, with_latent_cache(cfg, dm, module)


def _validate(module, dm):
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    return {k: float(v) for k, v in trainer.validate(module, datamodule=dm, verbose=False)[0].items()}


def test_cached_validation_and_training_loss_equal_the_uncached(tmp_path):
    cfg, dm, module, cached = _setup(tmp_path)
    cached.prepare_data()
    live, from_cache = _validate(module, dm), _validate(module, cached)
    assert set(live) == set(from_cache) and len(live) == 5  # top-1 of three paths, bpp, PSNR
    for k in live:
        assert from_cache[k] == pytest.approx(live[k], abs=1e-6), k
    # one training batch: the same images give the same loss from the cache as from the pixels
    module.train()
    batch = next(iter(cached.train_dataloader()))
    images = dm._dataset("train", None)
    pixels = torch.utils.data.default_collate([images[int(i)] for i in batch["index"]])
    module.set_classes(dm.classnames, dm.templates)
    a, b = module.training_loss(batch), module.training_loss(pixels)
    assert float(a.loss) == pytest.approx(float(b.loss), rel=1e-5, abs=1e-6)
    assert torch.equal(batch["label"], pixels["label"])


def test_training_from_the_cache_learns_and_validates_only_the_method_path(tmp_path):
    cfg, dm, module, cached = _setup(tmp_path, ["trainer.max_epochs=3", "data.batch_size=8"])
    from helpers.training import fit

    before = {k: v.clone() for k, v in module.neck.state_dict().items()}
    calls = {"codec": 0}
    latent = module.codec.latent
    module.codec.latent = lambda x: (calls.__setitem__("codec", calls["codec"] + 1), latent(x))[1]
    cached.prepare_data()
    built = calls["codec"]
    assert built == 48 // 16 + 40 // 16 + 1  # every image coded once: 3 train batches, 3 val batches (16 + 16 + 8)
    trainer = fit(module, cached, epochs=3)
    assert calls["codec"] == built  # neither training nor validation ran the codec again
    assert trainer.global_step == 3 * (48 // 8)
    assert any(not torch.equal(before[k], v) for k, v in module.neck.state_dict().items())


def test_a_stale_cache_is_refused_naming_the_field(tmp_path):
    """A cache directory used with other weights is refused; by default a retrained codec gets a cache of its own."""
    cfg, dm, module, cached = _setup(tmp_path)
    cached.prepare_data()
    with torch.no_grad():
        module.codec.model.g_a[0].weight.add_(0.01)  # "retrained" codec, same config
    with pytest.raises(
        DataError,
        match=r"data.cache_dir: .* was built for model.codec_weights=\"\w+\", this run has model.codec_weights=",
    ):
        cached.prepare_data()
    assert with_latent_cache(cfg, dm, module).cache_dir != cached.cache_dir


def test_a_killed_build_resumes_without_redoing_finished_shards_and_corrupt_chunks_name_the_file(tmp_path):
    cfg, dm, module, cached = _setup(tmp_path)
    split = cached.split_cache("train")
    real = module.cache_batch
    calls = []

    def dies_on_the_third_batch(batch, s):
        calls.append(s)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(batch, s)

    module.cache_batch = dies_on_the_third_batch
    with pytest.raises(KeyboardInterrupt):
        cached.prepare_data()
    assert (split.dir / "shard-00000").is_dir() and (split.dir / "shard-00001").is_dir()
    assert not split.complete and not (split.dir / "shard-00002").exists()  # the half-written one is a .tmp dir
    module.cache_batch = real
    calls.clear()
    module.cache_batch = lambda batch, s: (calls.append(s), real(batch, s))[1]
    cached.prepare_data()
    assert calls.count("train") == 1 and split.complete  # only the third shard was computed
    ds = split.dataset()
    assert sorted(int(ds[i]["index"]) for i in range(len(ds))) == list(range(48))
    index = json.loads((split.dir / "index.json").read_text())
    chunk = split.dir / index["chunks"][1]["filename"]
    chunk.write_bytes(chunk.read_bytes()[:-5])
    with pytest.raises(DataError, match=f"chunk {chunk} is corrupt"):
        split.dataset()
    chunk.unlink()
    with pytest.raises(DataError, match=f"chunk {chunk} is missing"):
        split.dataset()


def test_phase_two_caches_the_teacher_targets_only_with_equal_results(tmp_path):
    """d2 trains the codec: the cache holds C(x) only (no codec in its signature), joined to the images by index."""
    cfg, dm, module, cached = _setup(tmp_path, ["experiment=mini_d2", "scenario.init_from=null", "data=synthetic"])
    assert module.cache_fields("train") == module.cache_fields("val") == ("target",)
    assert not any(k.startswith("codec") for k in module.cache_signature())
    cached.prepare_data()
    live, from_cache = _validate(module, dm), _validate(module, cached)
    for k in live:
        assert from_cache[k] == pytest.approx(live[k], abs=1e-6), k
    module.train()
    module.set_classes(dm.classnames, dm.templates)
    batch = next(iter(cached.train_dataloader()))
    assert "image" in batch and "target" in batch and "y_hat" not in batch
    pixels = {k: v for k, v in batch.items() if k != "target"}
    torch.manual_seed(0)
    a = module.training_loss(batch)
    torch.manual_seed(0)  # the codec's training-mode noise
    b = module.training_loss(pixels)
    assert float(a.loss) == pytest.approx(float(b.loss), rel=1e-5)


def test_token_distillation_trains_from_cached_teacher_tokens(tmp_path):
    """loss.token_weight > 0: the cache also holds the teacher's tokens after block k, and they equal the live ones."""
    cfg, dm, module, cached = _setup(tmp_path, ["loss.token_weight=1.0", "scenario.skip_blocks=3"])
    assert module.cache_fields("train") == ("y_hat", "target", "tokens")
    cached.prepare_data()
    ds = cached.split_cache("train").dataset()
    item = ds[0]
    image = dm._dataset("train", None)[int(item["index"])]["teacher_image"][None]
    live = module.eval().teacher_tokens(image)[0]
    assert item["tokens"].shape == live.shape == (1 + 4 * 4, module.vision.width)
    torch.testing.assert_close(item["tokens"], live, atol=1e-6, rtol=0)
    module.train()
    module.set_classes(dm.classnames, dm.templates)
    out = module.training_loss(next(iter(cached.train_dataloader())))
    assert out.tokens is not None and float(out.tokens) > 0


def test_d1_its_ablations_and_post_processing_share_one_cache(tmp_path):
    """The cache depends on the frozen codec and teacher, not on the scenario or the skipped blocks."""
    from latentbridge.workflows.train import latent_cache_dir

    dirs = set()
    for extra in ([], ["scenario.skip_blocks=4"], ["experiment=mini_post_processing", "scenario.post.base_channels=4"]):
        cfg, dm, module, cached = _setup(tmp_path / str(len(dirs)), ["paths.cache_dir=" + str(tmp_path / "c"), *extra])
        cached.prepare_data()  # the second and third find the first one's cache valid
        dirs.add(latent_cache_dir(cfg, dm, module))
    assert len(dirs) == 1


def test_the_in_memory_path_serves_exactly_what_litdata_serves_and_converts_older_shards(tmp_path):
    from datamodules.latent_cache import DENSE, _Indexed, _InMemory

    cfg, dm, module, cached = _setup(tmp_path)
    cached.prepare_data()
    for split in ("train", "val"):
        cache = cached.split_cache(split)
        shards = sorted(cache.dir.glob("shard-*"))
        assert shards and all((s / DENSE).is_file() for s in shards)  # written with each shard
        (shards[0] / DENSE).unlink()  # a shard of an older build: converted from litdata once
        from_disk, in_memory = _Indexed(cache.dataset(), cache.length), _InMemory(cache.dense())
        assert (shards[0] / DENSE).is_file() and len(in_memory) == len(from_disk) == cache.length
        for i in range(len(from_disk)):
            a, b = from_disk[i], in_memory[i]
            assert a.keys() == b.keys() and a["index"] == b["index"] and a["label"] == b["label"]
            assert all(torch.equal(a[k], b[k]) for k in a if k not in ("index", "label")), (split, i)
    loaders = {}
    for mode in (True, False):
        cached.in_memory = str(mode).lower()
        loaders[mode] = next(iter(cached.val_dataloader()))
    assert all(torch.equal(loaders[True][k], loaders[False][k]) for k in loaders[True] if k != "num_skipped")
