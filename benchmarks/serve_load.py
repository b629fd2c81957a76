"""Load benchmark of the HTTP service: C concurrent clients for T seconds per scenario.

  python -m benchmarks.serve_load --json benchmarks/results/serve_load.json
  python -m benchmarks.serve_load --only settings --clients 64      # mixed vs identical settings
  python -m benchmarks.serve_load --engine 64                        # the same, without Ray or HTTP

Starts a local Ray and Serve on 127.0.0.1 (loopback only), deploys a randomly initialised
generator (speed does not depend on the weights), and runs each scenario for at most
--seconds and --max-requests: every client posts one request, waits for the answer, posts
the next. Reports throughput (samples/s), p50/p99 latency, the batch sizes the service
reported and, for schedule "auto", which presets it chose. Scenarios:
  - batching off (max_batch_size 1) vs on, for the baseline and MaGNeTS schedules;
  - the baseline vs the MaGNeTS presets with batching on;
  - float settings (MaGNeTS, batching on): every client the same temperature, near-equal ones
    (1.0 + 0.0004 k, rounded to 0.01 by the service), distinct ones (0.5 + 0.1 k);
  - settings (MaGNeTS, batching on): every client the same guided settings ("identical":
    temperature 1, guidance 1, cache on_switch) vs each its own ("mixed": temperatures, guidance
    scales > 0 and twelve spellings of on_switch, so the same FLOPs per sample). Temperature and
    guidance are per row inside a decode and the cache policy is normalised, so both run one
    decode per batch; before that, mixed settings ran one decode per distinct setting;
  - high load (--overload-clients): fixed baseline and magnets vs "auto" with a latency
    target. With closed-loop clients, latency >= clients / throughput: past what the cheapest
    preset can serve, no schedule holds the target and auto falls back to the cheapest.
The clients run in this process, on the same machine as the service: on a small machine they
take CPU from it, so absolute numbers are lower bounds; compare rows with each other.

`--engine N` measures the settings scenarios without Ray or HTTP: one batch of N one-sample
requests per scenario through nestgen.serving.Engine.run (what a replica does with a Serve
batch), alternating the scenarios --repeats times, and reports the median seconds, the decode
groups the batch split into and the mixed / identical ratio, measured in one process.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from collections import Counter

from benchmarks.common import free_port, loopback_ray_env, write_json

loopback_ray_env()


def _checkpoint(folder: str, width: int, depth: int) -> str:
    import torch

    from nestgen.checkpoint import save_checkpoint
    from nestgen.config import config_from_dict
    from nestgen.model.nested_transformer import NestedTransformer
    torch.manual_seed(0)
    cfg = config_from_dict({"model": {"width": width, "depth": depth}})
    return save_checkpoint(f"{folder}/checkpoint.pt", cfg, NestedTransformer(cfg.model))


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


# Twelve spellings of the cache policy on_switch (the service normalises them).
ON_SWITCH = ["on_switch", " on_switch", "on_switch ", "\ton_switch", "on_switch\n", " on_switch ",
             "never_within_size", " never_within_size", "never_within_size ", "\tnever_within_size",
             "never_within_size\n", " never_within_size "]
# Per-client request settings (client k) of the float-settings and settings scenarios.
SETTINGS = {
    "temps equal": lambda k: {"temperature": 1.0},
    "temps near-equal": lambda k: {"temperature": 1.0 + 0.0004 * k},
    "temps distinct": lambda k: {"temperature": 0.5 + 0.1 * k},
    "settings identical": lambda k: {"temperature": 1.0, "guidance_scale": 1.0, "cache": "on_switch"},
    "settings mixed": lambda k: {"temperature": round(0.5 + 0.1 * (k % 11), 2),
                                 "guidance_scale": 0.5 + 0.25 * (k % 7), "cache": ON_SWITCH[k % 12]},
}


async def _load(url: str, body: dict, clients: int, seconds: float, max_requests: int, target_s: float,
                settings=None) -> dict:
    import httpx
    lat, batch, chosen, errors, samples = [], [], Counter(), Counter(), 0
    issued = 0
    deadline = time.perf_counter() + seconds

    async def client(http, k):
        nonlocal issued, samples
        seed = 1000 * k
        mine = body if settings is None else body | settings(k)
        while time.perf_counter() < deadline and issued < max_requests:
            issued += 1
            seed += 1
            t0 = time.perf_counter()
            r = await http.post(url + "/v1/generate", json=mine | {"seed": seed}, timeout=120)
            if r.status_code != 200:
                errors[r.status_code] += 1
                continue
            lat.append(time.perf_counter() - t0)
            m = r.json()
            samples += len(m["samples"])
            batch.append(m["batch_size"])
            chosen[m["schedule_name"]] += 1

    t0 = time.perf_counter()
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.gather(*(client(http, k) for k in range(clients)))
    wall = time.perf_counter() - t0
    return {"requests": len(lat), "errors": dict(errors), "wall_s": wall, "samples_per_s": samples / wall,
            "p50_ms": 1e3 * statistics.median(lat) if lat else None,
            "p99_ms": 1e3 * _percentile(lat, 0.99) if lat else None,
            "mean_batch_size": statistics.mean(batch) if batch else None,
            "max_batch_size_seen": max(batch) if batch else None, "schedules": dict(chosen),
            "share_within_target": sum(x <= target_s for x in lat) / len(lat) if lat else None}


def _deploy(ckpt: str, batching: bool, args):
    from ray import serve

    from nestgen.serving.config import ServeConfig
    from pipelines.serve import build
    cfg = ServeConfig(checkpoint=ckpt, max_batch_size=args.max_batch_size if batching else 1,
                      batch_wait_timeout_s=args.batch_wait if batching else 0.0,
                      max_ongoing_requests=max(*args.overload_clients, 2 * args.max_batch_size),
                      max_samples_per_request=1, cpus_per_replica=1.0,
                      auto_presets=["baseline", "magnets", "magnets-lite"],
                      auto_latency_target_s=args.auto_target)
    serve.run(build(cfg), name="bench", route_prefix="/")
    return cfg


def run(args) -> dict:
    import httpx
    from ray import serve

    from pipelines.ray_runtime import init_ray
    init_ray()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    rows = []
    scenarios = [  # (name, batching, schedule, clients)
        ("batching off", False, "baseline", args.clients),
        ("batching off", False, "magnets", args.clients),
        ("batching on", True, "baseline", args.clients),
        ("batching on", True, "magnets", args.clients),
        ("batching on", True, "magnets-lite", args.clients),
    ] + [(name, True, "magnets", args.clients) for name in SETTINGS] \
      + [(f"load C={c}", True, schedule, c) for c in args.overload_clients
         for schedule in ("baseline", "magnets", "auto")]
    if args.only:
        scenarios = [sc for sc in scenarios if sc[0].startswith(args.only)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = _checkpoint(tmp, args.width, args.depth)
            deployed = None
            for name, batching, schedule, clients in scenarios:
                if deployed != batching:
                    _deploy(ckpt, batching, args)
                    deployed = batching
                    presets = {p["name"]: p for p in httpx.get(url + "/v1/schedules").json()["presets"]}
                body = {"class_label": 3, "schedule": schedule, "format": "png"}
                res = asyncio.run(_load(url, body, clients, args.seconds, args.max_requests, args.auto_target,
                                        SETTINGS.get(name)))
                gf = presets.get(schedule, {}).get("gflops_per_sample")
                rows.append({"scenario": name, "schedule": schedule, "clients": clients,
                             "max_batch_size": args.max_batch_size if batching else 1,
                             "gflops_per_sample": gf, **res})
                r = rows[-1]
                print(f"  {name:18s} {schedule:13s} C={clients:3d}: {r['samples_per_s']:7.1f} samples/s, "
                      f"p50 {r['p50_ms']:7.0f} ms, p99 {r['p99_ms']:7.0f} ms, batch {r['mean_batch_size']:.1f} "
                      f"{r['schedules'] if schedule == 'auto' else ''}", flush=True)
    finally:
        serve.shutdown()
    return {"model": {"width": args.width, "depth": args.depth, "tokens": 64, "vocab": 17},
            "device": platform.processor() or "cpu", "cpu_count": os.cpu_count(),
            "seconds_per_scenario": args.seconds, "max_requests": args.max_requests,
            "batch_wait_timeout_s": args.batch_wait, "auto_latency_target_s": args.auto_target,
            "replica": {"cpus": 1, "torch_threads": 1}, "rows": rows}


def print_table(res: dict) -> None:
    print(f"\nmodel {res['model']}  {res['cpu_count']} CPUs, {res['seconds_per_scenario']} s per scenario, "
          f"auto target {res['auto_latency_target_s']} s")
    print(f"{'scenario':18s} {'schedule':13s} {'C':>3s} {'GFLOPs/smp':>10s} {'samples/s':>9s} {'p50 ms':>7s} "
          f"{'p99 ms':>7s} {'batch':>5s} {'<=target':>8s}  chosen")
    for r in res["rows"]:
        gf = f"{r['gflops_per_sample']:.3f}" if r["gflops_per_sample"] else "-"
        print(f"{r['scenario']:18s} {r['schedule']:13s} {r['clients']:3d} {gf:>10s} {r['samples_per_s']:9.1f} "
              f"{r['p50_ms']:7.0f} {r['p99_ms']:7.0f} {r['mean_batch_size']:5.1f} {r['share_within_target']:8.0%}  "
              f"{r['schedules'] if r['schedule'] == 'auto' else ''}{' errors ' + str(r['errors']) if r['errors'] else ''}")


def run_engine(args) -> dict:
    """The settings scenarios through Engine.run, no Ray: a batch of args.engine requests each."""
    import torch

    from nestgen.serving.batching import group_jobs
    from nestgen.serving.config import ServeConfig
    from nestgen.serving.engine import Engine
    from nestgen.serving.request import GenerateRequest
    from nestgen.serving.resolve import resolve_request
    torch.set_num_threads(1)         # as a replica with cpus_per_replica 1
    names = ["settings identical", "settings mixed"]
    with tempfile.TemporaryDirectory() as tmp:
        eng = Engine(ServeConfig(checkpoint=_checkpoint(tmp, args.width, args.depth), auto_presets=[]))
        batches = {name: [resolve_request(GenerateRequest(class_label=3, schedule="magnets", format="png",
                                                          seed=k, **SETTINGS[name](k)), eng.spec)
                          for k in range(args.engine)] for name in names}
        eng.run(batches[names[0]][:2])                               # warm-up
        seconds = {name: [] for name in names}
        for _ in range(args.repeats):
            for name in names:
                t0 = time.perf_counter()
                out = eng.run(batches[name])
                seconds[name].append(time.perf_counter() - t0)
                assert all(isinstance(r, dict) for r in out), out
    rows = [{"scenario": name, "requests": args.engine, "decode_groups": len(group_jobs(batches[name])),
             "seconds": statistics.median(seconds[name]), "all_seconds": seconds[name],
             "samples_per_s": args.engine / statistics.median(seconds[name])} for name in names]
    ratio = rows[1]["seconds"] / rows[0]["seconds"]
    print(f"\nEngine.run, model width {args.width} depth {args.depth}, {args.engine} one-sample requests per "
          f"batch, median of {args.repeats}")
    for r in rows:
        print(f"{r['scenario']:18s} groups {r['decode_groups']:3d}  {r['seconds']:7.3f} s  "
              f"{r['samples_per_s']:7.1f} samples/s")
    print(f"mixed / identical time: {ratio:.2f}x")
    return {"model": {"width": args.width, "depth": args.depth}, "cpu_count": os.cpu_count(), "torch_threads": 1,
            "repeats": args.repeats, "rows": rows, "mixed_over_identical_time": ratio}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients C")
    ap.add_argument("--overload-clients", type=int, nargs="+", default=[32, 64],
                    help="client counts of the high-load scenarios (baseline vs magnets vs auto)")
    ap.add_argument("--seconds", type=float, default=12.0, help="T per scenario")
    ap.add_argument("--max-requests", type=int, default=5000, help="per scenario")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--batch-wait", type=float, default=0.02, help="batch_wait_timeout_s")
    ap.add_argument("--auto-target", type=float, default=1.0, help="auto_latency_target_s")
    ap.add_argument("--only", help="run only the scenarios whose name starts with this (e.g. 'temps')")
    ap.add_argument("--engine", type=int, metavar="N",
                    help="measure the settings scenarios through Engine.run (no Ray, no HTTP), N requests per batch")
    ap.add_argument("--repeats", type=int, default=5, help="with --engine: batches per scenario")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if args.engine:
        res = run_engine(args)
    else:
        res = run(args)
        print_table(res)
    write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
