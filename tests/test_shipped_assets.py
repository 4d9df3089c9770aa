"""The shipped mini assets (issue: mini reproductions, first contact): a missing checkpoint built by the recipe the
manifest records is copied from ``assets/mini`` (sha256-checked) instead of trained; another recipe, or
``use_shipped_assets=false``, trains it; a damaged shipped file is a one-line error; the project's manifest matches
its files and the recipes its configs name."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.config import CONF, hydra_cfg

from latentbridge.core.errors import ConfigError
from latentbridge.workflows import assets


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A shipped codec at the mini default rate in a scratch assets folder (its bytes are not a real codec: the
    test checks that a copy happens, never that it loads)."""
    folder = tmp_path / "assets"
    file = tmp_path / "codec.pt"
    file.write_bytes(b"shipped codec")
    assets.record("codecs/mini_s8_lambda0.0001.pt", file, ["experiment=mini_codec", "codec.lmbda=0.0001"],
                  {"bpp": 0.03}, folder)  # fmt: skip
    monkeypatch.setattr(assets, "assets_dir", lambda: folder)
    return folder


def _prepare(tmp_path, monkeypatch, *overrides):
    from latentbridge.workflows import train

    trained = []
    monkeypatch.setattr(train, "run", lambda sub: trained.append(list(sub.codec.prepare or [])))
    monkeypatch.setattr(train, "scenario_uses", lambda cfg: ["codec"])
    with hydra_cfg(["experiment=mini_d1", *overrides], tmp_path) as cfg:
        train.prepare_dependencies(cfg)
        return Path(cfg.codec.checkpoint), trained


def test_a_missing_checkpoint_built_by_the_shipped_recipe_is_copied_not_trained(tmp_path, monkeypatch, shipped):
    ckpt, trained = _prepare(tmp_path, monkeypatch)
    assert trained == [] and ckpt.read_bytes() == b"shipped codec"


def test_another_recipe_or_use_shipped_assets_false_trains_it(tmp_path, monkeypatch, shipped):
    ckpt, trained = _prepare(tmp_path, monkeypatch, "use_shipped_assets=false")
    assert len(trained) == 1 and not ckpt.exists()
    other = "codec.prepare=['experiment=mini_codec','trainer.max_epochs=1']"
    ckpt, trained = _prepare(tmp_path / "b", monkeypatch, other)
    assert len(trained) == 1 and not ckpt.exists()


def test_a_damaged_shipped_file_is_a_one_line_error(tmp_path, monkeypatch, shipped):
    (shipped / "codecs" / "mini_s8_lambda0.0001.pt").write_bytes(b"tampered")
    with pytest.raises(ConfigError) as err:
        _prepare(tmp_path, monkeypatch)
    assert str(err.value).startswith("use_shipped_assets: ") and "sha256" in str(err.value)
    assert "\n" not in str(err.value)


def test_the_projects_shipped_assets_match_their_manifest_and_the_configs_recipes(tmp_path):
    """Every shipped file has its recorded sha256, and is what make train's config would ask for."""
    entries = assets.manifest(CONF.parent / "assets" / "mini")["assets"]
    assert set(entries) == {"teachers/mini_clip_p8.pt", "codecs/mini_s8_lambda0.0001.pt"}
    for name, entry in entries.items():
        assert assets.sha256(CONF.parent / "assets" / "mini" / name) == entry["sha256"], name
    with hydra_cfg(["experiment=mini_d1"], tmp_path) as cfg:
        cache = Path(cfg.paths.cache_dir)
        for node in (cfg.vision, cfg.codec):
            name = Path(node.checkpoint).relative_to(cache).as_posix()
            assert list(node.prepare) == entries[name]["recipe"], name
