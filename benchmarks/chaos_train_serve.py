"""The train, driver and serve rows of the fault table (issue 24): each scenario of
chaoskit.train_faults / chaoskit.serve_faults on one local multi-node cluster (head + two
2-CPU worker nodes on 127.0.0.1), compared with an unfaulted run of the same config.

    python -m benchmarks.chaos_train_serve [--only train driver ...]

The rows, in benchmarks.chaos's columns, replace their earlier ones in
benchmarks/results/chaos_cpu.json (benchmarks.chaos keeps them when it rewrites the file);
their own cluster has a head with 1 CPU, for the training's Ray Data tasks. Hold
/tmp/nestgen-ray.lock while it runs (it starts Ray)."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from chaoskit import train_faults as tf

RESULTS = Path(__file__).resolve().parent / "results"


def _train_row(scenario: str, fault: str, row: dict, clean: dict) -> dict:
    """A row in benchmarks.chaos's columns: optimizer steps stand for rows (lost: short of the
    target; duplicated: optimizer steps beyond it, and metric steps MLflow has twice)."""
    diff = tf.max_weight_diff(row["_model"], clean["_model"]) if "_model" in row else None
    loss_diff = max((abs(row["loss"][s] - clean["loss"][s]) for s in clean["loss"] if s in row.get("loss", {})),
                    default=None)
    note = (f"start_step {row.get('start_step')} -> final_step {row.get('final_step')}; max abs weight diff vs "
            f"unfaulted {diff:.1e}, max abs loss diff {loss_diff:.1e}" if diff is not None else "no final checkpoint")
    if row.get("failure"):
        note += f"; failed after {row.get('seconds_to_fail')} s: {row['failure']}"
    if row.get("refused"):
        note += f"; run again at once: {row['refused'][0][:160]}; pipeline runs {row.get('pipeline_runs')}"
    return {"scenario": scenario, "fault": fault, "recovery_s": row.get("seconds_to_recover"),
            "rows_lost": clean["final_step"] - (row.get("final_step") or 0),
            "rows_duplicated": (row.get("scheduler_steps") or 0) - clean["final_step"] + row.get("duplicate_metric_steps", 0),
            "mlflow_runs": row.get("mlflow_runs"), "requests_failed": None,
            "outputs_equal": bool(row.get("final_step") == clean["final_step"] and diff is not None and diff <= 1e-5),
            "note": note}


SCENARIOS = ("train", "train (node stays down)", "driver", "serve")


def rows(root: Path, only=SCENARIOS) -> list[dict]:
    """The train/driver/serve rows (`only` those); starts (and stops) its own cluster. Each
    row is printed as it is made."""
    from chaoskit.cluster import LocalCluster
    from chaoskit.serve_faults import serve_scenario
    out = []
    with LocalCluster(root / "cluster", head_cpus=1, workers=(2, 2), env=tf.START_TIMEOUT_ENV) as c:
        import ray
        c.connect()
        try:
            clean = tf.unfaulted_train(root / "clean") if set(only) - {"serve"} else None
            for returns, name in ((True, SCENARIOS[0]), (False, SCENARIOS[1])):
                if name in only:
                    got = tf.train_scenario(c, root / f"train-{returns}", node_returns=returns)
                    out.append(_train_row(name, "worker node SIGKILLed at step 13 of 20 (checkpoint 10), " + (
                        "restarted" if returns else "stays down; next run after it returns"), got, clean))
                    print(json.dumps(out[-1], default=str), flush=True)
            if "driver" in only:
                ray.shutdown()
                drv = tf.driver_scenario(c, root / "driver")
                drv["_model"] = tf.checkpoint_facts(str(_final_checkpoint(root / "driver" / "out")))["model"]
                drv["final_step"] = drv.get("checkpoint_step")
                out.append(_train_row("driver", f"nestgen run SIGKILLed at step 13 of 20; run again, then after "
                                      f"the lease TTL", drv, clean))
                print(json.dumps(out[-1], default=str), flush=True)
                c.connect()
            if "serve" not in only:
                return out
            s = serve_scenario(c, root / "serve")
            out.append({"scenario": "serve", "fault": "node of 1 of 2 replicas SIGKILLed under load, then restarted",
                        "recovery_s": s["seconds_to_recover"], "rows_lost": None, "rows_duplicated": None,
                        "mlflow_runs": None,
                        "requests_failed": f"{s['failed']} of {s['requests']}: {', '.join(s['failed_how']) or 'none'}"
                                           f" ({s['retried']} answered {'/'.join(map(str, s['retried_statuses'])) or '-'}"
                                           " by Serve's proxy, sent again by the client)",
                        "outputs_equal": s["same_sample_as_before"],
                        "note": f"the client (pipelines.serve.client) sends a request again when Serve's proxy says "
                                f"its replica died (503 with Retry-After, or a bare 500 without nestgen's proxy "
                                f"middleware): {s['retried']} were; failed in flight at the kill "
                                f"{s['failed_in_flight_at_kill']}; after the controller "
                                f"dropped the replica {s['failed_after_recovery']} of {s['answered_after_recovery']} "
                                f"failed; max latency {s['max_latency_s']} s (timeout {s['request_timeout_s']} s); "
                                f"2 replicas again {s['seconds_to_restore']} s after the kill"})
            print(json.dumps(out[-1], default=str), flush=True)
        finally:
            ray.shutdown()
    return out


def _final_checkpoint(out: Path) -> Path:
    dag = json.loads((out / "dag.json").read_text())
    return Path(next(s for s in dag["steps"] if s["name"] == "train")["outputs"]["checkpoint_url"])


def main(argv: list[str] | None = None) -> int:
    from benchmarks.chaos import table
    from benchmarks.common import write_json
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=str(RESULTS / "chaos_cpu.json"),
                    help="benchmarks.chaos's results: these rows replace their earlier ones there")
    ap.add_argument("--only", nargs="*", choices=SCENARIOS, default=list(SCENARIOS), help="scenarios to run")
    args = ap.parse_args(argv)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="chaos-ts-") as d:
        result = rows(Path(d), only=args.only)
    path = Path(args.json)
    doc = json.loads(path.read_text()) if path.exists() else {"rows": []}
    ran = {r["scenario"] for r in result}
    doc["rows"] = [r for r in doc["rows"] if r["scenario"] not in ran] + result
    only = "" if set(args.only) == set(SCENARIOS) else " --only " + " ".join(f"'{o}'" for o in args.only)
    for name in ran:
        doc.setdefault("commands", {})[name] = (f"python -m benchmarks.chaos_train_serve{only} ({time.time() - t0:.0f} s; "
                                                "head with 1 CPU + 2 worker nodes x 2 CPUs)")
    print(table(result))
    write_json(str(path), doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
