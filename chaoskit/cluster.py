"""A multi-node Ray cluster on one machine, for fault tests and benchmarks: a head and worker
nodes on 127.0.0.1, each with its own raylet, object store and resources, started by Ray's
own test harness (ray.cluster_utils.Cluster, as Ray's fault-tolerance tests do) from this
process; a node dies by SIGKILL of its raylet, its agents and every worker process the
raylet spawned, as a machine that died; everything is stopped the same way at the end, by
the PIDs this harness started, nothing else.

Why Cluster and not `ray start --address` processes: `ray start` joins a second node only with
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1, and then rewrites the head's 127.0.0.1 into the machine's
network address (and fails to reach a head that listens on loopback only).

The pipeline reaches it as it reaches a real cluster: `ray.init(address=c.address)`,
`nestgen run --ray-address c.address` (env=c.env), `ray job submit --address c.dashboard`.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]

# Before ray is imported (pipelines/__init__.py says why): every node listens on 127.0.0.1.
# The nodes and their workers inherit this process's environment (start() sets it, stop()
# restores it): the
# repository on the path (chaoskit's filesystems unpickle in workers), the fault plan, no
# token auth (CLI clients such as `ray job submit` reach the dashboard as in-process ones
# do), task states reported every 100 ms (a kill point "this task is running" is current).
CLUSTER_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
               "RAY_AUTH_MODE": "disabled", "RAY_task_events_report_interval_ms": "100"}


# every worker of a driver's job knows chaosfs:// (the driver does by importing chaoskit.faults)
WORKER_SETUP = {"worker_process_setup_hook": "chaoskit.faults.register"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred: Callable[[], T], timeout_s: float, what: str, every_s: float = 0.2) -> T:
    """Poll `pred` until it returns something truthy (returned); TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(every_s)


class LocalCluster:
    """head (0 CPUs by default: the control plane, never the victim) + workers w1, w2, ...;
    worker node <name> carries the resource `chaos_<name>` = 1 to pin work to it."""

    def __init__(self, root: str | os.PathLike, head_cpus: float = 0, workers=(2, 2), object_store_mb: int = 100,
                 env: dict | None = None, node_death_s: int | None = None):
        """workers: the CPUs of w1, w2, ...; env: more variables for every process of the cluster;
        node_death_s: how many seconds of unanswered health checks (one a second) make the GCS
        declare a node dead; None keeps Ray's default (5 checks 3 s apart, about 15 s), which
        is what a real cluster shows: benchmarks keep it, tests shorten it."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(f"/tmp/nck{os.getpid()}-{free_port()}")      # Ray's socket paths must stay short
        self.dash_port = free_port()
        self.dashboard = f"http://127.0.0.1:{self.dash_port}"
        self.object_store = object_store_mb * 2**20
        self._head_cpus, self._env = head_cpus, dict(env or {})
        self._system_config = {} if node_death_s is None else {
            "health_check_period_ms": 1000, "health_check_timeout_ms": 1000,
            "health_check_failure_threshold": node_death_s}
        self.worker_cpus = {f"w{k}": cpus for k, cpus in enumerate(workers, 1)}
        self.cluster = None
        self.nodes: dict = {}                       # name -> ray._private.node.Node
        self.killed_at: dict[str, float] = {}
        self.plan = self.root / "faults"           # chaoskit.faults' plan for every process of the cluster

    @property
    def address(self) -> str:
        return self.cluster.address

    @property
    def env(self) -> dict:
        """The environment for a driver subprocess (`nestgen run --ray-address c.address`)."""
        return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}

    # ---- life cycle -------------------------------------------------------------------
    def __enter__(self) -> "LocalCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        from chaoskit.faults import PLAN_ENV
        # RAY_TMPDIR: Cluster writes the head's address to <RAY_TMPDIR>/ray/ray_current_cluster, where
        # any later `ray.init()` on this machine would find and join it; inside self.tmp it goes with the cluster
        env = dict(CLUSTER_ENV, **self._env, **{PLAN_ENV: str(self.plan), "RAY_TMPDIR": str(self.tmp),
                                                "PYTHONPATH": os.pathsep.join(
                                                    p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)})
        self._saved_env = {k: os.environ.get(k) for k in env}
        (self.tmp / "ray").mkdir(parents=True, exist_ok=True)
        os.environ.update(env)
        if "ray" in sys.modules and sys.modules["ray"]._private.ray_constants.ENABLE_RAY_CLUSTER:
            raise RuntimeError("ray was imported before chaoskit.cluster set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: "
                               "its nodes would listen on the network")
        if self._saved_env.get("RAY_AUTH_MODE") == "token":
            # A local ray.init() in this process turned Ray's token authentication on, and Ray
            # keeps that mode for the process (it re-initializes its config then, not later):
            # this driver would refuse the calls of the cluster's processes, which run without
            # tokens, and the first actor whose constructor arguments it owns dies unstarted.
            raise RuntimeError("RAY_AUTH_MODE=token in this process (a local ray.init() sets it): Ray's token "
                               "authentication is on here and the cluster runs without it; set "
                               "RAY_AUTH_MODE=disabled before the first ray.init")
        from ray.cluster_utils import Cluster
        self.cluster = Cluster(initialize_head=True, shutdown_at_exit=True, head_node_args=dict(
            self._args(self._head_cpus), include_dashboard=True, dashboard_host="127.0.0.1",
            dashboard_port=self.dash_port, temp_dir=str(self.tmp), _system_config=self._system_config))
        # `ray job submit`'s supervisor looks its cluster's address up in <head temp_dir>/ray_current_cluster
        # (Cluster wrote it under $RAY_TMPDIR/ray); not found, it takes any Ray running on the machine
        (self.tmp / "ray_current_cluster").write_text(self.cluster.address)
        self.nodes["head"] = self.cluster.head_node
        for name in self.worker_cpus:
            self.add_worker(name)
        wait_for(self._dashboard_up, 120, "the head's dashboard")

    def _args(self, cpus: float, **resources) -> dict:
        return dict(num_cpus=cpus, object_store_memory=self.object_store, node_ip_address="127.0.0.1",
                    dashboard_agent_listen_port=free_port(), resources=resources)

    def connect(self) -> None:
        """ray.init this process as the driver of a job on the cluster, its workers knowing chaosfs://."""
        import ray
        ray.init(address=self.address, runtime_env=WORKER_SETUP)

    def add_worker(self, name: str) -> None:
        """Start worker node `name` (again after kill_node: the machine came back, with its
        CPUs); returns once the GCS lists it alive."""
        self.nodes[name] = self.cluster.add_node(wait=True, **self._args(self.worker_cpus[name],
                                                                           **{f"chaos_{name}": 1}))
        self.killed_at.pop(name, None)

    def heal(self) -> list[str]:
        """Start again every worker node that is down, so that the next scenario finds the
        cluster whole; returns their names."""
        down = [name for name in self.worker_cpus if name not in self.nodes]
        for name in down:
            self.add_worker(name)
        return down

    def stop(self) -> None:
        """SIGKILL every process of every node (the workers the raylets spawned included)."""
        for name in list(self.nodes):
            self._kill(name)
        self.nodes.clear()
        if self.cluster is not None:
            self.cluster.head_node, self.cluster.worker_nodes = None, set()
        shutil.rmtree(self.tmp, ignore_errors=True)
        for k, v in getattr(self, "_saved_env", {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def wait_idle(self, timeout_s: float = 60) -> None:
        """Return once every CPU of the cluster is free again (what a step started has ended:
        Ray Data's actors, Train's placement group, Serve's replicas); else a TimeoutError
        naming what still holds them. Needs this process connected (connect()). Garbage is
        collected first: an actor handle in a reference cycle (an exception kept with the frame
        that caught it) keeps its actor alive until the driver's next collection; the pipeline's
        own pools kill their actors when a step ends (pipelines.evaluate.actor_pool)."""
        import gc

        import ray
        gc.collect()

        def idle() -> bool:
            total, free = ray.cluster_resources().get("CPU", 0), ray.available_resources().get("CPU", 0)
            return total == sum(self.worker_cpus.values()) + self._head_cpus and free == total
        try:
            wait_for(idle, timeout_s, "every CPU of the cluster to be free")
        except TimeoutError as e:
            from ray.util.state import list_actors, list_placement_groups
            held = [f"{a.class_name} on {self.node_name(a.node_id)}" for a in list_actors(
                address=self.dashboard, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)]
            groups = [g.placement_group_id for g in list_placement_groups(
                address=self.dashboard, filters=[("state", "=", "CREATED")], raise_on_missing_output=False)]
            raise TimeoutError(f"{e}: {ray.available_resources().get('CPU', 0)} of "
                               f"{ray.cluster_resources().get('CPU', 0)} CPUs free; alive actors {held}, "
                               f"placement groups {groups}") from None

    # ---- faults -----------------------------------------------------------------------
    def pids(self, name: str) -> list[int]:
        """The live processes of node `name`: its raylet, GCS, agents and the workers its raylet spawned."""
        import psutil
        out = []
        for _, proc in self.nodes[name].live_processes():
            out.append(proc.pid)
            try:
                out += [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return out

    def node_of_pid(self, pid: int) -> str | None:
        return next((n for n in self.nodes if pid in self.pids(n)), None)

    def _kill(self, name: str) -> None:
        for pid in self.pids(name):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for _, proc in self.nodes[name].live_processes():
            proc.wait(timeout=30)

    def kill_node(self, name: str, wait: bool = True) -> float:
        """SIGKILL worker node `name` whole (raylet, agents, every worker): a machine that died.
        Returns the time of the kill (time.monotonic()); with `wait`, returns once the GCS has
        marked the node dead."""
        if name == "head":
            raise ValueError("the head is the cluster's control plane: kill a worker node")
        node = self.nodes[name]
        self.killed_at[name] = time.monotonic()
        self._kill(name)
        self.cluster.worker_nodes.discard(node)
        del self.nodes[name]
        if wait:
            wait_for(lambda: self.node_alive(node.node_id) is False, 120, f"the GCS to mark {name} dead")
        return self.killed_at[name]

    def kill_pid(self, pid: int) -> float:
        """SIGKILL one process (a worker or an actor) of this cluster's nodes."""
        if self.node_of_pid(pid) is None:
            raise ValueError(f"pid {pid} is not a process of this cluster")
        t = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        return t

    # ---- observing ----------------------------------------------------------------------
    def _dashboard_up(self) -> bool:
        import urllib.request
        try:
            return urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=2).status == 200
        except OSError:
            return False

    def node_alive(self, node_id: str) -> bool | None:
        """What the GCS says of the node (None: it does not know it)."""
        for n in self.cluster.global_state.node_table():
            if n["NodeID"] == node_id:
                return bool(n["Alive"])
        return None

    def node_name(self, node_id: str | None) -> str | None:
        return next((n for n, node in self.nodes.items() if node.node_id == node_id), None)

    def actors(self, class_name: str, state: str = "ALIVE") -> list[dict]:
        """The cluster's actors of `class_name` in `state` (Ray's state API), each with "node": its node's name."""
        from ray.util.state import list_actors
        return self._named(list_actors, [("class_name", "=", class_name), ("state", "=", state)])

    def running_tasks(self, name: str) -> list[dict]:
        """Tasks or actor methods named `name` (e.g. "EvalWorker.run") that Ray reports RUNNING, with "node"."""
        from ray.util.state import list_tasks
        return self._named(list_tasks, [("name", "=", name), ("state", "=", "RUNNING")])

    def _named(self, lister, filters) -> list[dict]:
        try:
            got = lister(address=self.dashboard, filters=filters, limit=10_000, raise_on_missing_output=False)
        except Exception:           # the state API answers once the dashboard's modules are up
            return []
        rows = [g if isinstance(g, dict) else dict(vars(g)) for g in got]
        return [dict(r, node=self.node_name(r.get("node_id"))) for r in rows]
