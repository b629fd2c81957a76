"""Nothing a nestgen command starts listens beyond loopback: `nestgen serve` and `nestgen run`
(through Ray Train) run as the user runs them, as subprocesses starting their own local Ray,
while the TCP listening sockets of every process they started are listed with psutil.

"Every process they started" is every process whose environment carries this test's marker:
Ray's daemons are re-parented away from the command's process tree, but every process Ray
starts inherits the environment of the driver that started it. The conftest's loopback
variable is taken out of the commands' environment: the user's shell does not set it."""
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
import torch

from pipelines.ray_runtime import free_port, is_loopback

pytestmark = pytest.mark.timeout(600)

REPO = Path(__file__).resolve().parents[1]
NESTGEN = str(Path(sys.executable).parent / "nestgen")
MARK = "NESTGEN_LOOPBACK_TEST"


def _users_env(tmp: Path, ray_tmp: str) -> dict:
    """The environment of a user's shell (without what conftest sets for the tests), with a Ray
    temp folder and an MLflow store of the test's own."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_USAGE_STATS_ENABLED", "RAY_ADDRESS")}
    return env | {"RAY_TMPDIR": ray_tmp, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
                  # fixed by default: a second Ray beside the session's would find them taken
                  "AUTOSCALER_METRIC_PORT": str(free_port()), "DASHBOARD_METRIC_PORT": str(free_port())}


class Command:
    """One nestgen command as a subprocess with its own Ray, and the listening sockets of
    every process it started, gathered by `sample`."""

    def __init__(self, args: list[str], tmp: Path):
        self.mark = uuid.uuid4().hex
        self.ray_tmp = tempfile.mkdtemp(prefix="nglb", dir="/tmp")      # Ray's socket paths must stay short
        env = _users_env(tmp, self.ray_tmp) | {MARK: self.mark}
        self.proc = subprocess.Popen([NESTGEN, *args], env=env, cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.listening: dict[tuple[str, int], str] = {}      # (address, port) -> the process's command line
        self.seen: set[str] = set()                          # command lines of the processes seen

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def processes(self) -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter():
            try:
                if p.environ().get(MARK) == self.mark:
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return found

    def sample(self) -> None:
        for p in self.processes():
            try:
                name = " ".join(p.cmdline())[:120]
                conns = p.net_connections(kind="tcp")
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            self.seen.add(name)
            for c in conns:
                if c.status == psutil.CONN_LISTEN:
                    self.listening[(c.laddr.ip, c.laddr.port)] = name

    def printed(self, pattern: str) -> bool:
        return any(re.search(pattern, line) for line in list(self.lines))

    def sample_until(self, done, what: str, timeout_s: float = 400) -> None:
        """Sample until `done()` (`what` it waits for)."""
        deadline = time.monotonic() + timeout_s
        while not done():
            assert self.proc.poll() is None, f"the command ended before {what}:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {what} in {timeout_s:.0f} s:\n{self.output()}"
            self.sample()
            time.sleep(0.2)
        self.sample()

    def assert_loopback_only(self) -> None:
        beyond = [f"{ip} port {port}: {name.strip()}" for (ip, port), name in sorted(self.listening.items())
                  if not is_loopback(ip)]
        assert not beyond, "listening beyond loopback:\n" + "\n".join(beyond)

    def output(self) -> str:
        return "".join(self.lines[-40:])

    def stop(self, sig: int) -> None:
        """`sig` to the command (it shuts its Ray down), then SIGKILL to whatever it left."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for p in self.processes():
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.reader.join(timeout=10)
        subprocess.run(["rm", "-rf", self.ray_tmp], check=False)


def test_is_loopback_knows_the_wildcards_and_mapped_addresses():
    assert all(is_loopback(a) for a in ("127.0.0.1", "127.0.1.1", "::1", "::ffff:127.0.0.1"))
    assert not any(is_loopback(a) for a in ("0.0.0.0", "::", "192.0.2.2", "fd00::2", "::ffff:192.0.2.2"))


def test_nestgen_serve_listens_on_loopback_only(tmp_path):
    from nestgen.checkpoint import save_checkpoint
    from nestgen.config import config_from_dict
    from nestgen.model.nested_transformer import NestedTransformer
    torch.manual_seed(0)
    cfg = config_from_dict({"model": {"width": 32, "depth": 1}})
    ckpt = save_checkpoint(str(tmp_path / "c.pt"), cfg, NestedTransformer(cfg.model))
    port = free_port()
    cmd = Command(["serve", "configs/serve_digits.yaml", "--checkpoint", ckpt, "--port", str(port)], tmp_path)
    try:
        cmd.sample_until(lambda: cmd.printed(r"nestgen serving .* on http://127\.0\.0\.1:"), "serving line")
    finally:
        cmd.stop(signal.SIGTERM)
    assert ("127.0.0.1", port) in cmd.listening, f"Serve's proxy was not seen: {sorted(cmd.listening)}"
    assert any("gcs_server" in n for n in cmd.seen) and any("raylet" in n for n in cmd.seen), sorted(cmd.seen)
    cmd.assert_loopback_only()


def test_nestgen_run_listens_on_loopback_only_through_training(tmp_path):
    tiny = ["model.width=32", "model.depth=1", "train.steps=4", "train.log_every=2",
            "scaling.checkpoint_every=4", "scaling.num_workers=2", "scaling.cpus_per_worker=0.5",
            "mlflow.system_metrics_every_s=0", f"pipeline.output_url={tmp_path / 'out'}"]
    cmd = Command(["run", "configs/digits.yaml", *[x for kv in tiny for x in ("--set", kv)]], tmp_path)
    try:
        # the step publishes the checkpoint once Ray Train's workers are done (then logs to MLflow)
        cmd.sample_until(lambda: any((tmp_path / "out").glob("train-*/published/*.pt")), "published checkpoint")
    finally:
        cmd.stop(signal.SIGTERM)      # not SIGINT: Ray Train's handler for it outlives the fit
    workers = [n for n in cmd.seen if n.startswith("ray::RayTrainWorker")]
    assert workers, f"no Ray Train worker was seen: {sorted(cmd.seen)}"
    cmd.assert_loopback_only()


def test_a_local_ray_that_would_listen_on_the_network_is_refused(tmp_path):
    """A program that imports ray before pipelines (too late for pipelines/__init__.py): init_ray
    refuses to start the local Ray rather than open it to the network."""
    code = ("import ray\nip = ray.util.get_node_ip_address()\n"
            "from pipelines.ray_runtime import init_ray, is_loopback\n"
            "if is_loopback(ip):\n    raise SystemExit('this machine has no network address')\n"
            "init_ray()\n")
    ray_tmp = tempfile.mkdtemp(prefix="nglb", dir="/tmp")
    try:
        res = subprocess.run([sys.executable, "-c", code], env=_users_env(tmp_path, ray_tmp), cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run(["rm", "-rf", ray_tmp], check=False)
    if "this machine has no network address" in res.stderr:
        pytest.skip("this machine has no network address to refuse")
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    assert "a local Ray would listen on" in res.stderr and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1" in res.stderr


def test_a_local_run_starts_its_own_ray_beside_a_cluster_ray_start_left(tmp_path):
    """`ray start` records its cluster where a bare ray.init() finds and joins it (refusing the
    CPU count nestgen declares: "When connecting to an existing cluster, num_cpus ... must not be
    provided"). Without --ray-address, nestgen starts a head of its own on loopback instead."""
    ray_tmp = tempfile.mkdtemp(prefix="nglb", dir="/tmp")
    try:
        os.makedirs(f"{ray_tmp}/ray")
        with open(f"{ray_tmp}/ray/ray_current_cluster", "w") as f:
            f.write(f"127.0.0.1:{free_port()}")          # what `ray start --head` leaves behind
        code = ("import pipelines, ray\nfrom pipelines.ray_runtime import init_ray\n"
                "init_ray(num_cpus=3)\nprint('CPUS', ray.cluster_resources()['CPU'], "
                "ray.get_runtime_context().gcs_address)\nray.shutdown()\n")
        res = subprocess.run([sys.executable, "-c", code], env=_users_env(tmp_path, ray_tmp), cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run(["rm", "-rf", ray_tmp], check=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    cpus, gcs = re.search(r"CPUS (\S+) (\S+)", res.stdout).groups()
    assert float(cpus) == 3 and is_loopback(gcs.rsplit(":", 1)[0])


def test_nothing_reports_usage_beyond_the_machine_by_default(tmp_path):
    """A user's `nestgen` process (no CI or pytest variables, which MLflow reads as 'do not
    track') has MLflow's telemetry and Ray's usage stats off; a user may still opt in."""
    ci = {   # what mlflow.telemetry.utils reads as a CI or test run, and the opt-outs
"PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "CI", "CIRCLECI", "GITLAB_CI", "JENKINS_URL", "TRAVIS",
          "TF_BUILD", "BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN", "BUILDKITE", "TEAMCITY_VERSION",
          "CLOUD_RUN_EXECUTION", "RUNBOT_HOST_URL", "RUNBOT_BUILD_NAME", "RUNBOT_WORKER_ID",
          "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"}
    env = {k: v for k, v in _users_env(tmp_path, str(tmp_path)).items() if k not in ci}
    code = ("import pipelines, os\nfrom mlflow.telemetry.utils import is_telemetry_disabled\n"
            "print('OFF', is_telemetry_disabled(), os.environ['RAY_USAGE_STATS_ENABLED'])\n")
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "OFF True 0" in res.stdout, res.stdout[-2000:] + res.stderr[-2000:]
    opted_in = subprocess.run([sys.executable, "-c", code], env=env | {"MLFLOW_DISABLE_TELEMETRY": "false"},
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "OFF False 0" in opted_in.stdout, opted_in.stdout[-2000:] + opted_in.stderr[-2000:]
