"""A lock for shared file systems (issue: SLURM as it behaves): ``flock`` is node-local on NFS mounted ``nolock``, on
Lustre with ``localflock`` and on BeeGFS, so two nodes could build the same latent-cache shard or lose each other's
job-record updates; and a soft lock file left by a killed holder is never freed.

``LeaseLock(path)`` creates ``path`` with ``O_CREAT | O_EXCL`` (atomic on NFSv3+, Lustre, BeeGFS and local disks),
writing the holder's host, pid, a token and the time its lease ends. While held, a thread renews the lease every
``lease_s / 3``. A waiter takes over a lock whose lease has ended (a holder that died on any host: it renews no
more), or whose holder is a dead process on this host; it does so by renaming the stale file to a unique name first
(only one waiter's rename succeeds) and then creating its own. ``timeout_s``: how long to wait before a
``LockTimeout`` naming the holder.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from latentbridge.core.errors import LatentBridgeError


class LockTimeout(LatentBridgeError):
    """The lock stayed held by a live holder for longer than the caller would wait."""


class LeaseLock:
    def __init__(self, path: str | Path, lease_s: float = 60.0, timeout_s: float | None = None,
                 poll_s: float = 0.2) -> None:  # fmt: skip
        self.path, self.lease_s, self.timeout_s, self.poll_s = Path(path), float(lease_s), timeout_s, float(poll_s)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # -- what a holder writes -------------------------------------------------------------------------------
    def _record(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                           "expires": time.time() + self.lease_s}).encode()  # fmt: skip

    def holder(self) -> dict[str, Any] | None:
        """The current holder's record (None: free, or a file being written or removed)."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _stale(self, rec: dict[str, Any] | None) -> bool:
        if rec is None:  # unreadable: give a writer a moment (its mtime tells how old it is)
            try:
                return time.time() - self.path.stat().st_mtime > self.lease_s
            except OSError:
                return False
        if float(rec.get("expires", 0)) < time.time():
            return True
        if rec.get("host") == socket.gethostname():
            try:
                os.kill(int(rec["pid"]), 0)
            except ProcessLookupError:
                return True  # its process is gone (on this host we can tell at once)
            except (PermissionError, OSError, ValueError, KeyError):
                return False
        return False

    # -- acquire / release ----------------------------------------------------------------------------------
    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                rec = self.holder()
                if self._stale(rec):
                    self._break(rec)
                    continue
                if self.timeout_s is not None and time.monotonic() - started > self.timeout_s:
                    who = f"{rec.get('host')} pid {rec.get('pid')}" if rec else "an unknown holder"
                    raise LockTimeout(f"{self.path}: held by {who} for more than {self.timeout_s:g} s") from None
                time.sleep(self.poll_s)
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(self._record())
                f.flush()
                os.fsync(f.fileno())
            self._stop.clear()
            self._renewer = threading.Thread(target=self._renew, daemon=True, name=f"lease:{self.path.name}")
            self._renewer.start()
            return

    def _break(self, rec: dict[str, Any] | None) -> None:
        """Move a stale lock aside; of several waiters only one rename succeeds, the others retry."""
        aside = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex}")
        try:
            if rec is not None and self.holder() != rec:  # renewed or replaced meanwhile
                return
            os.rename(self.path, aside)
        except OSError:
            return
        try:
            os.unlink(aside)
        except OSError:
            pass

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            if (self.holder() or {}).get("token") != self.token:
                return  # taken over (we were stalled past our lease): nothing of ours to renew
            tmp = self.path.with_name(f"{self.path.name}.{self.token}")
            try:
                tmp.write_bytes(self._record())
                os.replace(tmp, self.path)
            except OSError:
                pass

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        if (self.holder() or {}).get("token") == self.token:
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def __enter__(self) -> LeaseLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
