"""A lease on an output folder: one writer at a time, on local paths and gs:// alike.

    with Lease(output_url, "nestgen run configs/digits_vq.yaml"):
        ...                                   # renewed in the background; released on exit

The lease is a small JSON object `<folder>/_lease/<seq>.json` (owner id, host, pid, what
it is for, since, expires). The holder is the highest sequence number; taking the folder
means creating the next number with create-if-absent (`open(..., "xb")`: O_EXCL locally,
an `ifGenerationMatch=0` precondition on GCS), so of two writers racing for the same
number exactly one wins, also when they take over an expired lease. Reading the object
back after writing it catches stores that ignore the precondition. While held, the lease
is renewed every ttl/3; a holder that dies stops renewing, and once it expired the next
writer takes over. Releasing marks the lease expired (the number stays, so sequence
numbers only grow).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid

from nestgen.storage import join, url_to_fs

log = logging.getLogger(__name__)

LEASE_DIR = "_lease"
TTL_S = 300.0


class LeaseHeld(RuntimeError):
    """Another writer holds the folder's lease; the message names it."""


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


class Lease:
    def __init__(self, folder_url: str, purpose: str, ttl_s: float = TTL_S):
        self.folder_url, self.purpose, self.ttl_s = folder_url.rstrip("/"), purpose, ttl_s
        self.fs, path = url_to_fs(join(self.folder_url, LEASE_DIR))
        self.dir = path.rstrip("/")
        self.owner = uuid.uuid4().hex
        self.seq: int | None = None
        self.since = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading the store --------------------------------------------------------------
    def _path(self, seq: int) -> str:
        return f"{self.dir}/{seq:010d}.json"

    def _current(self) -> tuple[int, dict | None]:
        """(highest sequence number or -1, its record; None while it is being written)."""
        try:
            names = self.fs.ls(self.dir, detail=False, refresh=True)
        except FileNotFoundError:
            return -1, None
        seqs = sorted(int(n.rsplit("/", 1)[-1][:-5]) for n in names
                      if n.endswith(".json") and n.rsplit("/", 1)[-1][:-5].isdigit())
        if not seqs:
            return -1, None
        try:
            return seqs[-1], json.loads(self.fs.cat_file(self._path(seqs[-1])))
        except (FileNotFoundError, ValueError):
            return seqs[-1], None

    def _describe(self, rec: dict | None) -> str:
        if rec is None:
            return f"{self.folder_url} is being taken by another writer right now"
        return (f"{self.folder_url} is in use by {rec['purpose']!r} (owner {rec['owner'][:8]} on host "
                f"{rec['host']}, pid {rec['pid']}, since {_iso(rec['since'])}; its lease expires "
                f"{_iso(rec['expires'])} unless renewed). Wait for it to finish; a holder that died is "
                f"taken over once its lease has expired")

    # -- taking, renewing, releasing ----------------------------------------------------
    def _record(self) -> bytes:
        now = time.time()
        return json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                           "purpose": self.purpose, "since": self.since,
                           "expires": now + self.ttl_s}).encode()

    def acquire(self) -> Lease:
        seq, rec = self._current()
        if seq >= 0 and (rec is None or rec["expires"] > time.time()):
            raise LeaseHeld(self._describe(rec))
        if rec is not None:
            log.warning("taking over the expired lease of %s held by %s (pid %s on %s)",
                        self.folder_url, rec["purpose"], rec["pid"], rec["host"])
        self.since = time.time()
        self.fs.makedirs(self.dir, exist_ok=True)
        try:
            with self.fs.open(self._path(seq + 1), "xb") as f:
                f.write(self._record())
        except FileExistsError:
            raise LeaseHeld(self._describe(self._current()[1])) from None
        won = json.loads(self.fs.cat_file(self._path(seq + 1)))
        if won["owner"] != self.owner:
            raise LeaseHeld(self._describe(won))
        self.seq = seq + 1
        return self

    def renew(self) -> None:
        """Push the expiry out; raises LeaseHeld when another writer has taken the folder over."""
        seq, rec = self._current()
        if seq != self.seq or rec is None or rec["owner"] != self.owner:
            raise LeaseHeld(f"lost the lease: {self._describe(rec)}")
        self.fs.pipe_file(self._path(self.seq), self._record())

    def release(self) -> None:
        if self.seq is None:
            return
        seq, rec = self._current()
        if seq == self.seq and rec is not None and rec["owner"] == self.owner:
            self.fs.pipe_file(self._path(self.seq), json.dumps({**rec, "expires": 0.0, "released": True}).encode())
        self.seq = None

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
            except LeaseHeld as e:
                log.error("%s", e)
                return
            except OSError as e:              # a storage hiccup: the next round tries again
                log.warning("renewing the lease of %s failed: %s", self.folder_url, e)

    def __enter__(self) -> Lease:
        self.acquire()
        self._thread = threading.Thread(target=self._renew_loop, name="lease-renewal", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.release()
