"""The configs compose (offline) into what the paper and the README say."""

import subprocess
import sys

import pytest
from helpers.config import ROOT, hydra_cfg

EXPERIMENTS = ["mini_d1", "mini_d2", "mini_d3", "mini_post_processing", "mini_codec", "mini_teacher"]
EXPERIMENTS += ["paper_d1", "paper_d2", "paper_d3", "paper_post_processing", "paper_codec", "paper_d1_llava"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment, tmp_path):
    with hydra_cfg([f"experiment={experiment}"], tmp_path) as cfg:
        assert cfg.task_name == experiment


def test_paper_d1_matches_the_paper(tmp_path):
    with hydra_cfg(["experiment=paper_d1"], tmp_path) as cfg:
        assert cfg.codec.name.startswith("elic2022") and cfg.codec.arch.M == 320 and cfg.codec.arch.N == 192
        assert cfg.vision.model_name == "ViT-L-14-quickgelu" and cfg.vision.pretrained == "openai"
        assert cfg.data.image_size == 256 and cfg.data.batch_size == 32
        assert (cfg.loss.e1, cfg.loss.e2, cfg.loss.beta / cfg.loss.alpha) == (20, 40, 100)
        assert cfg.loss.similarity == "cosine"
        assert cfg.scenario.skip_blocks == 2
        optimizer = {k: v for k, v in cfg.scenario.optimizer.items() if not k.startswith("_")}
        assert cfg.scenario.optimizer._target_ == "torch.optim.Adam" and cfg.scenario.optimizer._partial_
        assert optimizer == {"lr": 1e-4, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "fused": True}
        assert cfg.scenario.scheduler._target_ == "torch.optim.lr_scheduler.MultiStepLR"
        assert list(cfg.scenario.scheduler.milestones) == [20] and cfg.scenario.scheduler.gamma == 0.1
        assert (
            cfg.trainer.max_epochs == 60 and cfg.epoch_samples == 3337 * 32 and cfg.trainer.limit_train_batches is None
        )


def test_paper_phase2_and_post_processing_match_the_paper(tmp_path):
    for scenario, gamma in (("d2", 65025.0), ("d3", 0.0)):
        with hydra_cfg([f"experiment=paper_{scenario}"], tmp_path) as cfg:
            assert cfg.scenario._target_ == f"lightning_modules.{scenario}.{scenario.upper()}Module"
            assert cfg.loss._target_ == "latentbridge.losses.joint.JointLoss" and cfg.loss.gamma == gamma
            assert cfg.loss.delta * 60 == 65025.0 and cfg.loss.lmbda == cfg.codec.lmbda  # gamma:delta = 60:1
            assert (
                cfg.codec.arch.M == 320
                and cfg.vision.model_name == "ViT-L-14-quickgelu"
                and cfg.scenario.skip_blocks == 2
            )
    from omegaconf import OmegaConf

    composed = []
    for experiment in ("paper_d2", "paper_d3"):
        with hydra_cfg([f"experiment={experiment}"], tmp_path) as cfg:
            composed.append(OmegaConf.to_container(cfg, resolve=False))
    a, b = composed
    differ = {k for k in a if a[k] != b[k]}
    assert differ == {"experiment_name", "scenario", "loss"}  # paper_d3 extends paper_d2 (task_name derives)
    assert {k for k in a["scenario"] if a["scenario"][k] != b["scenario"].get(k)} == {"_target_"}
    with hydra_cfg(["experiment=paper_post_processing"], tmp_path) as cfg:
        assert (cfg.scenario.post.base_channels, cfg.scenario.post.depth) == (64, 4)  # 31.04M (test_phase2)
        assert cfg.loss._target_ == "latentbridge.losses.surrogate.SurrogateLoss" and cfg.loss.e1 == 20


def test_paper_d1_builds_with_random_weights_and_the_table3_neck(tmp_path):
    """The real paper module (ELIC + ViT-L/14) instantiates offline; the neck it builds has 13,191,168 params."""
    from latentbridge.runs import build_scenario

    with hydra_cfg(["experiment=paper_d1", "codec.checkpoint=null", "vision.pretrained=null"], tmp_path) as cfg:
        module = build_scenario(cfg)
    assert sum(p.numel() for p in module.neck.parameters()) == 13_191_168
    assert module.neck.grid_size == (16, 16) and module.vision.grid_size == (16, 16)
    assert all(p.requires_grad for p in module.neck.parameters())
    assert not any(p.requires_grad for p in module.codec.parameters())
    assert not any(p.requires_grad for p in module.vision.parameters())


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(ROOT)},
    )


def test_cli_composes_paper_d1_without_network():
    res = _cli("experiment=paper_d1", "--cfg", "job")
    assert res.returncode == 0, res.stderr
    assert "ViT-L-14" in res.stdout and "elic2022-chandelier" in res.stdout


def test_cli_unknown_codec_name_is_one_line_before_any_preparation(tmp_path):
    # an empty cache: a name check that came after preparing the mini teacher would take minutes (timeout)
    res = _cli(
        "codec.name=nope", f"paths.log_dir={tmp_path}", f"paths.cache_dir={tmp_path}/cache", "logger=none", timeout=60
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("error: codec.name: unknown codec 'nope'")
    assert "Traceback" not in res.stderr


def test_cli_unknown_config_option_names_the_group(tmp_path):
    res = _cli("codec=nope", f"paths.log_dir={tmp_path}")
    assert res.returncode != 0
    assert "codec/nope" in res.stderr and "Traceback" not in res.stderr


def test_cli_missing_data_root_is_one_line(tmp_path):
    res = _cli(
        "data.root=/nonexistent/fmnist",
        f"paths.log_dir={tmp_path}",
        f"paths.cache_dir={tmp_path}/c",
        "codec.checkpoint=null",
        "vision.checkpoint=null",
        "logger=none",
    )
    assert res.returncode == 2, res.stderr[-2000:]
    assert (
        res.stderr.strip().splitlines()[-1] == "error: data.root: /nonexistent/fmnist does not exist "
        "(apt-get install dataset-fashion-mnist)"
    )


def test_cli_missing_mandatory_value_names_the_key(tmp_path):
    res = _cli("experiment=paper_d1", f"paths.log_dir={tmp_path}", "logger=none")
    assert res.returncode == 2
    assert "codec.checkpoint" in res.stderr.strip().splitlines()[-1] or "data.root" in res.stderr


def test_slurm_launcher_follows_the_trainer(tmp_path):
    from helpers.config import CONF
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2"],
            return_hydra_config=True,
        )
        launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
        assert launcher["_target_"].endswith("SlurmLauncher")
        assert (cfg.hydra.launcher.nodes, cfg.hydra.launcher.tasks_per_node, cfg.hydra.launcher.gpus_per_node) == (
            2,
            8,
            8,
        )
        assert cfg.trainer.strategy._target_.endswith("DDPStrategy") and cfg.trainer.accelerator == "gpu"
        assert cfg.trainer.strategy.broadcast_buffers is False  # constant buffers are not re-sent every step
