"""Few-shot sampling, BD metrics, traditional anchors, the complexity counter and evaluate.py end to end."""

import json

import numpy as np
import pytest
import torch
from helpers.config import ROOT, TINY_D1, hydra_cfg
from PIL import Image

from latentbridge.analysis.curves import bd_table, curves
from latentbridge.codecs.traditional import code_image, unavailable_reason
from latentbridge.metrics.few_shot import few_shot_accuracy, sample_groups
from latentbridge.metrics.macs import count_macs
from latentbridge.nn.transform_neck import TransformNeck
from latentbridge.workflows.train import run as train_run


def test_few_shot_groups_follow_paper_a1():
    labels = np.repeat(np.arange(10), 20)
    groups = sample_groups(labels, groups=5000, ways=5, seed=0)
    assert groups.shape == (5000, 6)
    support_classes = labels[groups[:, :5]]
    assert all(len(set(row)) == 5 for row in support_classes)  # five different classes
    assert all(labels[g[5]] in labels[g[:5]] for g in groups)  # the query's class is among them
    assert not (groups[:, :5] == groups[:, 5:]).any()  # the query is a new image
    assert np.array_equal(groups, sample_groups(labels, groups=5000, seed=0))  # seeded


def test_few_shot_accuracy_is_one_for_class_embeddings_and_chance_for_noise():
    labels = torch.arange(10).repeat_interleave(20)
    groups = sample_groups(labels.numpy(), groups=2000, seed=1)
    perfect = torch.nn.functional.one_hot(labels, 10).float()
    assert few_shot_accuracy(perfect, labels, groups) == 1.0
    noise = torch.randn(200, 64, generator=torch.Generator().manual_seed(0))
    assert 0.12 < few_shot_accuracy(noise, labels, groups) < 0.28  # 5-way chance = 0.2


def test_bd_rate_of_a_curve_needing_half_the_rate_is_minus_fifty_percent():
    rates = [0.1, 0.2, 0.4, 0.8]
    rows = [{"method": "anchor", "bpp": r, "top1": a} for r, a in zip(rates, [0.3, 0.5, 0.6, 0.65])]
    rows += [{"method": "test", "bpp": r / 2, "top1": a} for r, a in zip(rates, [0.3, 0.5, 0.6, 0.65])]
    assert curves(rows, "top1")["test"][0] == [0.05, 0.1, 0.2, 0.4]
    bd = bd_table(rows, "top1", "anchor")["test"]
    assert bd["bd_rate_percent"] == pytest.approx(-50.0, abs=0.5)
    assert bd["bd_top1"] > 0


def test_bd_table_writes_null_not_nan(monkeypatch):
    import bjontegaard

    monkeypatch.setattr(bjontegaard, "bd_rate", lambda *a, **k: float("nan"))  # what it gives without overlap
    rows = [
        {"method": m, "bpp": r, "top1": a}
        for m in ("anchor", "test")
        for r, a in ((0.1, 0.3), (0.2, 0.5), (0.4, 0.6), (0.8, 0.65))
    ]
    assert bd_table(rows, "top1", "anchor")["test"]["bd_rate_percent"] is None


def test_traditional_anchors_code_and_decode():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    for name in ("jpeg", "webp", "avif", "heic"):
        if unavailable_reason(name):
            continue
        small, dec = code_image(img, name, 5)
        big, _ = code_image(img, name, 90)
        assert dec.size == (64, 64) and len(small) < len(big), name
    assert "anchors.vtm.encoder" in unavailable_reason("vtm", {"encoder": None})


def test_mac_counter_counts_attention():
    """The neck at ELIC/ViT-L/14/256x256: ~3.45 GMAC = 52.7 kMAC/px (Table 3: 52.795), attention included."""
    neck = TransformNeck(320, 1024, 16, 16).eval()
    macs = count_macs(neck, torch.randn(1, 320, 16, 16))
    tokens, width = 257, 1024
    linear = 256 * 320 * width + tokens * 12 * width * width  # proj + qkv/out/MLP
    attention = 2 * tokens * tokens * width  # QK^T and AV
    assert macs == pytest.approx(linear + attention, rel=0.002)
    assert macs / 256**2 / 1e3 == pytest.approx(52.7, abs=0.1)


def test_evaluate_end_to_end_on_a_tiny_run(tmp_path):
    """A tiny d1 run at two rate points, evaluated through real bitstreams with a JPEG anchor."""
    from helpers.config import CONF
    from hydra import compose, initialize_config_dir

    from latentbridge.workflows import evaluate

    runs = []
    for i, lmbda in enumerate((0.001, 0.05)):
        with hydra_cfg([*TINY_D1, f"codec.lmbda={lmbda}"], tmp_path / f"r{i}") as cfg:
            train_run(cfg)
        runs.append(str(tmp_path / f"r{i}" / "run"))
    kodak = tmp_path / "kodak"
    kodak.mkdir()
    for i, size in enumerate([(70, 50), (64, 64)]):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (*size, 3), dtype=np.uint8)).save(kodak / f"{i}.png")
    overrides = [
        f"kodak={kodak}",
        f"runs=[{runs[0]},{runs[1]}]",
        f"paths.output_dir={tmp_path / 'eval'}",
        "few_shot_groups=200",
        "wandb=false",
        "anchors.webp=[]",
        "anchors.avif=[]",
        "anchors.heic=[]",
        "anchors.jpeg=[10,50]",
    ]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        results = evaluate.evaluate(compose("evaluate", overrides=overrides))
    assert [r["images"] for r in results["kodak"]] == [2, 2] and all(r["psnr"] > 0 for r in results["kodak"])
    methods = [r["method"] for r in results["rows"]]
    assert methods.count("d1") == 2 and methods.count("reconstruction") == 2 and methods.count("jpeg") == 2
    d1 = [r for r in results["rows"] if r["method"] == "d1"]
    assert all(r["bpp"] > 0 and r["bpp_est"] > 0 and 0 <= r["top1"] <= 1 for r in d1)
    assert (tmp_path / "eval" / "rate_top1.png").is_file() and (tmp_path / "eval" / "results.csv").is_file()
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["rows"] == json.loads(
        json.dumps(results["rows"])
    )


def _tiny_run_dir(tmp_path, *extra: str):
    """A finished tiny d1 run (random teacher and codec: no checkpoints)."""
    with hydra_cfg([*TINY_D1, "data.val_size=50", *extra], tmp_path) as cfg:
        results = train_run(cfg)
    return tmp_path / "run", results


def test_evaluation_reproduces_the_runs_own_validation_exactly(tmp_path):
    """open_run rebuilds the very module that trained (its frozen parts too, here random ones), and the test
    loop's paths are the validation's: on the same images the top-1 and PSNR are equal, not close."""
    from omegaconf import OmegaConf

    from latentbridge.workflows.evaluate import evaluate_rate_point, open_rate_point

    run_dir, trained = _tiny_run_dir(tmp_path)
    trainer = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}
    settings = OmegaConf.create({"limit": None, "batch_size": 16, "few_shot_groups": 0, "seed": 0, "trainer": trainer})
    run, dm = open_rate_point(run_dir, settings)
    row = evaluate_rate_point(run, dm, settings)
    val = trained["metrics"]
    assert row["images"] == 50
    for path, key in (("method", "top1_neck"), ("reconstruction", "top1_reconstruction"),
                      ("uncompressed", "top1_uncompressed")):  # fmt: skip
        assert row[path]["top1"] == pytest.approx(val[key], abs=1e-6), path
    assert row["psnr"] == pytest.approx(val["psnr"], abs=1e-4)
    assert row["bpp"] > row["bpp_est"] > 0  # the real stream costs more than the estimate (container, flush)


@pytest.mark.slow
def test_evaluation_with_two_ddp_processes_gives_the_single_process_rows(tmp_path):
    """latentbridge-evaluate with trainer.devices=2 (DDP over gloo, as on a GPU node) writes the same rows."""
    import subprocess
    import sys

    run_dir, _ = _tiny_run_dir(tmp_path / "train")
    rows = {}
    for devices in (1, 2):
        out = tmp_path / f"eval{devices}"
        args = [f"runs=[{run_dir}]", "few_shot_groups=20", "wandb=false", "anchors.webp=[]", "anchors.avif=[]",
                "anchors.heic=[]", "anchors.jpeg=[20]", "trainer.accelerator=cpu", f"trainer.devices={devices}",
                "trainer.enable_progress_bar=false", f"hydra.run.dir={out}"]  # fmt: skip
        if devices == 2:
            args.append("+trainer.strategy=ddp")
        res = subprocess.run([sys.executable, "evaluate.py", *args], cwd=ROOT, capture_output=True, text=True,
                             timeout=600)  # fmt: skip
        assert res.returncode == 0, res.stderr[-2000:]
        rows[devices] = json.loads((out / "results.json").read_text())["rows"]
    assert rows[1] == rows[2]
    assert [r["images"] for r in rows[2]] == [50, 50, 50, 50]


@pytest.mark.slow  # minutes on 2 cores; make test-slow (CI runs it)
def test_the_diagnostic_scripts_run_on_a_finished_run(tmp_path):
    """scripts/path_fidelity.py (each path's distance to C(x), test and train split) and scripts/benchmark_server.py
    (neck vs Reconstruction path per request) run as a user runs them."""
    import subprocess
    import sys

    run_dir, trained = _tiny_run_dir(tmp_path / "train", "data.batch_size=64")  # more than the 50 images read below
    logs = f"paths.log_dir={tmp_path / 'logs'}"
    res = subprocess.run([sys.executable, "scripts/path_fidelity.py", f"runs=[{run_dir}]", "limit=50", logs],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    test_row = next(line for line in res.stdout.splitlines() if "│ test" in line)
    assert f"{trained['metrics']['top1_neck']:.4f}" in test_row  # the same module and images as validation
    assert any("│ train" in line for line in res.stdout.splitlines())
    bench = ["scripts/benchmark_server.py", "+bench.repeats=2", "+bench.batch=4", "data=synthetic", logs]
    bench += ["codec.checkpoint=null", "vision.checkpoint=null"]
    res = subprocess.run([sys.executable, *bench], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "batch 1:" in res.stdout and "networks only" in res.stdout and "Reconstruction / neck" in res.stdout


def test_rate_accuracy_counts_each_image_once_when_a_sampler_repeats_some():
    """A distributed sampler pads the last batch with repeats: every column, MS-SSIM included (images over 160 px),
    is taken once per dataset index, so the row equals the row without the repeat."""
    from latentbridge.metrics.rate_accuracy import RateAccuracy

    torch.manual_seed(0)
    x = torch.rand(3, 3, 176, 176)
    x_hat = (x + 0.2 * torch.rand_like(x) * torch.tensor([0.1, 1.0, 3.0]).view(3, 1, 1, 1)).clamp(0, 1)
    emb, text = torch.randn(3, 8), torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    batch = {"image": x, "label": torch.tensor([0, 1, 2]), "index": torch.tensor([0, 1, 2])}

    def row(*takes: list[int]) -> dict:
        metric = RateAccuracy(("method",))
        for take in takes:
            part = {k: v[take] for k, v in batch.items()}
            metric.update(part, {"method": emb[take]}, text, [10 * (i + 1) for i in take], x_hat[take])
        return metric.compute()

    once = row([0, 1], [2])
    assert once["ms_ssim"] is not None and once["images"] == 3
    assert row([0, 1], [2, 2]) == once  # index 2 twice, as the padded last batch of another rank
    assert row([2], [1, 0], [0]) == once  # in any order


def test_mosaics_tile_and_untile_exactly_and_charge_each_image_its_share():
    from latentbridge.core.mosaic import shares, tile, untile

    x = torch.rand(37, 3, 8, 6)
    mosaics, count = tile(x, 4)
    assert mosaics.shape == (3, 3, 32, 24) and count == 37
    assert torch.equal(mosaics[0, :, 0:8, 6:12], x[1]) and torch.equal(mosaics[0, :, 8:16, 0:6], x[4])
    assert torch.equal(untile(mosaics, 4, count), x)
    charged = shares([160, 320, 100], 4, count)
    assert charged[:16] == [10.0] * 16 and charged[16:32] == [20.0] * 16 and charged[32:] == [20.0] * 5
    assert sum(charged) == 160 + 320 + 100  # every byte is paid for by real images
