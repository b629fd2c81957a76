"""The step loop's metrics as Ray Serve custom metrics (ray.serve.metrics), which Serve tags
with the deployment and replica and exports with its own, on Ray's metrics endpoint (scraped by
Prometheus; the Ray dashboard's Serve view charts them).

    nestgen_active_rows            gauge      rows decoding on the replica
    nestgen_queued_rows            gauge      rows waiting to join
    nestgen_forward_rows           histogram  rows (lanes: guided rows count twice) per forward pass,
                                              tagged nest_factor and pass (full | cached)
    nestgen_queue_wait_seconds     histogram  from arrival to joining the running set
    nestgen_step_seconds           histogram  one tick: every active row one step
"""
from ray.serve.metrics import Gauge, Histogram

from nestgen.serving.step_loop import LoopMetrics

_SECONDS = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]
_ROWS = [1, 2, 4, 8, 16, 32, 64, 128, 256]


class ServeLoopMetrics(LoopMetrics):
    def __init__(self):
        self.active = Gauge("nestgen_active_rows", "rows decoding on the replica (step loop)")
        self.queued = Gauge("nestgen_queued_rows", "rows waiting to join the step loop")
        self.forward_rows = Histogram("nestgen_forward_rows", "rows per forward pass, by nested size",
                                      boundaries=_ROWS, tag_keys=("nest_factor", "pass"))
        self.queue_wait = Histogram("nestgen_queue_wait_seconds", "arrival to joining the running set",
                                    boundaries=_SECONDS)
        self.step = Histogram("nestgen_step_seconds", "one step of every active row", boundaries=_SECONDS)

    def joined(self, queue_wait_s: float) -> None:
        self.queue_wait.observe(queue_wait_s)

    def forward(self, factor: int, full_pass: bool, lanes: int) -> None:
        self.forward_rows.observe(lanes, tags={"nest_factor": str(factor), "pass": "full" if full_pass else "cached"})

    def tick(self, seconds: float, active_rows: int, queued_rows: int) -> None:
        self.step.observe(seconds)
        self.active.set(active_rows)
        self.queued.set(queued_rows)
