"""d1 with DDP over 2 CPU processes (gloo). ddp_spawn: under pytest, "ddp" would re-run pytest in rank 1."""

import json

import pytest
import torch
from helpers.config import TINY_D1, hydra_cfg

from latentbridge.workflows.train import run as train_run


@pytest.mark.slow
def test_d1_trains_with_two_processes(tmp_path):
    overrides = [
        *TINY_D1,
        "trainer=ddp_cpu",
        "trainer.strategy=ddp_spawn",
        "trainer.devices=2",
        "callbacks.progress_bar=null",
        "data.train_size=64",
        "data.batch_size=8",
    ]
    with hydra_cfg(overrides, tmp_path) as cfg:
        results = train_run(cfg)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["metrics"] == results["metrics"] and 0 <= saved["metrics"]["top1_neck"] <= 1
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    # 64 images, batch 8, 2 ranks (distributed sampler, drop_last): 4 optimizer steps per rank in one epoch
    assert ckpt["global_step"] == 4


@pytest.mark.slow
def test_an_epoch_is_the_same_number_of_samples_on_one_and_on_two_processes(tmp_path):
    """epoch_samples: 2 processes take half the steps of 1 per epoch (the paper's schedule, twice as fast); the
    two ranks read the latent cache (litdata partitions it between them)."""
    base = [*TINY_D1, "callbacks.progress_bar=null", "data.train_size=64", "data.batch_size=8", "epoch_samples=32"]
    steps = {}
    ddp = ["trainer=ddp_cpu", "trainer.strategy=ddp_spawn", "trainer.devices=2"]
    for devices in (1, 2):
        overrides = [*base, "data.cache=true", *(ddp if devices == 2 else [])]
        with hydra_cfg(overrides, tmp_path / str(devices)) as cfg:
            train_run(cfg)  # under ddp_spawn the parent's trainer does not see the steps: read the checkpoint
        ckpt = torch.load(tmp_path / str(devices) / "run" / "checkpoints" / "last.ckpt", weights_only=True)
        steps[devices] = ckpt["global_step"]
    assert steps == {1: 32 // 8, 2: 32 // (8 * 2)}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(tmp, overrides, nodes: int = 1):
    """Train with ``tests/helpers/node.py``: one process, or ``nodes`` "nodes" x 1 process on localhost, each
    started the way a cluster starts them (MASTER_ADDR / MASTER_PORT / NODE_RANK, Lightning's environment)."""
    import os
    import subprocess
    import sys

    from helpers.config import ROOT

    from latentbridge.core.config import hydra_quote

    paths = [f"paths.output_dir={hydra_quote(tmp / 'run')}", f"paths.cache_dir={hydra_quote(tmp / 'cache')}"]
    base = {**os.environ, "LB_FIXED_NOISE": "1"}
    cmd = [sys.executable, str(ROOT / "tests" / "helpers" / "node.py"), *overrides, *paths]
    if nodes == 1:
        procs = [subprocess.Popen(cmd, env=base, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    else:
        port = str(_free_port())
        dist = ["trainer=ddp_cpu", "trainer.devices=1", f"trainer.num_nodes={nodes}"]
        procs = [
            subprocess.Popen(
                [*cmd, *dist],
                env={**base, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODE_RANK": str(rank)},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for rank in range(nodes)
        ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    return torch.load(tmp / "run" / "checkpoints" / "last.ckpt", weights_only=True)


def _same_weights(a, b):
    assert a["global_step"] == b["global_step"] == 4
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=1e-4, atol=1e-5, msg=f"{k} differs")


@pytest.mark.slow
def test_two_nodes_take_the_steps_of_one_process_with_the_same_global_batch_d1_and_d2(tmp_path):
    """2 nodes x 1 process (gloo, MASTER_ADDR / NODE_RANK as on a cluster), batch 8 each, against 1 process with
    batch 16: the same samples per step (EpochSampler splits one permutation), gradients averaged by DDP, so the
    same weights after 4 steps; for d1 (neck) and d2 (codec + neck, quantization noise fixed per value)."""
    common = [*TINY_D1, "data.train_size=64", "+trainer.num_sanity_val_steps=0"]
    single = _train(tmp_path / "d1_single", [*common, "data.batch_size=16"])
    double = _train(tmp_path / "d1_nodes", [*common, "data.batch_size=8"], nodes=2)
    _same_weights(single, double)
    assert any(k.startswith("neck.") for k in single["state_dict"])

    d1_dir = tmp_path / "d1_single" / "run"
    phase2 = [*common, "experiment=mini_d2", "data=synthetic", "data.cache=false", "epoch_samples=null",
              f"scenario.init_from='{d1_dir}'", "trainer.max_epochs=1"]  # fmt: skip
    single = _train(tmp_path / "d2_single", [*phase2, "data.batch_size=16"])
    double = _train(tmp_path / "d2_nodes", [*phase2, "data.batch_size=8"], nodes=2)
    _same_weights(single, double)
    assert any(k.startswith("codec.") for k in single["state_dict"])


def _processes(tmp, overrides, nodes: int = 2) -> list[int]:
    """``nodes`` x 1 process on localhost as a cluster starts them, real (not fixed) quantization noise; the exit
    codes."""
    import os
    import subprocess
    import sys

    from helpers.config import ROOT

    from latentbridge.core.config import hydra_quote

    paths = [f"paths.output_dir={hydra_quote(tmp / 'run')}", f"paths.cache_dir={hydra_quote(tmp / 'cache')}"]
    port = str(_free_port())
    dist = ["trainer=ddp_cpu", "trainer.devices=1", f"trainer.num_nodes={nodes}"]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
           "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}  # fmt: skip
    cmd = [sys.executable, str(ROOT / "tests" / "helpers" / "node.py"), *overrides, *paths, *dist]
    procs = [subprocess.Popen(cmd, env={**env, "NODE_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(nodes)]  # fmt: skip
    logs = [p.communicate(timeout=600)[0] for p in procs]
    (tmp / "logs.txt").write_text("\n".join(logs))
    return [p.returncode for p in procs]


@pytest.mark.slow
def test_two_processes_preempted_mid_epoch_resume_to_exactly_the_weights_of_the_run_left_alone(tmp_path):
    """Phase 0 (every step draws quantization noise, different on each rank) on 2 processes: preempted by SIGUSR2 in
    its second epoch, resumed by rerunning the same command, it ends bit-identical to the uninterrupted 2-process
    run: each rank gets its own RNG states back (a checkpoint used to carry rank 0's only)."""
    codec = ["experiment=mini_codec", "data=synthetic", "codec.checkpoint=null", "vision.checkpoint=null",
             "logger=none", "callbacks.progress_bar=null", "trainer.enable_model_summary=false", "epoch_samples=null",
             "data.train_subset=null", "data.val_subset=null", "data.train_size=64", "data.batch_size=8",
             "trainer.max_epochs=3", "scenario.scheduler.milestones=[2]",
             "+trainer.num_sanity_val_steps=0"]  # fmt: skip
    assert _processes(tmp_path / "alone", codec) == [0, 0], (tmp_path / "alone" / "logs.txt").read_text()[-3000:]
    marker = tmp_path / "preempted-once"
    preempt = ["+callbacks.preempt._target_=helpers.interrupt.SignalAt", "+callbacks.preempt.step=6",
               "+callbacks.preempt.signal_name=SIGUSR2", f"+callbacks.preempt.once={marker}"]  # fmt: skip
    codes = _processes(tmp_path / "preempted", [*codec, *preempt])
    log = (tmp_path / "preempted" / "logs.txt").read_text()
    assert codes != [0, 0] and "training was preempted at epoch 1, step 7" in log, log[-3000:]
    mid = torch.load(tmp_path / "preempted" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert mid["global_step"] == 7
    codes = _processes(tmp_path / "preempted", [*codec, *preempt])  # the requeued job: the same command
    assert codes == [0, 0], (tmp_path / "preempted" / "logs.txt").read_text()[-3000:]
    a = torch.load(tmp_path / "alone" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "preempted" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 12
    differ = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not differ, f"{len(differ)} of {len(a['state_dict'])} tensors differ, e.g. {differ[:3]}"
    states = next(v for k, v in mid["callbacks"].items() if "ExactResume" in k)["rng_per_rank"]
    assert len(states) == 2 and not torch.equal(states[0]["torch"], states[1]["torch"])  # each rank its own


@pytest.mark.slow
def test_two_nodes_train_one_neck_for_every_rate_as_one_process_does(tmp_path):
    """d1_rates from a codec family's latent cache: every rank draws the same member at each step (a function of the
    step), so 2 nodes x batch 8 end at the weights of one process with batch 16 (ranks drawing different rates would
    average gradients of different members and differ)."""
    common = [*TINY_D1, "experiment=mini_d1_rates", "scenario.rates=[0.0001,0.0004]", "data.cache=true",
              "data.train_size=64", "data.val_size=40", "+trainer.num_sanity_val_steps=0"]  # fmt: skip
    single = _train(tmp_path / "single", [*common, "data.batch_size=16"])
    double = _train(tmp_path / "nodes", [*common, "data.batch_size=8"], nodes=2)
    _same_weights(single, double)
    assert any(k.startswith("neck.film.") for k in single["state_dict"])
