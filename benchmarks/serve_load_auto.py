"""`schedule: "auto"` at overload (issue 23, item 4): what it serves against fixed schedules.

  flock /tmp/nestgen-ray.lock nice python -m benchmarks.serve_load_auto --checkpoint <trained digits> \\
      --json benchmarks/results/serve_load_auto.json

One `nestgen serve` (batching step, the default) on loopback serving a *trained* raw-digits
generator (quality needs real weights). Its replica times each `auto` preset at start
(nestgen.serving.auto); the baseline's measured capacity, max_active_rows rows per full batch's
seconds (GET /v1/schedules), sets the overload rate: --overload times it. At that rate,
open-loop Poisson arrivals (benchmarks.serve_load's load generator, one sample a request,
classes and seeds drawn) of three workloads one after another: every request `baseline`,
every request `magnets`, every request `auto`. Reported per workload: sustained samples/s, p50 /
p99 latency of the answered requests, answered share and refusals (503 beyond
max_queued_rows), the schedules `auto` chose, and the quality of what was served: the
evaluation's metrics (nestgen.evaluation.build_quality_suite: fd_digits against the training
split's reference statistics, digits_accuracy) of the answered samples, the same number of
samples for every workload (the first n answered, n the fewest any workload had), since a
Fréchet distance grows as samples get fewer.
"""
from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import platform
import sys
import tempfile
import time
from collections import Counter

from benchmarks.common import loopback_ray_env, write_json
from benchmarks.serve_load import Service, _point, _print_row

WORKLOADS = ("baseline", "magnets", "auto")


def _body(workload: str, rng) -> dict:
    return {"class_label": rng.randrange(10), "seed": rng.randrange(2**31 - 1), "format": "tokens",
            "schedule": workload}


def _overload_rate(url: str, factor: float) -> tuple[float, dict]:
    """factor x the baseline's capacity as the replica timed it (rows per second of a full
    batch), and the replica's timings."""
    import httpx
    sched = httpx.get(url + "/v1/schedules", timeout=60).json()
    limits = httpx.get(url + "/v1/model", timeout=60).json()["limits"]
    rows = limits["max_active_rows"]
    timed = {p["name"]: p["seconds_per_full_batch"] for p in sched["presets"] if "seconds_per_full_batch" in p}
    capacity = {name: rows / s for name, s in timed.items()}
    return round(factor * capacity["baseline"], 1), {"rows_per_batch": rows, "seconds_per_full_batch": timed,
                                                     "capacity_samples_per_s": capacity}


def quality_suite(ckpt: str):
    """(the evaluation's quality suite for the checkpoint's data, its config)."""
    from nestgen.checkpoint import load_model
    from nestgen.evaluation import build_quality_suite, load_eval_data
    from nestgen.evaluation.config import EvaluateConfig
    from nestgen.render import tokens_to_pixels
    _, cfg = load_model(ckpt)
    return build_quality_suite(cfg, EvaluateConfig(), load_eval_data(cfg),
                               lambda t: tokens_to_pixels(t, cfg.model.grid)), cfg


def quality(suite, cfg, answers: dict[str, list]) -> dict:
    """The suite's metrics of each workload's first n answered samples."""
    import numpy as np
    import torch

    from nestgen.render import tokens_to_pixels
    n = min(len(a) for a in answers.values())
    out = {"samples_scored": n, "reference": suite.reference}
    for workload, got in answers.items():
        got = got[:n]
        tokens = torch.tensor([t for _, ts in got for t in ts])
        labels = np.array([b["class_label"] for b, ts in got for _ in ts])
        out[workload] = {k: round(v, 4) for k, v in suite.score(tokens_to_pixels(tokens, cfg.model.grid), labels).items()}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a trained raw-digits generator (file or output folder)")
    ap.add_argument("--overload", type=float, default=1.5, help="offered load as a multiple of the baseline's capacity")
    ap.add_argument("--seconds", type=float, default=30.0, help="arrivals per workload")
    ap.add_argument("--drain", type=float, default=20.0, help="seconds to wait for answers after the arrivals")
    ap.add_argument("--settle", type=float, default=90.0, help="seconds to wait for an empty queue between workloads")
    ap.add_argument("--auto-target", type=float, default=1.0, help="auto_latency_target_s")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-ongoing", type=int, default=512, help="serve.max_ongoing_requests")
    ap.add_argument("--batch-wait", type=float, default=0.02, help="batch_wait_timeout_s")
    ap.add_argument("--ray-lock", metavar="FILE",
                    help="hold this lock file (flock) while the service runs, not while quality is scored")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    args.stream, args.stream_share = False, 0.0
    loopback_ray_env()
    res = {"command": "python -m benchmarks.serve_load_auto " + " ".join(argv if argv is not None else sys.argv[1:]),
           "checkpoint": args.checkpoint, "device": platform.processor() or "cpu", "cpu_count": os.cpu_count(),
           "replica": {"cpus": 1, "batching": "step"}, "auto_latency_target_s": args.auto_target,
           "seconds_per_workload": args.seconds, "loadavg_1m_start": round(os.getloadavg()[0], 2)}
    started = time.perf_counter()
    answers: dict[str, list] = {}
    suite, cfg = quality_suite(args.checkpoint)     # its digits classifier trains here, before the load
    lock = open(args.ray_lock, "a") if args.ray_lock else None
    if lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
    with tempfile.TemporaryDirectory() as tmp:
        svc = Service(tmp, args.checkpoint, "step", args)
        try:
            svc.wait_ready()
            rate, res["replica_timings"] = _overload_rate(svc.url, args.overload)
            res["offered_rps"] = rate
            print(f"overload: {rate} requests/s ({args.overload}x the baseline's capacity)", flush=True)
            rows = []
            for k, workload in enumerate(WORKLOADS):
                answers[workload] = []
                row = asyncio.run(_point(svc.url, rate, workload, False, args, seed=500 + k, make_body=_body,
                                         answers=answers[workload]))
                _print_row("step", row)
                rows.append(row)
        finally:
            svc.stop()
            if lock:
                lock.close()
    res["rows"] = rows
    res["quality"] = quality(suite, cfg, answers)
    res["auto_chose"] = dict(Counter(rows[-1]["auto_chose"]))
    res["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    res["wall_s"] = round(time.perf_counter() - started, 1)
    print(markdown(res))
    write_json(args.json, res)
    return res


def markdown(res: dict) -> str:
    q = res["quality"]
    lines = ["| schedule | samples/s | p50 ms | p99 ms | answered | refused (503) | fd_digits | digits_accuracy "
             "| auto chose | auto: observed / model latency p10-p50-p90 | load avg (1 min) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        w = r["workload"]
        chose = ", ".join(f"{k} {v}" for k, v in r["auto_chose"].items()) if w == "auto" else "-"
        err = r.get("auto_observed_over_model")
        err = f"{err['p10']}-{err['p50']}-{err['p90']}" if err else "-"
        lines.append(f"| {w} | {r['samples_per_s']:.2f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                     f"{r['answered']}/{r['arrivals']} | {r['errors'].get('503', 0)} | "
                     f"{q[w].get('fd_digits', float('nan')):.2f} | {q[w].get('digits_accuracy', float('nan')):.3f} | "
                     f"{chose} | {err} | {r['loadavg_1m'][0]:.1f}-{r['loadavg_1m'][1]:.1f} |")
    return (f"`{res['command']}` ({res['offered_rps']} requests/s; quality of the first {q['samples_scored']} "
            "answered samples of each)\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
