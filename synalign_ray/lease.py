"""The lease that keeps a second job out of an output folder a live job is writing: `_lease.json` (host, pid, a
heartbeat), refused while fresh, taken over once its job is gone (dead pid on this host, or a stale heartbeat).
"""

from __future__ import annotations

import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from typing import Any

from synalign_ray import io
from synalign_ray.config import StorageConfig
from synalign_ray.errors import StorageError, SynAlignError

log = logging.getLogger(__name__)

LEASE = "_lease.json"
# A lease whose heartbeat is older than this is stale (its job died on another host, or hung); the heartbeat is
# refreshed every LEASE_TIMEOUT_S / 6 seconds.
LEASE_TIMEOUT_S = 120.0


class LeaseError(SynAlignError):
    """Another live job holds the folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class FolderLease:
    """One job's hold on the folder `loc`: `acquire` before writing, `release` after; `lost` turns true when
    another job took the lease over while this one ran (its heartbeat stalled past the timeout)."""

    def __init__(self, loc: io.Location, storage: StorageConfig | None = None):
        self.loc = loc
        self.storage = storage
        self.lost = False
        self._token: str | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None


    def _body(self, started: float) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "token": self._token, "started": started,
                "heartbeat": time.time()}

    def read(self) -> dict[str, Any] | None:
        try:
            return io.read_manifest(self.loc, LEASE)
        except (ValueError, OSError):  # half-written or vanished between exists and open
            return None

    def stale_reason(self, lease: dict[str, Any], timeout: float = LEASE_TIMEOUT_S) -> str | None:
        """Why `lease` no longer blocks (its job is gone), or None when a live job may hold it."""
        age = time.time() - float(lease.get("heartbeat", 0))
        if age > timeout:
            return f"heartbeat {age:.0f} s old"
        if lease.get("host") == socket.gethostname() and not _pid_alive(int(lease.get("pid", -1))):
            return f"process {lease.get('pid')} on this host has exited"
        return None

    def acquire(self) -> None:
        """Refuse with LeaseError while another live job holds the folder; a stale lease is taken over."""
        lease = self.read()
        if lease is not None:
            why = self.stale_reason(lease)
            if why is None:
                raise LeaseError(f"{self.loc.url} is being written by another job (host {lease.get('host')}, pid "
                                 f"{lease.get('pid')}, heartbeat {time.time() - float(lease['heartbeat']):.0f} s "
                                 f"ago); wait for it to finish, stop it, or choose another output path (a lease "
                                 f"older than {LEASE_TIMEOUT_S:.0f} s counts as stale)")
            log.warning("%s: taking over a stale lease (%s)", self.loc.url, why)
        self._token = uuid.uuid4().hex
        started = time.time()
        io.write_manifest(self.loc, self._body(started), self.storage, name=LEASE)
        # Two jobs that start together both see no lease; the later write wins, and the earlier job finds a
        # token that is not its own here (neither storage offers an atomic create-if-absent through fsspec).
        time.sleep(0.2)
        now = self.read()
        if now is None or now.get("token") != self._token:
            self._token = None
            raise LeaseError(f"{self.loc.url}: another job took the folder's lease at the same moment; choose another "
                             "output path or wait for it")
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, args=(started,), daemon=True,
                                      name=f"synalign-lease-{posixpath.basename(self.loc.path)}")
        self._beat.start()

    def _heartbeat(self, started: float) -> None:
        while not self._stop.wait(LEASE_TIMEOUT_S / 6):
            try:
                current = self.read()
                if current is not None and current.get("token") != self._token:
                    log.error("%s: the lease was taken over by host %s pid %s", self.loc.url, current.get("host"),
                              current.get("pid"))
                    self.lost = True
                    return
                io.write_manifest(self.loc, self._body(started), self.storage, name=LEASE)
            except (StorageError, OSError) as err:  # a missed beat is retried; the timeout allows several
                log.warning("%s: lease heartbeat failed: %s", self.loc.url, err)

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still ours (idempotent)."""
        if self._token is None:
            return
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=30)
        current = self.read()
        if current is not None and current.get("token") == self._token:
            target = self.loc.join(LEASE).path
            if self.loc.fs.exists(target):
                self.loc.fs.rm(target)
        self._token = None
