"""The shape of the code: imports only point down the layers, no script imports another, the console scripts and
the library work from any directory, and nothing installs the name ``models``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.config import ROOT

#: the layers, bottom first (README "Layout"); a module may import its own subpackage and anything lower
LAYERS = [
    ("latentbridge", "latentbridge.core"),
    ("latentbridge.codecs", "latentbridge.vision", "latentbridge.nn"),
    ("latentbridge.losses",),
    ("latentbridge.metrics",),
    ("latentbridge.routes",),
    ("datamodules",),
    ("lightning_modules",),
    ("latentbridge.runs",),
    ("latentbridge.analysis",),
    ("latentbridge.mllm",),
    ("latentbridge.serve",),
    ("latentbridge.workflows",),
    ("latentbridge.cli",),
]
SCRIPTS = ("train", "evaluate", "reproduce", "mllm_evaluate", "complexity")


def _unit(module: str) -> tuple[int, str]:
    """(layer rank, unit name) of a project module: the longest listed prefix (``latentbridge`` itself only names
    the package's ``__init__``, so a new subpackage fails here until it is given a layer)."""
    best = None
    for rank, units in enumerate(LAYERS):
        for unit in units:
            inside = module == unit or (unit != "latentbridge" and module.startswith(unit + "."))
            if inside and (best is None or len(unit) > len(best[1])):
                best = (rank, unit)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and to the README's layout")
    return best


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[str]:
    """The modules a file imports; ``from pkg import name`` counts as ``pkg.name`` when that is a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [f"{node.module}.{a.name}" for a in node.names if _is_module(f"{node.module}.{a.name}")]
            found += modules or [node.module]
    return found


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _project(name: str) -> bool:
    return name.split(".")[0] in ("latentbridge", "lightning_modules", "datamodules", "models", *SCRIPTS)


def test_imports_only_point_down_the_layers():
    upward = []
    files = [f for pkg in ("latentbridge", "lightning_modules", "datamodules") for f in (ROOT / pkg).rglob("*.py")]
    assert len(files) > 40
    for f in files:
        rank, unit = _unit(_module_name(f))
        for imported in filter(_project, _imports(f)):
            if imported.split(".")[0] in (*SCRIPTS, "models"):
                upward.append(f"{f.relative_to(ROOT)} imports the script or retired package {imported}")
                continue
            their_rank, their_unit = _unit(imported)
            if their_rank > rank or (their_rank == rank and their_unit != unit):
                upward.append(f"{f.relative_to(ROOT)} ({unit}) imports {imported} ({their_unit})")
    assert not upward, "\n".join(upward)


def test_no_script_imports_another_or_edits_sys_path():
    scripts = [ROOT / f"{s}.py" for s in SCRIPTS] + sorted((ROOT / "scripts").glob("*.py"))
    for f in scripts:
        text = f.read_text()
        assert "sys.path" not in text, f"{f.name} edits sys.path"
        for imported in _imports(f):
            assert imported.split(".")[0] not in SCRIPTS, f"{f.name} imports the script {imported}"
    for s in SCRIPTS:  # each top-level script is a shim over latentbridge.cli
        assert len((ROOT / f"{s}.py").read_text().splitlines()) <= 10


@pytest.mark.parametrize(
    "command",
    [
        ["-c", "import latentbridge.analysis.findings, latentbridge.workflows.reproduce"],
        ["-c", "import importlib.util as u; assert u.find_spec('models') is None, 'models is installed'"],
    ],
)
def test_the_library_imports_from_another_directory(command, tmp_path):
    res = subprocess.run([sys.executable, *command], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]


def _script(name: str) -> str:
    path = Path(sys.executable).parent / name
    assert path.is_file(), f"console script {name} is not installed (make install)"
    return str(path)


def test_console_scripts_work_from_another_directory(tmp_path):
    logs = f"paths.log_dir={tmp_path / 'logs'}"
    res = subprocess.run(
        [_script("latentbridge-complexity"), "codec.checkpoint=null", "vision.checkpoint=null", logs],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0 and "transform-neck" in res.stdout, res.stderr[-2000:]
    assert list((tmp_path / "logs" / "complexity").rglob("complexity.json"))
    res = subprocess.run([_script("latentbridge-train"), "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0 and "experiment_name: mini_d1" in res.stdout, res.stderr[-2000:]
    for name, args, message in (
        ("latentbridge-evaluate", [logs], "error: runs / sweep: no run directories given"),
        ("latentbridge-reproduce", [logs, "only=[nope]"], "error: only: unknown run(s) ['nope']"),
        ("latentbridge-mllm-evaluate", [logs], "error: runs: give the trained runs"),
        (
            "latentbridge-codec",
            ["decode", "--codec", "nope.pt", "x.lbr", "-o", "."],
            "error: codec checkpoint: nope.pt",
        ),
    ):
        res = subprocess.run([_script(name), *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert res.returncode == 2 and res.stderr.strip().startswith(message), (name, res.stderr[-2000:])
        assert len(res.stderr.strip().splitlines()) == 1, (name, res.stderr)


def test_the_edge_codec_needs_none_of_the_extras(tmp_path):
    """``latentbridge-codec`` on an edge device: the base install (torch, torchvision, compressai) is enough."""
    extras = ["lightning", "hydra", "omegaconf", "wandb", "transformers", "submitit", "open_clip", "torchmetrics"]
    code = (
        f"import sys\nfor name in {extras!r}:\n    sys.modules[name] = None  # importing it now fails\n"
        "import latentbridge.cli.codec, latentbridge.codecs.bitstream\n"
        "sys.argv = ['latentbridge-codec', 'decode', '--codec', 'no.pt', 'x.lbr', '-o', '.']\n"
        "sys.exit(latentbridge.cli.codec.main())\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and res.stderr.strip() == "error: codec checkpoint: no.pt does not exist", res.stderr
