"""Paper 2's pre-editor and its joint training with the variable-rate codec (design 6, tests 11-14), on tiny random
models and synthetic images."""

import lightning as L
import pytest
import torch
from helpers.config import TINY, hydra_cfg
from helpers.training import fit
from hydra.utils import instantiate

from latentbridge.cli import user_error
from latentbridge.codecs.adapter import ENTROPY_TABLES
from latentbridge.losses.token import token_distortion
from latentbridge.nn.pre_editor import PreEditor
from latentbridge.workflows.train import run as train_run

P2 = ["experiment=mini_p2", *TINY]


def _module(tmp_path, *extra):
    with hydra_cfg([*P2, *extra], tmp_path) as cfg:
        L.seed_everything(0, verbose=False)
        return instantiate(cfg.data), instantiate(cfg.scenario)


def test_pre_editor_starts_as_the_identity_at_any_size_and_learns_from_a_token_loss():
    torch.manual_seed(0)
    editor = PreEditor(width=8)
    x = torch.rand(2, 3, 37, 53)
    for q in (0.0, 0.3, 1.0):
        assert torch.equal(editor(x, q), x)
    target = torch.randn(2, 37 * 53, 3)
    out = editor(x, 0.5)
    assert out.shape == x.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    token_distortion(out.flatten(2).transpose(1, 2), target).backward()
    assert float(editor.head.weight.grad.abs().sum()) > 0


def test_frozen_codec_stage_trains_the_editor_from_the_rate_alone_then_the_codec_trains(tmp_path):
    dm, module = _module(tmp_path, "loss.kappa=0", "loss.w_pix=0", "scenario.codec_frozen_epochs=1")
    snapshots = {}

    class Snapshot(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            snapshots[trainer.current_epoch] = {k: v.clone() for k, v in pl_module.state_dict().items()}

    before = {k: v.clone() for k, v in module.state_dict().items()}
    fit(module, dm, epochs=2, limit_train_batches=2, limit_val_batches=1, callbacks=[Snapshot()])
    first, second = snapshots[0], snapshots[1]
    codec_keys = [k for k in before if k.startswith("codec.") and not k.endswith(ENTROPY_TABLES)]
    assert any(k.endswith(".quantiles") for k in codec_keys)
    assert all(torch.equal(before[k], first[k]) for k in codec_keys)  # epoch 0: codec bit-identical
    assert any(not torch.equal(before[k], first[k]) for k in before if k.startswith("editor."))  # R alone moves P
    assert any(not torch.equal(first[k], second[k]) for k in codec_keys)  # epoch 1: the codec trains
    assert all(torch.equal(before[k], second[k]) for k in before if k.startswith("vision."))


def test_fixed_rate_pins_every_batch_and_free_training_draws_many_rates(tmp_path):
    _, fixed = _module(tmp_path / "a", "scenario.fixed_rate=0.0001")
    assert {fixed.draw_q() for _ in range(5)} == {fixed.ladder.q(0.0001)}
    _, free = _module(tmp_path / "b")
    assert len({free.draw_q() for _ in range(5)}) == 5


@pytest.fixture(scope="module")
def p2_run(tmp_path_factory):
    """One finished tiny paper-2 run (codec trains from the first epoch)."""
    tmp = tmp_path_factory.mktemp("p2")
    with hydra_cfg([*P2, "trainer.max_epochs=1", "scenario.codec_frozen_epochs=0"], tmp) as cfg:
        results = train_run(cfg)
    return tmp / "run", results


def test_checkpoints_hold_editor_and_codec_only_and_resume(tmp_path, p2_run):
    run, results = p2_run
    assert results["scenario"] == "PreEditVbrModule" and results["monitor"]["metric"] == "val/objective"
    assert "top1_q0_5" in results["metrics"] and (run / "export.pt").is_file()
    last = run / "checkpoints" / "last.ckpt"
    keys = torch.load(last, weights_only=True)["state_dict"]
    assert {k.split(".")[0] for k in keys} == {"editor", "codec"}
    assert not any(k.endswith(ENTROPY_TABLES) for k in keys)
    resume = [*P2, "scenario.codec_frozen_epochs=0", "trainer.max_epochs=2", f"ckpt_path={last}"]
    with hydra_cfg(resume, tmp_path) as cfg:
        assert train_run(cfg)["epochs"] == 2


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ("codec.ladder.lmbda_max=0.01", "codec_ladder"),
        ("loss.token_layer=-3", "token_layer"),
        ("preedit.width=8", "editor_width"),
        ("preedit=none", "editor"),
    ],
)
def test_a_checkpoint_of_another_ladder_token_layer_or_editor_is_refused(tmp_path, p2_run, change, key):
    last = p2_run[0] / "checkpoints" / "last.ckpt"
    with hydra_cfg([*P2, "trainer.max_epochs=2", change, f"ckpt_path={last}"], tmp_path) as cfg:
        with pytest.raises(Exception) as err:
            train_run(cfg)
    message = str(user_error(err.value))
    assert message.startswith(f"ckpt_path: checkpoint was trained with {key}="), message


def test_the_export_is_a_codec_checkpoint_carrying_its_editor_and_a_foreign_editor_is_refused(tmp_path, p2_run):
    from latentbridge.codecs.adapter import build_codec, load_codec_checkpoint
    from latentbridge.core.errors import CheckpointError
    from latentbridge.nn.pre_editor import load_editor

    export = torch.load(p2_run[0] / "export.pt", weights_only=True)
    codec, lmbda = load_codec_checkpoint(p2_run[0] / "export.pt")
    assert lmbda is None and codec.variable_rate
    editor = load_editor(export["editor"], codec, "export.pt")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert editor(x, 0.5).shape == x.shape
    other = build_codec("mini-vbr").eval()  # same name and ladder, other weights
    other.model.update(force=True)
    with pytest.raises(CheckpointError, match="trained with codec weights="):
        load_editor(export["editor"], other, "export.pt")
    with pytest.raises(CheckpointError, match="holds no pre-editor"):
        load_editor({"state_dict": {}}, codec, "x.pt")


def test_paper2_needs_a_variable_rate_codec(tmp_path):
    with hydra_cfg([*P2, "codec=mini"], tmp_path) as cfg:
        with pytest.raises(Exception) as err:
            instantiate(cfg.scenario)
    assert str(user_error(err.value)).startswith("codec: paper 2 trains a variable-rate codec")


def test_evaluate_loads_a_variable_rate_run_once_and_writes_one_row_per_rate(tmp_path, p2_run, monkeypatch):
    from helpers.config import CONF
    from hydra import compose, initialize_config_dir

    from latentbridge import runs as runs_module
    from latentbridge.workflows import evaluate

    opened = []
    real_open = runs_module.open_run
    monkeypatch.setattr(evaluate, "open_run", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    overrides = [
        f"runs=[{p2_run[0]}]",
        "rates=[1.0e-5,'q=0.5',0.0032]",
        f"paths.output_dir={tmp_path}",
        "few_shot_groups=0",
        "mosaic=4",  # as experiment=mini_p2 trained and validated it
        "wandb=false",
        "anchors.jpeg=[]",
        "anchors.webp=[]",
        "anchors.avif=[]",
        "anchors.heic=[]",
    ]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        results = evaluate.evaluate(compose("evaluate", overrides=overrides))
    rows = [r for r in results["rows"] if r["method"] == "p2"]
    assert len(opened) == 1 and len(rows) == 3 and len({r["run"] for r in rows}) == 1
    assert [r["q"] for r in rows] == sorted(r["q"] for r in rows) and rows[1]["q"] == 0.5
    assert abs(rows[0]["lmbda"] - 1e-5) < 1e-12 and abs(rows[2]["lmbda"] - 0.0032) < 1e-12
    assert all(r["bpp"] > r["bpp_est"] > 0 for r in rows)  # real bytes: the estimate plus the container
    assert any(r["method"] == "uncompressed" for r in results["rows"])


def test_a_fixed_rate_model_is_validated_and_selected_at_its_own_rate_only(tmp_path):
    """It used to keep val_q = [0, 0.5, 1]: its checkpoint was selected mostly by rates it never trained at."""
    dm, module = _module(tmp_path, "scenario.fixed_rate=0.0001")
    q = module.ladder.q(0.0001)
    assert module.val_q == [q] and module.eval_q == q
    trainer = fit(module, dm, epochs=1, limit_train_batches=1, limit_val_batches=1)
    validated = {k for k in trainer.callback_metrics if k.startswith("val/top1_q")}
    assert validated == {f"val/top1_q{q:g}".replace(".", "_")}


def test_the_validation_objective_weighs_every_rate_by_its_relative_change(tmp_path):
    """val/objective = mean over the rates of log(objective): a 10 % gain at the lowest rate counts as much as one
    at the highest, although the raw objectives are far apart."""
    dm, module = _module(tmp_path)
    trainer = fit(module, dm, epochs=1, limit_train_batches=1, limit_val_batches=1)
    per_rate = [float(trainer.callback_metrics[f"val/objective_q{q:g}".replace(".", "_")]) for q in module.val_q]
    expected = sum(torch.log(torch.tensor(v)) for v in per_rate) / len(per_rate)
    assert float(trainer.callback_metrics["val/objective"]) == pytest.approx(float(expected), rel=1e-5)


def test_mosaics_in_training_validation_and_test_one_protocol(tmp_path):
    """scenario.mosaic=4: every step codes 4x4 mosaics (the rate over the mosaic's pixels, every other term per
    image); evaluation with another mosaic is refused."""
    dm, module = _module(tmp_path, "scenario.mosaic=4", "data.batch_size=16")
    x = torch.rand(16, 3, 32, 32)
    module.eval()
    with torch.no_grad():
        x_edit, x_hat, lik, pixels = module.code(x, 0.5)
    assert pixels == 128 * 128 and x_hat.shape == x.shape and lik["y"].shape[0] == 1  # one 128x128 mosaic
    from latentbridge.core.mosaic import tile, untile

    with torch.no_grad():
        y_hat, _ = module.codec.latent(tile(module.edge(x, 0.5), 4)[0], module.ladder.gain(0.5))
        assert torch.equal(untile(module.codec.model.g_s(y_hat), 4, 16), x_hat)
