import json

import pytest
import torch

from latentbridge.core.atomic_io import atomic_write_json
from latentbridge.core.checkpoint_io import AtomicCheckpointIO


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)

    def dies_half_way(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt  # a killed run

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_atomic_json(tmp_path):
    atomic_write_json(tmp_path / "a" / "results.json", {"bpp": 0.25})
    assert json.loads((tmp_path / "a" / "results.json").read_text()) == {"bpp": 0.25}
