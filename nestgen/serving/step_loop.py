"""A replica's decode loop at step granularity (serve.batching: step; issue 23).

Requests wait in a bounded queue and join the running set at the next step boundary, as many
as fit under the cap on active rows; each tick advances every active row one step
(nestgen.decoding.step_decoder shares forward passes across requests, schedules and
progress); a request whose rows are done is answered at that tick, one whose client went away
(cancel) or whose decode ran past the deadline is dropped at the next boundary. A failing
tick fails the requests it was running, and the loop lives on.

Plain Python, thread-safe at its edges: submit from any thread (the HTTP handlers), run_forever
(or tick) in one decode thread. Results come back as concurrent.futures.Future, which an
asyncio handler awaits with asyncio.wrap_future; cancelling the Future (wrap_future does, when
its waiter is cancelled) drops the request's rows at the next step boundary.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import torch

from nestgen.decoding.step_decoder import Row, StepDecoder
from nestgen.flops import decode_flops
from nestgen.serving.job import Job
from nestgen.serving.request import DecodeFailed, RequestError

log = logging.getLogger(__name__)
SPEED_EMA = 0.2       # weight of a tick's speed in gflops_per_s


def overloaded(max_queued_rows: int, retry_after_s: int) -> RequestError:
    return RequestError(f"this replica's queue is full ({max_queued_rows} rows waiting, serve.max_queued_rows); "
                        f"retry after {retry_after_s} s", 503, retry_after_s)


def past_deadline(deadline_s: float, retry_after_s: int) -> RequestError:
    return RequestError(f"the request ran past this service's deadline of {deadline_s:g} s "
                        "(serve.decode_deadline_s)", 503, retry_after_s)


@dataclass(frozen=True)
class StepEvent:
    """A request's state after one of its steps (the per-step hook's argument)."""
    step: int                 # steps done, 1..steps
    steps: int                # K of its schedule
    schedule: str
    tokens: torch.Tensor      # (rows, N) on the CPU, the mask id where still masked
    masked: torch.Tensor      # (rows, N) bool


@dataclass(frozen=True)
class StepResult:
    """What a finished request gets: its tokens and how its decode went."""
    tokens: torch.Tensor      # (rows, N) on the CPU
    queue_wait_s: float       # from submit to joining the running set
    decode_s: float           # from joining to its last step
    ticks: int                # steps run (= the schedule's K)
    peak_rows: int            # the most rows in flight in one of its steps (its own included)
    peak_requests: int        # the most requests in flight in one of its steps


class LoopMetrics:
    """Where the loop reports (no-op here; pipelines.serve.metrics exports them as Ray Serve metrics)."""

    def joined(self, queue_wait_s: float) -> None:
        pass

    def forward(self, factor: int, full_pass: bool, lanes: int) -> None:
        pass

    def tick(self, seconds: float, active_rows: int, queued_rows: int) -> None:
        pass


@dataclass
class _Ticket:
    job: Job
    future: Future
    on_step: Callable[[StepEvent], None] | None
    submitted: float
    gflops: float             # the job's whole decode, all its rows
    rows: list[Row] = field(default_factory=list)
    joined: float = 0.0
    peak_rows: int = 0
    peak_requests: int = 0


class StepLoop:
    def __init__(self, decoder: StepDecoder, max_active_rows: int, max_queued_rows: int, deadline_s: float,
                 retry_after_s: int = 1, metrics: LoopMetrics | None = None, gflops_per_s: float | None = None):
        """gflops_per_s: the speed to assume until the first tick has measured one (a whole
        decode's, timed at start-up)."""
        self.decoder = decoder
        self.max_active_rows, self.max_queued_rows = max_active_rows, max_queued_rows
        self.deadline_s, self.retry_after_s = deadline_s, retry_after_s
        self.metrics = metrics or LoopMetrics()
        self._queue: deque[_Ticket] = deque()
        self._active: list[_Ticket] = []
        self.queued_rows = 0    # rows in _queue, and in _active (kept as counts: read from any thread)
        self.active_rows = 0
        self._lock = threading.Condition()
        self._tick_since: float | None = None    # monotonic start of the tick in flight
        # GFLOPs of row-steps per second of tick, a moving average from the first tick on: the
        # speed this replica sustains with its traffic's mix and its machine's load
        self.gflops_per_s = gflops_per_s
        self._measured = False

    # ---- any thread
    def submit(self, job: Job, on_step: Callable[[StepEvent], None] | None = None) -> Future:
        """Queue `job`; its Future resolves to a StepResult (or a RequestError). A 503
        RequestError when its rows would take the queue past max_queued_rows."""
        n_cond = 0 if job.cond is None else job.cond.shape[1]
        gflops = decode_flops(self.decoder.model.cfg, job.decode, n_cond).gflops * job.rows
        with self._lock:
            if self.queued_rows + job.rows > self.max_queued_rows:
                raise overloaded(self.max_queued_rows, self.retry_after_s)
            ticket = _Ticket(job, Future(), on_step, time.monotonic(), gflops)
            self._queue.append(ticket)
            self.queued_rows += job.rows
            self._lock.notify()
        return ticket.future

    def pending_gflops(self) -> float:
        """The work the loop owes: its queued requests' decodes and the rest of its running rows'."""
        with self._lock:
            queued = sum(t.gflops for t in self._queue)
        active = self._active      # the decode thread replaces the list, never empties it in place
        return queued + sum(r.remaining_gflops for t in active for r in t.rows)

    def tick_age_s(self) -> float:
        """Seconds the tick in flight has run (0 between ticks): how a stuck loop shows."""
        since = self._tick_since
        return 0.0 if since is None else time.monotonic() - since

    # ---- the decode thread
    def start(self) -> threading.Event:
        """Run the loop in a daemon thread; set the returned event to stop it."""
        stop = threading.Event()
        threading.Thread(target=self.run_forever, args=(stop,), name="nestgen-step-loop", daemon=True).start()
        return stop

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with self._lock:
                if not self._queue and not self._active:
                    self._lock.wait(0.5)
                    continue
            self.tick()

    def tick(self) -> bool:
        """One step boundary and one step. False when there was nothing to run."""
        begun = time.monotonic()
        self._boundary()
        if not self._active:
            return False
        self._tick_since = t0 = time.monotonic()
        rows = [r for t in self._active for r in t.rows]
        work = sum(r.step_gflops[r.step] for r in rows)
        try:
            for (factor, full_pass, _), lanes in self.decoder.advance(rows):
                self.metrics.forward(factor, full_pass, lanes)
        except Exception:      # noqa: BLE001 - reported to the requests it ran, the loop lives on
            log.exception("a decode step of %d row(s) failed", len(rows))
            for t in self._active:
                self._finish(t, error=DecodeFailed())
            self._active, self.active_rows = [], 0
            return True
        finally:
            self._tick_since = None
        now = time.monotonic()
        for t in self._active:
            t.peak_rows, t.peak_requests = max(t.peak_rows, len(rows)), max(t.peak_requests, len(self._active))
            if t.on_step is not None and not t.future.cancelled():
                tokens = torch.stack([r.tokens for r in t.rows]).cpu()
                r0 = t.rows[0]
                try:
                    t.on_step(StepEvent(r0.step, r0.steps, r0.cfg.schedule, tokens,
                                        tokens == self.decoder.model.cfg.mask_id))
                except Exception:      # noqa: BLE001 - a hook never stops the loop
                    log.exception("a step hook failed")
        done = [t for t in self._active if t.rows[0].done]
        for t in done:
            steps = t.rows[0].steps
            self._finish(t, StepResult(torch.stack([r.tokens for r in t.rows]).cpu(), t.joined - t.submitted,
                                       now - t.joined, steps, t.peak_rows, t.peak_requests))
        self._active = [t for t in self._active if not t.rows[0].done]
        self.active_rows = sum(t.job.rows for t in self._active)
        self.metrics.tick(now - t0, self.active_rows, self.queued_rows)
        # the whole tick (admission, hooks and answers included): what a row-step costs the replica
        speed = work / max(time.monotonic() - begun, 1e-9)
        self.gflops_per_s = (1 - SPEED_EMA) * self.gflops_per_s + SPEED_EMA * speed if self._measured else speed
        self._measured = True
        return True

    def _boundary(self) -> None:
        """Drop cancelled and overdue requests; admit queued ones while they fit."""
        now = time.monotonic()
        with self._lock:
            for t in self._active + list(self._queue):
                if t.future.cancelled():
                    self._finish(t)
                elif now - t.submitted > self.deadline_s:     # counted from arrival: what the client waits
                    self._finish(t, error=past_deadline(self.deadline_s, self.retry_after_s))
            self._active = [t for t in self._active if not t.future.done()]
            self._queue = deque(t for t in self._queue if not t.future.done())
            self.active_rows = sum(t.job.rows for t in self._active)
            self.queued_rows = sum(t.job.rows for t in self._queue)
            while self._queue and self.active_rows + self._queue[0].job.rows <= self.max_active_rows:
                t = self._queue.popleft()
                self.queued_rows -= t.job.rows
                j = t.job
                try:
                    t.rows = [self.decoder.new_row(j.decode, label, seed, None if j.cond is None else j.cond[i])
                              for i, (label, seed) in enumerate(zip(j.labels, j.seeds))]
                except Exception:      # noqa: BLE001 - that request fails, the loop lives on
                    log.exception("a request could not join the decode loop")
                    self._finish(t, error=DecodeFailed())
                    continue
                self.active_rows += j.rows
                t.joined = now
                self.metrics.joined(now - t.submitted)
                self._active.append(t)

    def _finish(self, t: _Ticket, result: StepResult | None = None, error: Exception | None = None) -> None:
        """Answer `t` (nothing to answer when its waiter cancelled it, even just now)."""
        try:
            if error is not None:
                t.future.set_exception(error)
            elif result is not None:
                t.future.set_result(result)
        except InvalidStateError:
            pass
