"""Importing paper 1's released models (``latentbridge-import nycu``): synthetic files in the exact released formats
become run directories that open like runs trained here, with the reference pipeline; wrong or foreign files are
one-line errors naming the file and the key (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from helpers.released import write_release

from latentbridge.codecs.published import RELEASED_LAMBDAS
from latentbridge.core.errors import CheckpointError, ConfigError
from latentbridge.workflows.import_released import import_nycu


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("release"))


def _cli(*args):
    cmd = [sys.executable, "-m", "latentbridge.cli.released", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_each_released_file_becomes_a_run_with_its_neck_its_codec_and_the_reference_pipeline(release, tmp_path):
    from omegaconf import OmegaConf

    from latentbridge.core.run_dir import config_file

    res = _cli("nycu", release["d1_1"], release["d3_1"], "--out", tmp_path / "runs", "--elic", release["elic1"])
    assert res.returncode == 0, res.stderr
    assert f"{release['d1_1']} -> {tmp_path / 'runs' / 'd1_1'} (reference pipeline" in res.stdout
    for name, scenario in (("d1_1", "D1Module"), ("d3_1", "D3Module")):
        run = tmp_path / "runs" / name
        results = json.loads((run / "results.json").read_text())
        assert results["scenario"] == scenario and results["codec"]["lmbda"] == RELEASED_LAMBDAS[1]
        assert results["imported_from"]["pipeline"] == "reference"
        cfg = OmegaConf.load(config_file(run))
        assert cfg.vision.pipeline == "reference" and cfg.vision.model_name == "ViT-L-14-quickgelu"
        assert cfg.codec.checkpoint == str(release[name]) and cfg.codec.lmbda == 0.004
        ckpt = torch.load(results["best_checkpoint"], weights_only=True)
        assert ckpt["latentbridge"]["vision_pipeline"] == "reference" and ckpt["latentbridge"]["scenario"] == scenario
        necks = {k for k in ckpt["state_dict"] if k.startswith("neck.")}
        assert len(necks) == 18 and ("codec.model.g_a.0.weight" in ckpt["state_dict"]) == (name == "d3_1")
    assert OmegaConf.load(config_file(tmp_path / "runs" / "d1_1")).loss.similarity == "reference"


def test_a_d2_file_given_as_d1_or_the_wrong_base_is_refused_naming_the_file_and_key(release, tmp_path):
    d2_as_d1 = tmp_path / "d1_1.pth.tar"
    d2_as_d1.symlink_to(release["d2_1"])
    with pytest.raises(CheckpointError) as err:
        import_nycu(d2_as_d1, tmp_path / "x", elic=release["elic1"])
    assert str(err.value) == (f"{d2_as_d1}: a d1 file's ELIC is the frozen ELIC of --elic {release['elic1']}, "
                              "but 'g_a.0.weight' differs (a d2 / d3 file, or another rate point?)")  # fmt: skip
    d1_as_d2 = tmp_path / "d2_1.pth.tar"
    d1_as_d2.symlink_to(release["d1_1"])
    with pytest.raises(CheckpointError, match=r"d2_1.pth.tar: its ELIC equals --elic .*: a d1 file, not d2"):
        import_nycu(d1_as_d2, tmp_path / "y", elic=release["elic1"])


def test_names_truncated_and_foreign_files_are_one_line_errors(release, tmp_path):
    with pytest.raises(ConfigError, match="--scenario: .*d1_1.pth.tar is named as d1, not d2"):
        import_nycu(release["d1_1"], tmp_path / "a", scenario="d2")
    other = tmp_path / "neck.pth.tar"
    other.write_bytes(release["d1_1"].read_bytes())
    with pytest.raises(ConfigError, match="is not named d<1-3>_<1-4>.pth.tar; give --scenario"):
        import_nycu(other, tmp_path / "b")
    truncated = tmp_path / "d1_2.pth.tar"
    truncated.write_bytes(release["d1_1"].read_bytes()[:100_000])
    res = _cli("nycu", truncated, "--out", tmp_path / "c")
    assert res.returncode == 2 and res.stderr.startswith(f"error: released file: {truncated} is not a readable")
    assert len(res.stderr.strip().splitlines()) == 1
    chandelier = release["elic1"]  # Chandelier's ELIC alone: no neck
    res = _cli("nycu", chandelier, "--scenario", "d1", "--quality", "1", "--out", tmp_path / "d")
    assert res.returncode == 2 and "not a released file of paper 1 (needs 'state_dict' and 'adapter'" in res.stderr
    with pytest.raises(ConfigError, match="--set: codec.lmbda=0.008 is decided by the import"):
        import_nycu(release["d1_1"], tmp_path / "e", overrides=["codec.lmbda=0.008"])
