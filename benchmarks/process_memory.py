"""Peak memory of a process tree (a `nestgen run` and the Ray processes it starts), by stage.

Linux only: reads /proc. Every `interval` seconds the tree under the root pid is walked (the
driver, Ray's gcs_server and raylet, and the workers raylet forks); each process's resident
set (VmRSS) is recorded under the current stage, and its kernel-kept lifetime peak (VmHWM)
is kept as last seen. Ray workers name themselves in their command line (`ray::IDLE`,
`ray::RayTrainWorker...`, `ray::EvalWorker.run`, `ray::MapBatches(...)`), which says what a
worker did in a stage. Sampled peaks can miss a spike shorter than the interval; VmHWM
cannot, but covers a process's whole life, not one stage.
"""
from __future__ import annotations

import os
import threading
import time
from collections import defaultdict


def _status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "PPid"):
                out[key] = int(value.split()[0])        # kB (PPid: a pid)
    return out


def _name(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    if not argv:
        return "?"
    if argv[0].startswith("ray::"):
        return argv[0].split()[0]
    script = next((a for a in argv[1:] if a.endswith(".py")), argv[0])
    return os.path.basename(script)


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids[ppid].append(int(entry))
    return kids


class TreeMemory:
    """Samples the tree under `root` in a thread; `stage` names what the samples belong to."""

    def __init__(self, root: int, interval: float = 0.25):
        self.root, self.interval = root, interval
        self.stage = "start"
        # stage -> pid -> {"peak_kb", "names"}; pid -> {"hwm_kb", "names"} over the whole run
        self.by_stage: dict[str, dict[int, dict]] = defaultdict(dict)
        self.lifetime: dict[int, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _tree(self) -> list[int]:
        kids, out, todo = _children(), [], [self.root]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(kids.get(pid, []))
        return out

    def _loop(self) -> None:
        while not self._stop.is_set():
            stage = self.stage
            for pid in self._tree():
                try:
                    st, name = _status(pid), _name(pid)
                except (OSError, ValueError):
                    continue                     # gone meanwhile
                if "VmRSS" not in st:
                    continue                     # a zombie
                rec = self.by_stage[stage].setdefault(pid, {"peak_kb": 0, "names": set()})
                rec["peak_kb"] = max(rec["peak_kb"], st["VmRSS"])
                rec["names"].add(name)
                life = self.lifetime.setdefault(pid, {"hwm_kb": 0, "names": set()})
                life["hwm_kb"] = max(life["hwm_kb"], st.get("VmHWM", 0))
                life["names"].add(name)
            self._stop.wait(self.interval)

    def stage_report(self, stage: str) -> dict:
        """{driver_peak_mb, workers: [{pid, did, peak_mb}], ray_system_peak_mb: {name: mb}}
        of one stage: workers are ray:: processes that did something but idle."""
        procs = self.by_stage.get(stage, {})
        mb = lambda kb: round(kb / 1024, 1)  # noqa: E731
        workers, system = [], defaultdict(int)
        for pid, rec in sorted(procs.items()):
            if pid == self.root:
                continue
            names = sorted(rec["names"])
            busy = [n for n in names if n.startswith("ray::") and n != "ray::IDLE"]
            if busy:
                workers.append({"pid": pid, "did": busy, "peak_mb": mb(rec["peak_kb"])})
            elif not any(n.startswith("ray::") for n in names):
                system[names[0]] = max(system[names[0]], rec["peak_kb"])
        return {"driver_peak_mb": mb(procs.get(self.root, {}).get("peak_kb", 0)),
                "workers": workers, "ray_system_peak_mb": {k: mb(v) for k, v in sorted(system.items())}}

    def driver_hwm_mb(self) -> float:
        return round(self.lifetime.get(self.root, {}).get("hwm_kb", 0) / 1024, 1)
