"""The test environment: offline, wandb offline and silent. Helpers live in tests/helpers/."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import gc  # noqa: E402

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
