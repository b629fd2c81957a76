"""Serving under a node death on a LocalCluster (chaoskit.cluster): two replicas of nestgen's
Generator, one on each worker node (1.5 CPUs each on 2-CPU nodes), Serve's proxy on the
head (proxy_location HeadOnly: every node of a one-machine cluster shares 127.0.0.1, where
only one proxy can listen), clients sending seeded requests all along. One replica's node is
SIGKILLed; the row says how the requests in flight there ended (the clients are nestgen's
own, pipelines.serve.client, which sends a request again when Serve's proxy says its replica
died: 503 with Retry-After from nestgen's proxy middleware, pipelines.serve.middleware), when
every request succeeded again on the survivor, and when the node's return
restored two replicas. Checked by tests/test_chaos_serve.py, tabled by
benchmarks/chaos_train_serve.py."""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from chaoskit.cluster import LocalCluster, free_port, wait_for

REPLICA_CLASS = "ServeReplica:nestgen:Generator"
REQUEST = {"class_label": 1, "num_samples": 2, "schedule": "baseline", "format": "tokens"}


def tiny_checkpoint(path: Path) -> str:
    import torch

    from nestgen.checkpoint import save_checkpoint
    from nestgen.config import config_from_dict
    from nestgen.model.nested_transformer import NestedTransformer
    torch.manual_seed(0)
    cfg = config_from_dict({"model": {"width": 32, "depth": 1}})
    return save_checkpoint(str(path), cfg, NestedTransformer(cfg.model))


class Load(logging.Handler):
    """`clients` threads posting seeded requests until stopped; each outcome is recorded as
    (start, end, HTTP status or exception name, body head) on time.time(), and every request
    the client sent again (its warnings) in `retried`."""

    def __init__(self, url: str, clients: int, timeout_s: float):
        super().__init__(logging.WARNING)
        self.url, self.timeout_s = url, timeout_s
        self.outcomes: list[tuple] = []
        self.retried: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def emit(self, record: logging.LogRecord) -> None:
        self.retried.append((record.created, record.args[1]))     # (when, the HTTP status sent again)

    def __enter__(self) -> "Load":
        from pipelines.serve import client
        client.log.addHandler(self)
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        from pipelines.serve import client
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s * (client.RETRIES + 1) + 5)
        client.log.removeHandler(self)

    def _client(self, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            seed, n = i * 100_000 + n, n + 1
            t0 = time.time()
            code, body = post(self.url, dict(REQUEST, seed=seed), self.timeout_s)
            self.outcomes.append((t0, time.time(), code, body[:160]))

    def since(self, t: float) -> list[tuple]:
        return [o for o in list(self.outcomes) if o[0] >= t]


def post(url: str, payload: dict, timeout_s: float) -> tuple:
    """(200, the answer's JSON) or (HTTP status, reason) or (exception name, message), as
    pipelines.serve.client (what `nestgen generate` uses) ends."""
    from pipelines.serve import client
    try:
        return 200, json.dumps(client.request_json(url, payload, timeout_s))
    except client.ServiceError as e:
        return e.status, str(e.detail)
    except OSError as e:                       # refused, reset, timed out
        return type(e).__name__, str(e)


def replica_states() -> dict:
    from ray import serve
    app = serve.status().applications.get("nestgen")
    return dict(app.deployments["Generator"].replica_states) if app else {}


def serve_scenario(c: LocalCluster, root: Path, clients: int = 4, timeout_s: float = 30.0,
                   settle: int = 20) -> dict:
    """See the module doc. `settle`: the requests, all started after the survivor alone
    serves, that must all succeed; the same seeded request before the kill and after the
    replica count is restored must give the same tokens."""
    from ray import serve

    from pipelines.config import ServeConfig
    from pipelines.serve import build
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    cfg = ServeConfig(checkpoint=tiny_checkpoint(root / "c.pt"), num_replicas=2, cpus_per_replica=1.5,
                      max_batch_size=16, max_ongoing_requests=32, max_samples_per_request=4)
    serve.run(build(cfg), name="nestgen", route_prefix="/")
    url = f"http://127.0.0.1:{port}/v1/generate"
    row: dict = {"scenario": "serve: a replica's node dies under load, then returns"}
    try:
        replicas = wait_for(lambda: len(c.actors(REPLICA_CLASS)) == 2 and c.actors(REPLICA_CLASS), 120,
                            "two replicas in the state API")
        row["replica_nodes"] = sorted(a["node"] for a in replicas)
        before = post(url, dict(REQUEST, seed=7), timeout_s)
        with Load(url, clients, timeout_s) as load:
            wait_for(lambda: sum(o[2] == 200 for o in load.outcomes) >= 20, 120, "20 answered requests")
            victim = replicas[0]["node"]
            killed = time.time()
            c.kill_node(victim)
            # the survivor alone: Serve's controller has dropped the dead replica
            wait_for(lambda: replica_states().get("RUNNING") == 1, 120, "the controller to drop the dead replica")
            alone = time.time()
            wait_for(lambda: len([o for o in load.since(alone) if o[2] == 200]) >= settle
                     or any(o[2] != 200 for o in load.since(alone)), 180, f"{settle} requests on the survivor")
            after_recovery = load.since(alone)
            c.add_worker(victim)
            wait_for(lambda: replica_states().get("RUNNING") == 2, 180, "the replica count to be restored")
            restored = time.time()
            wait_for(lambda: len(load.since(restored)) >= clients, 60, "requests after the restore")
        outcomes = load.outcomes
        failed = [o for o in outcomes if o[2] != 200]
        row.update(
            requests=len(outcomes), failed=len(failed),
            failed_how=sorted({f"{o[2]} {o[3][:60]}".strip() for o in failed}),
            failed_in_flight_at_kill=sum(o[0] <= killed for o in failed),
            retried=len(load.retried), retried_after_recovery=sum(t >= alone for t, _ in load.retried),
            retried_statuses=sorted({code for _, code in load.retried}),
            failed_after_recovery=sum(o[2] != 200 for o in after_recovery),
            answered_after_recovery=sum(o[2] == 200 for o in after_recovery),
            max_latency_s=round(max(o[1] - o[0] for o in outcomes), 2), request_timeout_s=timeout_s,
            seconds_to_recover=round(alone - killed, 1),
            seconds_to_last_failure=round(max((o[1] for o in failed), default=killed) - killed, 1),
            seconds_to_restore=round(restored - killed, 1), replicas_after=replica_states().get("RUNNING"))
        again = post(url, dict(REQUEST, seed=7), timeout_s)
        row["same_sample_as_before"] = before[0] == again[0] == 200 and \
            json.loads(before[1])["samples"] == json.loads(again[1])["samples"]
    finally:
        serve.shutdown()
    return row
