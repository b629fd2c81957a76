"""Open-loop load benchmark of the HTTP service: Poisson arrivals at several rates against a
real local `nestgen serve`, for each batching mode, on loopback.

  flock /tmp/nestgen-ray.lock nice python -m benchmarks.serve_load --rates 4 8 12 16 \\
      --batching request step --json benchmarks/results/serve_load_poisson.json

Each batching mode gets its own `nestgen serve` (a subprocess with its own local Ray, bound to
127.0.0.1) serving a randomly initialised generator (speed does not depend on the weights).
The services run side by side for the whole benchmark and the modes are measured interleaved:
at each rate one point per mode back to back (which mode goes first alternates from rate to
rate), so that the shared machine's outside load hits both alike; the idle service waits
meanwhile. The 1-minute load average before and after each point is in the results.
Requests arrive as a Poisson process: the arrival times are drawn before the point starts and
a request is sent at its time whether or not earlier ones were answered (open loop: a slow
service meets a growing queue, as it would in production, instead of slowing its clients down
as closed-loop clients let it). Arrivals last --seconds; then the point waits at most --drain
seconds for the answers still owed and hangs up on the rest (counted as unfinished). Every
point is bounded in time, and the next starts once the replica's queue is empty.

The request mix (MIX): the baseline, MaGNeTS, a searched schedule and `auto`, each with its own
spread of guidance scales and temperatures, one sample each, classes and seeds drawn per
request. A share of the requests (--stream-share) ask for a stream of per-step previews
(`"stream": true`) when the service offers one (batching step), and the time to the first preview
is measured on them; otherwise (batching request) the first thing a client sees is the whole
answer, and that column is its latency.

Reported per rate: offered and sustained throughput (samples answered / time until the last
answer), p50 / p99 latency of the answered requests, p50 / p99 time to first preview, answered
share, errors by status, the presets `auto` chose, and the machine's load average (the machine
is shared: a point measured under someone else's load reads slower). Then:
  - request-level saturation: the highest rate whose sustained throughput is >= 90% of the
    offered and whose answers all came; one more point at 80% of it for every mode, and the
    ratio of their p99s;
  - throughput at equal p99: the highest sustained throughput each mode reached with p99 within
    request-level's p99 at its saturation rate, and their ratio; and the same at fixed p99 levels
    (--p99-levels);
  - mixed vs identical settings (--settings-rate, above capacity so that throughput is the
    capacity): every request the same MaGNeTS settings vs each its own temperature, guidance
    scale and spelling of the cache policy (same FLOPs per sample); time per sample of mixed
    over identical.
With --plot a PNG of latency against offered load, with --markdown the table.
The load generator runs on the same machine as the service: on a 2-core machine it takes CPU
from it, so absolute numbers are lower bounds; compare the modes with each other.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks.common import free_port, loopback_ray_env, write_json

SEARCHED = "4x2,2x5,1x5"    # the digits' searched schedule (README, "The paper's claim")
# (weight, request body without class/seed); guidance and temperature vary inside each kind.
MIX = [
    (1, {"schedule": "baseline"}),
    (1, {"schedule": "magnets", "cache": "on_switch"}),
    (1, {"schedule": SEARCHED, "cache": "on_switch"}),
    (1, {"schedule": "auto"}),
]
GUIDANCE = [0.0, 0.0, 1.0, 2.5]
TEMPERATURE = [0.8, 1.0, 1.0, 1.3]
# Twelve spellings of the cache policy on_switch (the service normalises them).
ON_SWITCH = ["on_switch", " on_switch", "on_switch ", "\ton_switch", "on_switch\n", " on_switch ",
             "never_within_size", " never_within_size", "never_within_size ", "\tnever_within_size",
             "never_within_size\n", " never_within_size "]
WORKLOADS = ("mix", "identical", "mixed")


def _body(workload: str, rng: random.Random) -> dict:
    """One request of `workload`: the mix, or the settings comparison's identical / mixed
    MaGNeTS requests (the same FLOPs per sample: guidance > 0 everywhere)."""
    common = {"class_label": rng.randrange(10), "seed": rng.randrange(2**31 - 1), "format": "png"}
    if workload == "identical":
        return common | {"schedule": "magnets", "temperature": 1.0, "guidance_scale": 1.0, "cache": "on_switch"}
    if workload == "mixed":
        return common | {"schedule": "magnets", "temperature": rng.choice([0.5 + 0.1 * k for k in range(11)]),
                         "guidance_scale": rng.choice([0.5 + 0.25 * k for k in range(7)]),
                         "cache": rng.choice(ON_SWITCH)}
    kind = rng.choices([b for _, b in MIX], weights=[w for w, _ in MIX])[0]
    return common | kind | {"guidance_scale": rng.choice(GUIDANCE), "temperature": rng.choice(TEMPERATURE)}


def _checkpoint(folder: str, width: int, depth: int) -> str:
    import torch

    from nestgen.checkpoint import save_checkpoint
    from nestgen.config import config_from_dict
    from nestgen.model.nested_transformer import NestedTransformer
    torch.manual_seed(0)
    cfg = config_from_dict({"model": {"width": width, "depth": depth}})
    return save_checkpoint(f"{folder}/checkpoint.pt", cfg, NestedTransformer(cfg.model))


def _percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


class Service:
    """`nestgen serve <file> --set batching=<mode>` as a subprocess in its own session (its local
    Ray's processes included), stopped with SIGTERM (Serve shuts down) and, past a bound, killed."""

    def __init__(self, folder: str, ckpt: str, mode: str | None, args):
        import yaml
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        serve_args = {"checkpoint": ckpt, "max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait,
                      "max_ongoing_requests": args.max_ongoing, "max_samples_per_request": 1, "cpus_per_replica": 1.0,
                      "auto_presets": ["baseline", "magnets", "magnets-lite"],
                      "auto_latency_target_s": args.auto_target, "decode_deadline_s": 300.0}
        cfg = Path(folder) / f"serve_{mode or 'default'}.yaml"
        cfg.write_text(yaml.safe_dump({"http_options": {"host": "127.0.0.1", "port": self.port},
                                       "applications": [{"name": "bench", "route_prefix": "/",
                                                         "import_path": "pipelines.serve:app_builder",
                                                         "args": serve_args}]}))
        cmd = [sys.executable, "-m", "pipelines", "serve", str(cfg)] + (["--set", f"batching={mode}"] if mode else [])
        self.log = open(Path(folder) / f"serve_{mode or 'default'}.log", "w+")
        # Its own Ray temp folder: a local Ray otherwise joins whichever cluster this machine
        # started last (/tmp/ray/ray_current_cluster), e.g. someone else's.
        env = os.environ | {"RAY_TMPDIR": f"{folder}/ray-{mode or 'default'}"}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env=env)

    def wait_ready(self, timeout: float = 300) -> dict:
        import httpx
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"nestgen serve exited with {self.proc.returncode}:\n{self.log.read()[-3000:]}")
            try:
                if httpx.get(self.url + "/v1/health", timeout=5).status_code == 200:
                    return httpx.get(self.url + "/v1/model", timeout=30).json()
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"nestgen serve not ready within {timeout:.0f} s")

    def stop(self) -> None:
        import psutil
        try:
            family = [self.proc.pid] + [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family = [self.proc.pid]
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in family[1:]:          # anything of its own it left behind (only its descendants)
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass
        self.log.close()


async def _one(http, url: str, body: dict, stream: bool, timeout: float) -> dict:
    """Send one request; its latency, time to first preview, samples, status."""
    t0 = time.perf_counter()
    out = {"t0": t0, "kind": body.get("schedule"), "status": None, "samples": 0, "latency": None, "ttfp": None,
           "streamed": stream}
    try:
        if not stream:
            r = await http.post(url + "/v1/generate", json=body, timeout=timeout)
            out["status"] = r.status_code
            if r.status_code == 200:
                final = r.json()
        else:
            final = None
            async with http.stream("POST", url + "/v1/generate", json=body | {"stream": True}, timeout=timeout) as r:
                out["status"] = r.status_code
                if r.status_code == 200:
                    async for line in r.aiter_lines():
                        if not line:
                            continue
                        event = json.loads(line)
                        if event["event"] == "step" and out["ttfp"] is None:
                            out["ttfp"] = time.perf_counter() - t0
                        elif event["event"] == "result":
                            final = event["result"]
                        elif event["event"] == "error":
                            out["status"] = event.get("status", 500)
                else:
                    await r.aread()
            if final is None and out["status"] == 200:
                out["status"] = "truncated"
        if out["status"] == 200:
            out["latency"] = time.perf_counter() - t0
            if not stream:      # no previews: the first thing the client sees is the answer
                out["ttfp"] = out["latency"]
            out["samples"] = len(final["samples"])
            out["tokens"] = [x["tokens"] for x in final["samples"] if "tokens" in x]
            out["schedule_name"], out["batch_size"] = final["schedule_name"], final.get("batch_size")
            out["auto"] = final.get("auto")
    except asyncio.CancelledError:
        out["status"] = "unfinished"
    except Exception as e:          # noqa: BLE001 - a benchmark row, counted by kind
        out["status"] = type(e).__name__
    out["t1"] = time.perf_counter()
    return out


async def _queue_empty(http, url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if (await http.get(url + "/v1/health", timeout=10)).json()["queue_rows"] == 0:
                return True
        except Exception:        # noqa: BLE001 - a busy replica may answer late; try again
            pass
        await asyncio.sleep(0.5)
    return False


async def _point(url: str, rate: float, workload: str, stream: bool, args, seed: int,
                 make_body=_body, answers: list | None = None) -> dict:
    """Poisson arrivals at `rate` requests/s for args.seconds, then at most args.drain s of drain.
    `make_body(workload, rng)`: a request; `answers`: gets (request, answered tokens) of each
    request answered in format tokens, in order of arrival."""
    import httpx
    rng = random.Random(seed)
    times, t = [], rng.expovariate(rate)
    while t < args.seconds:
        times.append(t)
        t += rng.expovariate(rate)
    bodies = [make_body(workload, rng) for _ in times]
    streams = [stream and rng.random() < args.stream_share for _ in times]
    load_before = os.getloadavg()
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=None, max_keepalive_connections=64)) as http:
        start = time.perf_counter()

        async def fire(at: float, body: dict, streamed: bool) -> dict:
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            return await _one(http, url, body, streamed, args.seconds + args.drain + 30)

        tasks = [asyncio.create_task(fire(at, b, st)) for at, b, st in zip(times, bodies, streams)]
        done, pending = await asyncio.wait(tasks, timeout=args.seconds + args.drain)
        for task in pending:
            task.cancel()
        results = [await task for task in tasks]
        end = time.perf_counter()
        settled = await _queue_empty(http, url, args.settle)
    load_after = os.getloadavg()
    ok = [r for r in results if r["status"] == 200]
    if answers is not None:
        answers.extend((b, r["tokens"]) for b, r in zip(bodies, results) if r["status"] == 200 and r["tokens"])
    lat = [r["latency"] for r in ok]
    # time to first preview: of the streamed requests (without any, of all: their answers)
    ttfp = [r["ttfp"] for r in ok if r["streamed"]] or [r["ttfp"] for r in ok]
    last = max((r["t1"] for r in ok), default=end)
    samples = sum(r["samples"] for r in ok)
    return {"workload": workload, "offered_rps": rate, "arrivals": len(times), "arrival_rps": len(times) / args.seconds,
            "answered": len(ok), "streamed": sum(r["streamed"] for r in ok),
            "answered_share": len(ok) / len(times) if times else None,
            "errors": dict(Counter(str(r["status"]) for r in results if r["status"] != 200)),
            "samples_per_s": samples / (last - start) if ok else 0.0,
            "p50_ms": _ms(statistics.median(lat) if lat else None), "p99_ms": _ms(_percentile(lat, 0.99)),
            "ttfp_p50_ms": _ms(statistics.median(ttfp) if ttfp else None), "ttfp_p99_ms": _ms(_percentile(ttfp, 0.99)),
            "mean_batch_size": statistics.mean(r["batch_size"] for r in ok) if ok and ok[0].get("batch_size") else None,
            "auto_chose": dict(Counter(r["schedule_name"] for r in ok if r["kind"] == "auto")),
            # how far auto's latency model was off: observed / its uncorrected prediction
            "auto_observed_over_model": _quantiles([r["latency"] / r["auto"]["model_latency_s"] for r in ok
                                                    if r.get("auto") and r["auto"]["model_latency_s"] > 0]),
            "auto_met_target_share": (statistics.mean(r["auto"]["met_target"] for r in ok if r.get("auto"))
                                      if any(r.get("auto") for r in ok) else None),
            "p99_ms_by_kind": {k: _ms(_percentile([r["latency"] for r in ok if r["kind"] == k], 0.99))
                               for k in sorted({str(r["kind"]) for r in ok})},
            "wall_s": end - start, "queue_emptied": settled,
            "loadavg_1m": [round(load_before[0], 2), round(load_after[0], 2)]}


def _quantiles(xs: list[float]) -> dict | None:
    """p10 / p50 / p90 of xs (None when empty)."""
    return {f"p{q}": round(_percentile(xs, q / 100), 3) for q in (10, 50, 90)} if xs else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1e3 * seconds, 1)


def _streams(url: str) -> bool:
    """Whether the service answers `"stream": true` (an older one refuses the field with 422)."""
    import httpx
    r = httpx.post(url + "/v1/generate", json={"format": "tokens", "stream": True}, timeout=120)
    return r.status_code == 200


def _saturated(row: dict) -> bool:
    """Fell behind: answers missing, or fewer samples/s than actually arrived (Poisson counts
    stray from the offered rate by a few percent in a minute)."""
    return row["answered_share"] < 0.99 or row["samples_per_s"] < 0.9 * row["arrival_rps"]


def _extra_rate(rows: list[dict], rates: list[float]) -> list[float]:
    """80% of the highest unsaturated rate, when it is not one of the measured rates already."""
    ok = [r["offered_rps"] for r in rows if not _saturated(r)]
    at80 = round(0.8 * max(ok), 2) if ok else None
    return [at80] if at80 and at80 not in rates else []


class _Mode:
    """One batching mode's running service and what has been measured on it."""

    def __init__(self, mode: str | None, ckpt: str, tmp: str, args):
        self.name = mode or "default"
        self.svc = Service(tmp, ckpt, mode, args)
        self.info, self.stream, self.rows, self.settings = None, False, [], []

    def ready(self, args) -> None:
        self.info = self.svc.wait_ready()
        self.stream = args.stream and _streams(self.svc.url)
        print(f"[{self.name}] serving on {self.svc.url} (stream previews: {self.stream})", flush=True)

    def point(self, rate: float, workload: str, args, seed: int) -> dict:
        row = asyncio.run(_point(self.svc.url, rate, workload, self.stream, args, seed))
        _print_row(self.name, row)
        return row

    def result(self) -> dict:
        return {"batching": self.name, "stream": self.stream, "limits": self.info["limits"], "rows": self.rows,
                "settings": self.settings}


def _measure_interleaved(modes: list[str | None], ckpt: str, tmp: str, args) -> list[dict]:
    """Every mode's service up at once; each rate (then 80% of the first mode's saturation
    rate, then the settings points) measured on every mode back to back, the order
    alternating, so that outside load in one stretch of time falls on all modes."""
    running = [_Mode(m, ckpt, tmp, args) for m in modes]
    try:
        for m in running:
            m.ready(args)

        def each(k: int):
            return running if k % 2 == 0 else running[::-1]
        for k, rate in enumerate(args.rates):
            for m in each(k):
                m.rows.append(m.point(rate, "mix", args, seed=1000 + round(100 * rate)))
        for k, rate in enumerate(_extra_rate(running[0].rows, args.rates), start=len(args.rates)):
            for m in each(k):
                m.rows.append(m.point(rate, "mix", args, seed=1000 + round(100 * rate)))
        if args.settings_rate:
            for k, workload in enumerate(("identical", "mixed")):
                for m in each(k):
                    m.settings.append(m.point(args.settings_rate, workload, args, seed=7))
        return [m.result() for m in running]
    finally:
        for m in running:
            m.svc.stop()


def _print_row(mode, r: dict) -> None:
    print(f"  {mode or 'default':8s} {r['workload']:9s} {r['offered_rps']:5.1f}/s: {r['samples_per_s']:5.2f} samples/s, "
          f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, first preview p50 {r['ttfp_p50_ms']} ms, "
          f"answered {r['answered']}/{r['arrivals']} {r['errors'] or ''} load {r['loadavg_1m']}", flush=True)


def summarise(res: dict, levels: list[float]) -> dict:
    """Saturation of the first mode (request-level), p99 at 80% of it, throughput at equal p99,
    mixed / identical time per sample."""
    modes = res["modes"]
    ref = modes[0]
    ok = [r for r in ref["rows"] if not _saturated(r)]
    out: dict = {"reference": ref["batching"]}
    if ok:
        sat = max(ok, key=lambda r: r["offered_rps"])
        out["saturation_rps"] = sat["offered_rps"]
        # not reached: the reference kept up with every rate, so its saturation lies above them
        out["saturation_reached"] = len(ok) < len(ref["rows"])
        level = sat["p99_ms"]
        out["equal_p99_level_ms"] = level
        best = {m["batching"]: max((r["samples_per_s"] for r in m["rows"]
                                    if r["p99_ms"] is not None and r["p99_ms"] <= level and r["answered_share"] >= 0.99),
                                   default=None) for m in modes}
        out["throughput_at_equal_p99"] = best
        at80 = round(0.8 * sat["offered_rps"], 2)
        p99 = {m["batching"]: next((r["p99_ms"] for r in m["rows"] if abs(r["offered_rps"] - at80) < 1e-6), None)
               for m in modes}
        out["p99_at_80pct_saturation_ms"] = {"rate_rps": at80, **p99}
        out["throughput_at_p99_levels"] = {
            f"{level:g}": {m["batching"]: max((r["samples_per_s"] for r in m["rows"] if r["p99_ms"] is not None
                                               and r["p99_ms"] <= level and r["answered_share"] >= 0.99), default=None)
                           for m in modes} for level in levels}
        for m in modes[1:]:
            b = m["batching"]
            if best.get(b) and best.get(ref["batching"]):
                out[f"throughput_ratio_{b}"] = best[b] / best[ref["batching"]]
            if p99.get(b) and p99.get(ref["batching"]):
                out[f"p99_ratio_at_80pct_{b}"] = p99[b] / p99[ref["batching"]]
    for m in modes:
        s = {r["workload"]: r for r in m["settings"]}
        if s.get("identical", {}).get("samples_per_s") and s.get("mixed", {}).get("samples_per_s"):
            out[f"mixed_over_identical_time_{m['batching']}"] = s["identical"]["samples_per_s"] / s["mixed"]["samples_per_s"]
    return out


def markdown(res: dict) -> str:
    head = ("| batching | workload | offered req/s | samples/s | p50 ms | p99 ms | first preview (or answer) p50 / p99 ms "
            "| answered | load avg (1 min) |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for m in res["modes"]:
        for r in m["rows"] + m["settings"]:
            ttfp = "-" if r["ttfp_p50_ms"] is None else f"{r['ttfp_p50_ms']:.0f} / {r['ttfp_p99_ms']:.0f}"
            fmt = (lambda v: "-" if v is None else f"{v:.0f}")
            lines.append(f"| {m['batching']} | {r['workload']} | {r['offered_rps']:g} | {r['samples_per_s']:.2f} | "
                         f"{fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {ttfp} | {r['answered']}/{r['arrivals']} | "
                         f"{r['loadavg_1m'][0]:.1f}-{r['loadavg_1m'][1]:.1f} |")
    summary = "\n".join(f"- {k}: {round(v, 3) if isinstance(v, float) else v}" for k, v in res["summary"].items())
    return f"`{res['command']}`\n\n{head}" + "\n".join(lines) + f"\n\n{summary}\n"


def plot(res: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(11, 4))
    for m, color in zip(res["modes"], ("tab:blue", "tab:red", "tab:green")):
        rows = sorted((r for r in m["rows"] if r["p50_ms"] is not None), key=lambda r: r["offered_rps"])
        x = [r["offered_rps"] for r in rows]
        ax_lat.plot(x, [r["p99_ms"] / 1e3 for r in rows], "o-", color=color, label=f"{m['batching']} p99")
        ax_lat.plot(x, [r["p50_ms"] / 1e3 for r in rows], "s--", color=color, label=f"{m['batching']} p50")
        if m["stream"]:          # without previews the first thing seen is the answer (p50 above)
            ax_lat.plot(x, [r["ttfp_p50_ms"] / 1e3 for r in rows], "^:", color=color,
                        label=f"{m['batching']} first preview p50")
        ax_tp.plot(x, [r["samples_per_s"] for r in rows], "o-", color=color, label=m["batching"])
    ax_lat.set_yscale("log")
    ax_lat.set(xlabel="offered load (requests/s, 1 sample each)", ylabel="latency (s)", title="latency against load")
    top = max(r["offered_rps"] for m in res["modes"] for r in m["rows"])
    ax_tp.plot([0, top], [0, top], color="0.7", lw=1, label="offered")
    ax_tp.set(xlabel="offered load (requests/s)", ylabel="samples/s answered", title="sustained throughput")
    for ax in (ax_lat, ax_tp):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"nestgen serve, mixed workload, open-loop Poisson arrivals ({res['cpu_count']} CPUs, "
                 f"{res['seconds_per_point']:g} s per point)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


ENGINE_MODES = ("request, batches of max_batch_size", "request, one at a time", "step")


def _engine_jobs(engine, workload: str, n: int, seed: int) -> list:
    """n one-sample jobs of `workload` (format tokens: the decode alone), resolved by `engine`;
    "auto" becomes magnets-lite (what auto picks depends on a queue, and both modes must run
    the same work)."""
    from nestgen.serving.request import GenerateRequest
    rng = random.Random(seed)
    bodies = [_body(workload, rng) | {"format": "tokens"} for _ in range(n)]
    return [engine.resolve(GenerateRequest(**(b | ({"schedule": "magnets-lite"} if b.get("schedule") == "auto"
                                                   else {})))) for b in bodies]


def _engine_seconds(engine, mode: str, jobs: list, max_batch: int) -> float:
    """Wall seconds for `engine` to answer every job (all queued at once: saturation)."""
    t0 = time.perf_counter()
    if mode == "step":
        futures = [engine.submit(j) for j in jobs]
        while not all(f.done() for f in futures):
            engine.loop.tick()                 # the loop's thread would run the same ticks
    else:
        size = 1 if mode == "request, one at a time" else max_batch
        for i in range(0, len(jobs), size):
            engine.run(jobs[i:i + size])
    return time.perf_counter() - t0


def measure_engine(ckpt: str, n: int, repeats: int, max_batch: int) -> dict:
    """The decode work alone, in this process (no Ray, HTTP or rendering; one torch thread):
    n one-sample requests queued at once, answered by request-level batches of max_batch, by
    request-level one at a time, and by the step loop (max_active_rows = max_batch). The
    modes alternate within each repeat; the median of `repeats` is reported."""
    import torch

    from nestgen.serving.config import EngineConfig
    from nestgen.serving.engine import Engine
    torch.set_num_threads(1)
    common = {"checkpoint": ckpt, "auto_presets": [], "max_samples_per_request": 1, "max_batch_size": max_batch,
              "max_active_rows": max_batch, "max_queued_rows": max(n, max_batch)}
    engines = {"request": Engine(EngineConfig(batching="request", **common), device="cpu"),
               "step": Engine(EngineConfig(batching="step", **common), device="cpu")}
    rows = []
    for workload in WORKLOADS:
        jobs = _engine_jobs(engines["request"], workload, n, seed=1)
        _engine_seconds(engines["step"], "step", jobs[:4], max_batch)          # warm-up
        times = {m: [] for m in ENGINE_MODES}
        for r in range(repeats):
            for m in (ENGINE_MODES if r % 2 == 0 else ENGINE_MODES[::-1]):
                times[m].append(_engine_seconds(engines["step" if m == "step" else "request"], m, jobs,
                                                max_batch))
        for m in ENGINE_MODES:
            t = statistics.median(times[m])
            rows.append({"workload": workload, "mode": m, "requests": n, "seconds": round(t, 3),
                         "all_seconds": [round(x, 3) for x in times[m]], "samples_per_s": round(n / t, 2)})
            print(f"  engine {workload:9s} {m:36s} {n / t:6.2f} samples/s  (median of {repeats})", flush=True)
    by = {(r["workload"], r["mode"]): r["samples_per_s"] for r in rows}
    summary = {w: {"step_over_request_batches": round(by[(w, "step")] / by[(w, ENGINE_MODES[0])], 3),
                   "step_over_one_at_a_time": round(by[(w, "step")] / by[(w, ENGINE_MODES[1])], 3)}
               for w in WORKLOADS}
    summary["mixed_over_identical_time"] = {
        m: round(by[("identical", m)] / by[("mixed", m)], 3) for m in ENGINE_MODES}
    return {"requests": n, "repeats": repeats, "max_batch": max_batch, "torch_threads": 1, "rows": rows,
            "summary": summary}


def engine_markdown(res: dict) -> str:
    e = res["engine"]
    lines = [f"`{res['command']}` (load average {res['loadavg_1m_start']}-{res['loadavg_1m_end']})", "",
             "| workload | mode | samples/s | seconds (median) |", "|---|---|---|---|"]
    lines += [f"| {r['workload']} | {r['mode']} | {r['samples_per_s']:.2f} | {r['seconds']:.2f} |" for r in e["rows"]]
    lines += ["", *(f"- {k}: {v}" for k, v in e["summary"].items())]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--rates", type=float, nargs="+", default=[4, 8, 12, 16], help="offered requests/s")
    ap.add_argument("--batching", nargs="+", default=["request", "step"],
                    help="serve.batching modes, the reference first ('default': set nothing)")
    ap.add_argument("--seconds", type=float, default=60.0, help="arrivals per point")
    ap.add_argument("--drain", type=float, default=30.0, help="seconds to wait for answers after the arrivals")
    ap.add_argument("--settle", type=float, default=120.0, help="seconds to wait for an empty queue between points")
    ap.add_argument("--settings-rate", type=float, default=0.0,
                    help="offered requests/s of the mixed vs identical settings points (0: skip them)")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-ongoing", type=int, default=512, help="serve.max_ongoing_requests")
    ap.add_argument("--batch-wait", type=float, default=0.02, help="batch_wait_timeout_s")
    ap.add_argument("--auto-target", type=float, default=2.0, help="auto_latency_target_s")
    ap.add_argument("--no-stream", dest="stream", action="store_false", help="never ask for preview streams")
    ap.add_argument("--stream-share", type=float, default=0.25,
                    help="share of the requests that ask for per-step previews (batching step)")
    ap.add_argument("--p99-levels", type=float, nargs="*", default=[1000, 2000, 4000],
                    help="p99 levels (ms) at which to report each mode's highest sustained throughput")
    ap.add_argument("--engine", type=int, metavar="N", default=0,
                    help="instead of HTTP: N requests per workload through Engine in this process, "
                         "request-level vs step-level (measure_engine)")
    ap.add_argument("--repeats", type=int, default=3, help="--engine: repeats per mode (the median is reported)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--markdown", help="write the table here")
    ap.add_argument("--plot", help="write the latency-against-load PNG here")
    args = ap.parse_args(argv)
    loopback_ray_env()
    modes = [None if m == "default" else m for m in args.batching]
    res = {"command": "python -m benchmarks.serve_load " + " ".join(argv if argv is not None else sys.argv[1:]),
           "model": {"width": args.width, "depth": args.depth, "tokens": 64, "vocab": 17},
           "device": platform.processor() or "cpu", "cpu_count": os.cpu_count(),
           "seconds_per_point": args.seconds, "drain_s": args.drain, "max_batch_size": args.max_batch_size,
           "auto_latency_target_s": args.auto_target, "mix": {"kinds": [b for _, b in MIX], "guidance": GUIDANCE,
                                                              "temperature": TEMPERATURE},
           "stream_share": args.stream_share, "replica": {"cpus": 1, "torch_threads": 1}, "interleaved": True,
           "loadavg_1m_start": round(os.getloadavg()[0], 2)}
    started = time.perf_counter()
    if args.engine:
        with tempfile.TemporaryDirectory() as tmp:
            res["engine"] = measure_engine(_checkpoint(tmp, args.width, args.depth), args.engine, args.repeats,
                                           args.max_batch_size)
        res["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
        res["wall_s"] = round(time.perf_counter() - started, 1)
        print(engine_markdown(res))
        write_json(args.json, res)
        if args.markdown:
            Path(args.markdown).write_text(engine_markdown(res))
        return res
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = _checkpoint(tmp, args.width, args.depth)
        res["modes"] = _measure_interleaved(modes, ckpt, tmp, args)
    res["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    res["wall_s"] = round(time.perf_counter() - started, 1)
    res["summary"] = summarise(res, args.p99_levels)
    print(markdown(res))
    write_json(args.json, res)
    if args.markdown:
        Path(args.markdown).write_text(markdown(res))
    if args.plot:
        plot(res, args.plot)
    return res


if __name__ == "__main__":
    main()
