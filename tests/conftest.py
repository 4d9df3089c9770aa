"""The test environment: offline, wandb offline and silent. Helpers live in tests/helpers/."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import gc  # noqa: E402
import stat  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _release_memory(request):
    """After each slow test (models at their real size), give freed memory back to the system: one pytest process
    runs the whole slow suite (it was once OOM-killed at 23 GB of 24, when finished fits leaked their models)."""
    yield
    if request.node.get_closest_marker("slow"):
        gc.collect()
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:  # not glibc
            pass


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """SLURM stand-ins on PATH (test_launch, test_slurm): sbatch numbers jobs and keeps their scripts; sacct
    answers the states in ``states.json`` (PENDING when absent, may be UNKNOWN); ``scontrol requeue <id>`` puts that
    id back to PENDING, as SLURM does."""
    bin_dir, spool = tmp_path / "bin", tmp_path / "spool"
    bin_dir.mkdir()
    spool.mkdir()
    states = spool / "states.json"
    scripts = {
        "sbatch": f"""#!/usr/bin/env python3
import pathlib, shutil, sys
spool = pathlib.Path({str(spool)!r})
n = len(list(spool.glob('job-*.sh'))) + 101
shutil.copy(sys.argv[-1], spool / f'job-{{n}}.sh')
print(f'Submitted batch job {{n}}')
""",
        "sacct": f"""#!/usr/bin/env python3
import json, pathlib, sys
f = pathlib.Path({str(states)!r})
states = json.loads(f.read_text()) if f.exists() else {{}}
ids = [sys.argv[i + 1] for i, a in enumerate(sys.argv) if a == '-j']
print('JobID|State|NodeList')
for i in ids:
    for j in i.split(','):
        print(f"{{j}}|{{states.get(j, 'PENDING')}}|node1")
""",
        "scontrol": f"""#!/usr/bin/env python3
import json, pathlib, sys
f = pathlib.Path({str(states)!r})
states = json.loads(f.read_text()) if f.exists() else {{}}
if sys.argv[1] == 'requeue':
    states[sys.argv[2]] = 'PENDING'
    f.write_text(json.dumps(states))
""",
        "srun": "#!/bin/sh\nexit 0\n",
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755 | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return spool
