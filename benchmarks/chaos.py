"""Faults on a multi-node Ray cluster on this machine (chaoskit.cluster: a head and two worker
nodes on 127.0.0.1): for each scenario, the time to recover, rows lost and duplicated, MLflow
runs for the step, requests failed and how, and whether the outputs equal the unfaulted run's.

  python -m benchmarks.chaos --json benchmarks/results/chaos_cpu.json [--only tokenize,evaluate]

Each scenario runs its step once without and once with the fault, on the same cluster, and
compares (chaoskit.scenarios). Inputs: the embedded digits as PNG files (1797), a small VQ
tokenizer trained here, an untrained generator (the evaluation's decoding is seeded, so its
outputs are comparable whatever the weights).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from chaoskit import scenarios
from chaoskit.cluster import LocalCluster

COLUMNS = ("scenario", "fault", "recovery_s", "rows_lost", "rows_duplicated", "mlflow_runs", "requests_failed",
           "outputs_equal", "note")


def _tokenize_cfg():
    from pipelines.config import TokenizeConfig
    return TokenizeConfig(batch_size=32, concurrency=2, cpus_per_actor=1, rows_per_shard=256)


def _inputs(work: Path, shared: dict) -> dict:
    """Digit PNGs (read through chaosfs://), a trained tokenizer and the unfaulted shards, made once."""
    if "input_url" in shared:
        return shared
    from nestgen.data.image_files import read_image_folder, write_digit_images
    from nestgen.tokenizers import TokenizerConfig, images_to_pixels, save_tokenizer, train_tokenizer
    from pipelines.tokenize import tokenize_to_shards
    write_digit_images(str(work / "digits"), size=16, holdout_fraction=0.1, seed=0)
    images, _, _ = read_image_folder(str(work / "digits"), "train")
    cfg = TokenizerConfig(kind="image", channels=3, image_size=16, base_width=16, max_width=32, downsample=4,
                          codebook_size=32, code_dim=8, steps=120, batch_size=32, lr=3e-3, log_every=60)
    model, _ = train_tokenizer(cfg, images_to_pixels(images), progress=False)
    save_tokenizer(str(work / "tokenizer.pt"), model)
    shared.update(input_url=f"chaosfs://{work / 'digits'}", tokenizer=str(work / "tokenizer.pt"))
    t0 = time.monotonic()
    tokenize_to_shards(shared["input_url"], str(work / "ref_shards"), shared["tokenizer"], _tokenize_cfg())
    shared.update(ref_shards=work / "ref_shards", ref_tokenize_s=time.monotonic() - t0,
                  ref=scenarios.shard_rows(work / "ref_shards"))
    return shared


def _shard_row(name: str, fault: str, got: dict, ref: dict, recovery, note: str) -> dict:
    c = scenarios.compare_shards(got, ref)
    equal = not any(c[k] for k in ("rows_lost", "rows_duplicated", "rows_extra", "rows_changed", "partial_files")) \
        and c["manifest_equal"]
    return {"scenario": name, "fault": fault, "recovery_s": recovery, "rows_lost": c["rows_lost"],
            "rows_duplicated": c["rows_duplicated"], "mlflow_runs": None, "requests_failed": None,
            "outputs_equal": equal, "note": note, "detail": c}


def tokenize(cluster: LocalCluster, work: Path, shared: dict) -> dict:
    s = _inputs(work, shared)
    got = scenarios.tokenize_node_killed(cluster, s["input_url"], work / "tok_shards", s["tokenizer"],
                                         _tokenize_cfg(), f"{work / 'digits'}/train/5/*.png")
    cluster.add_worker(got["victim"])
    return _shard_row("tokenize", f"node {got['victim']} SIGKILLed while its tokenizer actor held a batch",
                      scenarios.shard_rows(work / "tok_shards"), s["ref"], round(got["recovery_s"], 1),
                      f"step {got['step_s']:.1f} s (unfaulted {s['ref_tokenize_s']:.1f} s); recovery = kill to "
                      "manifest written")


def storage(cluster: LocalCluster, work: Path, shared: dict) -> dict:
    s = _inputs(work, shared)
    got = scenarios.tokenize_write_broken(cluster, s["input_url"], work / "flaky_shards", s["tokenizer"],
                                          _tokenize_cfg())
    return _shard_row("storage (shard)", f"{len(got['broken_writes'])} Parquet write(s) reset mid-file in a Ray "
                      "write task", scenarios.shard_rows(work / "flaky_shards"), s["ref"], None,
                      f"step {got['step_s']:.1f} s (unfaulted {s['ref_tokenize_s']:.1f} s): the write task is "
                      "retried; mid-checkpoint: tests/test_storage_faults.py")


def evaluate(cluster: LocalCluster, work: Path, shared: dict) -> dict:
    import torch
    from mlflow.tracking import MlflowClient

    from nestgen.checkpoint import save_checkpoint
    from nestgen.model.nested_transformer import NestedTransformer
    from pipelines.config import run_config_from_dict
    from pipelines.evaluate import evaluate as run_evaluate
    s = _inputs(work, shared)
    m = s["ref"]["manifest"]
    trained = run_config_from_dict({"model": {"vocab_size": m["vocab_size"], "grid": m["grid_shape"],
                                              "num_classes": 10, "width": 64, "depth": 2, "heads": 8},
                                    "data": {"source": "shards", "url": str(s["ref_shards"])}})
    torch.manual_seed(0)
    ckpt = save_checkpoint(str(work / "gen.pt"), trained, NestedTransformer(trained.model),
                           tokenizer_hash=m["tokenizer"]["hash"])
    tracking = f"sqlite:///{work}/mlflow.db"
    cfg = run_config_from_dict({"name": "chaos-eval", "mlflow": {"tracking_uri": tracking, "experiment": "chaos"},
                                "evaluate": {"num_samples": 200, "batch_size": 4, "num_workers": 2,
                                             "cpus_per_worker": 1, "schedules": ["baseline", "magnets"],
                                             "caches": ["none"], "search": {"enabled": False}}})
    t0 = time.monotonic()
    run_evaluate(cfg, str(work / "eval_clean"), ckpt, log_mlflow=False)
    clean_s = time.monotonic() - t0
    got = scenarios.evaluate_node_killed(cluster, cfg, work / "eval_faulted", ckpt)
    cluster.add_worker(got["victim"])
    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name("chaos")
    runs = client.search_runs([exp.experiment_id], "tags.`nestgen.step` = 'evaluate'")
    equal = scenarios.summary_results(work / "eval_faulted") == scenarios.summary_results(work / "eval_clean")
    return {"scenario": "evaluate", "fault": f"node {got['victim']} SIGKILLed with an evaluation batch running",
            "recovery_s": round(got["recovery_s"], 1), "rows_lost": 0 if equal else None, "rows_duplicated": 0
            if equal else None, "mlflow_runs": len(runs), "requests_failed": None, "outputs_equal": equal,
            "note": f"step {got['step_s']:.1f} s (unfaulted {clean_s:.1f} s); the lost batch is redone by the "
                    "surviving worker; summary.json equal but for measured decode times"}


SCENARIOS = {"tokenize": tokenize, "evaluate": evaluate, "storage": storage}
# (more scenarios: the train / driver / serve rows register here)
ORDER = ["tokenize", "train", "evaluate", "serve", "driver", "storage (shard)"]


def table(rows: list[dict]) -> str:
    def cell(v):
        return "-" if v is None else ("yes" if v is True else "no" if v is False else str(v))
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> dict:
    from benchmarks.common import write_json
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    import ray
    work = Path(tempfile.mkdtemp(prefix="nestgen-chaos-"))
    rows, shared = [], {}
    try:
        with LocalCluster(work / "cluster", head_cpus=0, workers=(2, 2)) as cluster:
            cluster.connect()
            for name in args.only.split(","):
                t0 = time.monotonic()
                row = SCENARIOS[name](cluster, work, shared)
                row["scenario_s"] = round(time.monotonic() - t0, 1)
                rows.append(row)
                print(table([row]).splitlines()[-1], flush=True)
            ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json and Path(args.json).exists():      # --only: the other scenarios' rows stay as measured
        ran = {r["scenario"] for r in rows}
        rows = [r for r in json.loads(Path(args.json).read_text())["rows"] if r["scenario"] not in ran] + rows
        rows.sort(key=lambda r: ORDER.index(r["scenario"]) if r["scenario"] in ORDER else len(ORDER))
    result = {"cluster": "head (0 CPUs) + 2 worker nodes x 2 CPUs on 127.0.0.1, one 2-core machine",
              "command": "python -m benchmarks.chaos --json benchmarks/results/chaos_cpu.json", "rows": rows}
    print(table(rows))
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
