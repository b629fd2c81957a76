"""`nestgen run --seeds 2` on a tiny raw-digits config: a train -> evaluate branch per seed,
then the across-seeds summary and its printed lines; a re-run skips every step. Checks the
machinery, not the numbers."""
import json
from pathlib import Path

import pytest
import torch

from nestgen.checkpoint import read_checkpoint
from nestgen.evaluation.seeds import t_interval
from pipelines.cli import main

pytestmark = pytest.mark.timeout(600)

TINY = ["seed=5", "model.width=32", "model.depth=1", "train.steps=4", "train.batch_size=64",
        "train.warmup_steps=1", "train.log_every=2", "scaling.checkpoint_every=4", "scaling.shuffle_buffer=64",
        "evaluate.num_samples=30", "evaluate.batch_size=30", "evaluate.schedules=[baseline,magnets]",
        "evaluate.caches=[none]", "evaluate.search.enabled=false", "evaluate.grid_samples=4", "pipeline.serve=false",
        # both trainings at once on the 4-CPU test cluster: 2 x 2 workers x 0.5 CPU leaves CPUs
        # for their Ray Data readers (with 1 CPU a worker, the workers would hold all four)
        "pipeline.parallel_steps=2", "scaling.cpus_per_worker=0.5"]


def test_two_seeds_train_as_parallel_branches_and_report_intervals_over_seeds(ray_local, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "configs/digits.yaml", "--seeds", "2", "--verbose"] + [
        x for kv in TINY + [f"pipeline.output_url={out}"] for x in ("--set", kv)]
    assert main(args) == 0
    log = capsys.readouterr().out
    dag = {s["name"]: s for s in json.loads((out / "dag.json").read_text())["steps"]}
    assert list(dag) == ["train-seed5", "evaluate-seed5", "train-seed6", "evaluate-seed6", "seeds"]
    assert dag["evaluate-seed6"]["deps"] == ["train-seed6"] and dag["train-seed6"]["deps"] == []
    assert dag["seeds"]["deps"] == ["evaluate-seed5", "evaluate-seed6"]
    # parallel_steps=2: the two seeds' train steps (both ready at the start) ran at the same time
    spans = {s: (m["finished_at"] - m["seconds"], m["finished_at"]) for s, m in
             ((s, json.loads((Path(dag[f"train-seed{s}"]["folder"]) / "_COMPLETE.json").read_text())) for s in (5, 6))}
    assert spans[5][0] < spans[6][1] and spans[6][0] < spans[5][1]

    models = {s: read_checkpoint(dag[f"train-seed{s}"]["outputs"]["checkpoint_url"]) for s in (5, 6)}
    assert models[5]["config"]["seed"] == 5 and models[6]["config"]["seed"] == 6
    assert not torch.equal(models[5]["model"]["tok_emb.weight"], models[6]["model"]["tok_emb.weight"])

    agg = json.loads(Path(dag["seeds"]["outputs"]["summary_url"]).read_text())
    per_seed = {s: json.loads(Path(dag[f"evaluate-seed{s}"]["outputs"]["summary_url"]).read_text()) for s in (5, 6)}
    assert agg["seeds"] == [5, 6] and agg["metric"] == "fd_digits"
    magnets = agg["variants"][1]
    for key in ("fd_digits", "gflops_saving", "quality_change_vs_baseline"):
        values = [per_seed[s]["variants"][1][key] for s in (5, 6)]
        assert list(magnets[key]["per_seed"].values()) == values
        iv = t_interval(values)
        assert (magnets[key]["mean"], magnets[key]["lo"], magnets[key]["hi"]) == (iv.mean, iv.lo, iv.hi)
    assert len(agg["claims"]) == 1 and agg["claims"][0].startswith("magnets cache=none: GFLOPs saving ")
    assert Path(dag["seeds"]["outputs"]["plot_url"]).read_bytes()[:4] == b"\x89PNG"
    table = Path(dag["seeds"]["outputs"]["table_url"]).read_text().splitlines()
    # header and rule, the two variants, the real-data row (the floor), a blank line and the note
    assert table[0].startswith("| variant | GFLOPs/sample | saving | fd_digits |") and len(table) == 2 + 2 + 1 + 2
    assert table[4].startswith("| real data (") and "(the floor)" in table[4]
    assert f"[seeds] {agg['claims'][0]}" in log and "over training seeds [5, 6]" in log

    assert main(args) == 0                          # resubmitted: every step is up to date
    dag = json.loads((out / "dag.json").read_text())["steps"]
    assert [s["status"] for s in dag] == ["skipped"] * 5
