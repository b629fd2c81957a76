"""The train, driver and serve rows of the fault table (issue 24): each scenario of
chaoskit.train_faults / chaoskit.serve_faults on one local multi-node cluster (head + two
2-CPU worker nodes on 127.0.0.1), compared with an unfaulted run of the same config.

    python -m benchmarks.chaos_train_serve [--out benchmarks/results/chaos_train_serve_cpu.json]

benchmarks.chaos puts these rows in its table (`rows(root)`). Hold /tmp/nestgen-ray.lock
while it runs (it starts Ray)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from chaoskit import train_faults as tf

RESULTS = Path(__file__).resolve().parent / "results"


def _train_row(row: dict, clean: dict) -> dict:
    ok = row.get("final_step") == clean["final_step"]
    diff = tf.max_weight_diff(row["_model"], clean["_model"]) if "_model" in row else None
    loss_diff = max((abs(row["loss"][s] - clean["loss"][s]) for s in clean["loss"] if s in row.get("loss", {})),
                    default=None)
    return {"scenario": row["scenario"],
            "seconds_to_recover": row.get("seconds_to_recover"),
            "seconds_to_fail": row.get("seconds_to_fail"),
            "failure_line": row.get("failure"),
            "rows_lost": (clean["final_step"] - (row.get("final_step") or 0)),      # optimizer steps short of the target
            "rows_duplicated": (row.get("scheduler_steps") or 0) - clean["final_step"] + row.get("duplicate_metric_steps", 0),
            "mlflow_runs_for_step": row.get("mlflow_runs"),
            "requests_failed": "n/a",
            "start_step": row.get("start_step"), "final_step": row.get("final_step"),
            "max_weight_diff_vs_unfaulted": diff, "max_loss_diff_vs_unfaulted": loss_diff,
            "outputs_equal_unfaulted": bool(ok and diff is not None and diff <= 1e-5),
            **{k: row[k] for k in ("refused", "pipeline_runs") if k in row}}


SCENARIOS = ("train", "train-down", "driver", "serve")


def rows(root: Path, only=SCENARIOS) -> list[dict]:
    """The train/driver/serve rows (`only` those); starts (and stops) its own cluster. Each
    row is printed as it is made."""
    os.environ.update(tf.START_TIMEOUT_ENV)
    from chaoskit.cluster import LocalCluster
    from chaoskit.serve_faults import serve_scenario
    out = []
    with LocalCluster(root / "cluster", head_cpus=1, workers=(2, 2)) as c:
        import ray
        ray.init(address=c.address)
        try:
            clean = tf.unfaulted_train(root / "clean") if set(only) - {"serve"} else None
            for returns, name in ((True, "train"), (False, "train-down")):
                if name in only:
                    out.append(_train_row(tf.train_scenario(c, root / name, node_returns=returns), clean))
                    print(json.dumps(out[-1], default=str), flush=True)
            if "driver" in only:
                ray.shutdown()
                drv = tf.driver_scenario(c, root / "driver")
                drv["_model"] = tf.checkpoint_facts(str(_final_checkpoint(root / "driver" / "out")))["model"]
                drv["final_step"] = drv.get("checkpoint_step")
                out.append(_train_row(drv, clean) | {"seconds_to_recover": drv["seconds_to_recover"]})
                print(json.dumps(out[-1], default=str), flush=True)
                ray.init(address=c.address)
            if "serve" not in only:
                return out
            s = serve_scenario(c, root / "serve")
            out.append({"scenario": s["scenario"], "seconds_to_recover": s["seconds_to_recover"],
                        "seconds_to_restore_replicas": s["seconds_to_restore"], "rows_lost": "n/a",
                        "rows_duplicated": "n/a", "mlflow_runs_for_step": "n/a",
                        "requests_failed": f"{s['failed']} of {s['requests']}: {', '.join(s['failed_how']) or 'none'}"
                                           f" (in flight at the kill: {s['failed_in_flight_at_kill']}; after "
                                           f"recovery: {s['failed_after_recovery']})",
                        "max_latency_s": s["max_latency_s"], "request_timeout_s": s["request_timeout_s"],
                        "outputs_equal_unfaulted": s["same_sample_as_before"]})
            print(json.dumps(out[-1], default=str), flush=True)
        finally:
            ray.shutdown()
    return out


def _final_checkpoint(out: Path) -> Path:
    dag = json.loads((out / "dag.json").read_text())
    return Path(next(s for s in dag["steps"] if s["name"] == "train")["outputs"]["checkpoint_url"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(RESULTS / "chaos_train_serve_cpu.json"))
    ap.add_argument("--only", nargs="*", choices=SCENARIOS, default=list(SCENARIOS), help="scenarios to run")
    args = ap.parse_args(argv)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="chaos-ts-") as d:
        result = rows(Path(d), only=args.only)
    doc = {"command": "python -m benchmarks.chaos_train_serve", "seconds": round(time.time() - t0, 1),
           "cluster": "head (0 CPUs) + 2 worker nodes x 2 CPUs on 127.0.0.1, one 2-core machine", "rows": result}
    Path(args.out).write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
