"""A lease on an output folder: one writer at a time, on local paths and gs:// alike.

    with Lease(output_url, "nestgen run configs/digits_vq.yaml"):
        ...
        check(manifest_url)                   # right before each commit: raises LeaseLost
        write_json_atomic(manifest_url, ...)

The lease is a small JSON object `<folder>/_lease/<seq>.json` (owner id, host, pid, what
it is for, since, expires). The holder is the highest sequence number; taking the folder
means creating the next number with create-if-absent (`open(..., "xb")`: O_EXCL locally,
an `ifGenerationMatch=0` precondition on GCS), so of two writers racing for the same
number exactly one wins, also when they take over an expired lease. Reading the object
back after writing it catches stores that ignore the precondition. While held, the lease
is renewed every ttl/3; a holder that dies stops renewing, and once it expired the next
writer takes over. Releasing marks the lease expired (the number stays, so sequence
numbers only grow). A record nobody can read (a writer that crashed while creating it, a
truncated object) counts as being taken until its modification time plus the TTL passed.

A writer can lose its lease while it still runs: its renewals fail (storage unreachable,
writes refused) until the lease expired, or its process stalled past the TTL, and another
writer took over. Nothing stops it from writing then, so every commit (a manifest, LATEST,
a published checkpoint, a DAG step's marker) first calls `check(url)`, which raises
LeaseLost in the committing thread when a lease this process took on that folder (or one
above it) is lost: the renewal thread records a loss, and the check also reads the store
and the lease's expiry by this process's clock. The check narrows, but cannot close, the
window between it and the write; stores offer no fencing across objects.
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
RECORD_KEYS = ("owner", "host", "pid", "purpose", "since", "expires")


class LeaseHeld(RuntimeError):
    """Another writer holds the folder's lease; the message names it."""


class LeaseLost(LeaseHeld):
    """This writer's lease expired or was taken over: it must not commit anything more there."""


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


# the leases this process holds, so a commit anywhere in the process (a step's thread, a
# library call's caller) checks the lease of the folder it writes into without it being
# handed down through every signature
_held: set[Lease] = set()
_held_lock = threading.Lock()


def check(url: str) -> None:
    """Raise LeaseLost if a lease this process holds on `url` or a folder above it is lost.
    Call it right before each commit into a leased folder; without such a lease it does nothing."""
    fs, path = url_to_fs(url)
    path = path.rstrip("/")
    with _held_lock:
        leases = [le for le in _held if le.fs.protocol == fs.protocol
                  and (path == le.folder_path or path.startswith(le.folder_path + "/"))]
    for lease in leases:
        lease.check()


class Lease:
    def __init__(self, folder_url: str, purpose: str, ttl_s: float = TTL_S):
        self.folder_url, self.purpose, self.ttl_s = folder_url.rstrip("/"), purpose, ttl_s
        self.fs, path = url_to_fs(join(self.folder_url, LEASE_DIR))
        self.dir = path.rstrip("/")
        self.folder_path = self.dir[:-len(LEASE_DIR) - 1]
        self.owner = uuid.uuid4().hex
        self.seq: int | None = None
        self.since = 0.0
        self.expires = 0.0                    # in the record last written, by this process's clock
        self._renew_error = ""                # the last failed renewal's error, while they fail
        self._lost = ""                       # why, once the renewal thread found the lease lost
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading the store --------------------------------------------------------------
    def _path(self, seq: int) -> str:
        return f"{self.dir}/{seq:010d}.json"

    def _current(self) -> tuple[int, dict | None]:
        """(highest sequence number or -1, its record; None while it is unreadable)."""
        try:
            names = self.fs.ls(self.dir, detail=False, refresh=True)
        except FileNotFoundError:
            return -1, None
        seqs = sorted(int(n.rsplit("/", 1)[-1][:-5]) for n in names
                      if n.endswith(".json") and n.rsplit("/", 1)[-1][:-5].isdigit())
        if not seqs:
            return -1, None
        try:
            rec = json.loads(self.fs.cat_file(self._path(seqs[-1])))
        except (FileNotFoundError, ValueError):
            return seqs[-1], None
        return seqs[-1], rec if isinstance(rec, dict) and all(k in rec for k in RECORD_KEYS) else None

    def _unreadable_until(self, seq: int) -> float:
        """When the unreadable record `seq` stops counting as being taken: its modification
        time plus the TTL (its own TTL is in what cannot be read)."""
        return self.fs.modified(self._path(seq)).timestamp() + self.ttl_s

    def _holder(self, seq: int, rec: dict | None) -> str:
        if rec is None:
            return (f"being taken by another writer: its lease record {seq} is unreadable (being written, "
                    f"or left by a writer that crashed) and counts as held until "
                    f"{_iso(self._unreadable_until(seq))}")
        return (f"in use by {rec['purpose']!r} (owner {rec['owner'][:8]} on host {rec['host']}, pid "
                f"{rec['pid']}, since {_iso(rec['since'])}; its lease expires {_iso(rec['expires'])} "
                f"unless renewed)")

    def _describe(self, seq: int, rec: dict | None) -> str:
        return (f"{self.folder_url} is {self._holder(seq, rec)}. Wait for it to finish; a holder that died "
                f"is taken over once its lease has expired")

    # -- taking, renewing, releasing ----------------------------------------------------
    def _record(self, expires: float, **extra) -> bytes:
        return json.dumps({"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
                           "purpose": self.purpose, "since": self.since, "expires": expires, **extra}).encode()

    def acquire(self) -> Lease:
        seq, rec = self._current()
        if seq >= 0:
            free_at = self._unreadable_until(seq) if rec is None else rec["expires"]
            if free_at > time.time():
                raise LeaseHeld(self._describe(seq, rec))
            if rec is None or not rec.get("released"):      # a released lease is free, not taken over
                log.warning("taking over the expired lease of %s (record %d: %s)", self.folder_url, seq,
                            "unreadable" if rec is None else f"{rec['purpose']}, pid {rec['pid']} on {rec['host']}")
        self.since = time.time()
        expires = self.since + self.ttl_s
        self.fs.makedirs(self.dir, exist_ok=True)
        try:
            with self.fs.open(self._path(seq + 1), "xb") as f:
                f.write(self._record(expires))
        except FileExistsError:
            raise LeaseHeld(self._describe(*self._current())) from None
        won = json.loads(self.fs.cat_file(self._path(seq + 1)))
        if won["owner"] != self.owner:
            raise LeaseHeld(self._describe(seq + 1, won))
        self.seq, self.expires = seq + 1, expires
        self._renew_error = self._lost = ""
        with _held_lock:
            _held.add(self)
        return self

    def _taken_over(self) -> bool:
        """Whether the store shows another writer's record above ours. Our own record may read
        as unreadable while a renewal rewrites it: the number is ours alone (created exclusively)."""
        seq, rec = self._current()
        return seq != self.seq or (rec is not None and rec["owner"] != self.owner)

    def _why_lost(self) -> str:
        """What happened, or '' while the lease holds (by this process's clock and the store)."""
        if self._lost:
            return self._lost
        if time.time() >= self.expires:
            failing = f" after its renewals failed ({self._renew_error})" if self._renew_error else " without being renewed"
            return f"it expired at {_iso(self.expires)}{failing}"
        return "another writer took it over" if self._taken_over() else ""

    def _lost_error(self, why: str) -> LeaseLost:
        """One line: what happened, who holds the folder now, what to do."""
        try:
            seq, rec = self._current()
            holder = "nobody has taken it over yet" if seq == self.seq else f"it is now {self._holder(seq, rec)}"
        except OSError as e:
            holder = f"its current holder could not be read ({e})"
        return LeaseLost(f"lost the lease on {self.folder_url} ({why}); {holder}. This {self.purpose!r} "
                         f"commits nothing more there: let that writer finish, then run again "
                         f"(or give concurrent runs their own output folders)")

    def check(self) -> None:
        """Raise LeaseLost unless this process still holds the lease."""
        why = "it was released" if self.seq is None else self._why_lost()
        if why:
            raise self._lost_error(why)

    def renew(self) -> None:
        """Push the expiry out; raises LeaseLost when another writer has taken the folder over."""
        if self._taken_over():
            raise self._lost_error("another writer took it over")
        expires = time.time() + self.ttl_s
        self.fs.pipe_file(self._path(self.seq), self._record(expires))
        self.expires, self._renew_error = expires, ""

    def release(self) -> None:
        with _held_lock:
            _held.discard(self)
        if self.seq is None:
            return
        if not self._taken_over():
            self.fs.pipe_file(self._path(self.seq), self._record(0.0, released=True))
        self.seq = None

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
            except LeaseLost as e:
                self._lost = "another writer took it over"
                log.error("%s", e)
                return
            except OSError as e:              # a storage hiccup: the next round tries again, until it expired
                self._renew_error = f"{type(e).__name__}: {e}"
                if time.time() >= self.expires:
                    self._lost = self._why_lost()
                    log.error("%s", self._lost_error(self._lost))
                    return
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
