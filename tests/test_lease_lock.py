"""The shared-file-system lock (issue: SLURM as it behaves): mutual exclusion between processes without flock, a
holder that died on another host is taken over once its lease ends (at once for a dead process on this host), a live
holder keeps its lock past its lease by renewing it, and a waiter that gives up names the holder."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time

import pytest

from latentbridge.core.lease_lock import LeaseLock, LockTimeout


def _count(path: str, n: int) -> None:
    for _ in range(n):
        with LeaseLock(path + ".lock", lease_s=5, poll_s=0.001):
            value = int(open(path).read())  # read-modify-write: lost updates without mutual exclusion
            time.sleep(0.001)
            with open(path, "w") as f:
                f.write(str(value + 1))


def test_two_processes_never_hold_it_at_once(tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_count, args=(str(counter), 40)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0] and counter.read_text() == "80"


def _stale(path, host, pid, expires_in):
    path.write_text(json.dumps({"host": host, "pid": pid, "token": "x", "expires": time.time() + expires_in}))


def test_a_holder_that_died_on_another_host_is_taken_over_when_its_lease_ends(tmp_path):
    lock = tmp_path / "state.json.lock"
    _stale(lock, "node-7", 4242, expires_in=-1)  # its lease ended: it renews no more
    with LeaseLock(lock, timeout_s=1) as held:
        assert held.holder()["token"] == held.token and held.holder()["pid"] == os.getpid()
    assert not lock.exists()
    _stale(lock, "node-7", 4242, expires_in=30)  # a live lease on another host: wait, then name the holder
    with pytest.raises(LockTimeout, match=r"state.json.lock: held by node-7 pid 4242 for more than 0.3 s"):
        LeaseLock(lock, timeout_s=0.3).acquire()


def test_a_dead_process_on_this_host_is_taken_over_at_once_and_an_old_empty_lock_file_too(tmp_path):
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = tmp_path / "shard.lock"
    _stale(lock, socket.gethostname(), int(dead.stdout), expires_in=300)
    started = time.monotonic()
    with LeaseLock(lock, timeout_s=5):
        assert time.monotonic() - started < 1
    lock.write_text("")  # the empty file filelock left behind, minutes old
    os.utime(lock, (time.time() - 600, time.time() - 600))
    with LeaseLock(lock, lease_s=60, timeout_s=5):
        pass


def test_a_live_holder_renews_its_lease_and_keeps_the_lock(tmp_path):
    lock = tmp_path / "cache.lock"
    with LeaseLock(lock, lease_s=0.3):
        time.sleep(1.0)  # three leases long: renewed, not stale
        with pytest.raises(LockTimeout):
            LeaseLock(lock, lease_s=0.3, timeout_s=0.5).acquire()
