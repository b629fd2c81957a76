"""Faults on a real multi-node Ray cluster (chaoskit.cluster: a head and two worker nodes on
127.0.0.1): a worker node is SIGKILLed, raylet and workers, at a chosen point of the
tokenize and evaluate steps, and a transient storage error breaks a shard file mid-write;
each outcome is checked against the same step run without the fault (chaoskit.scenarios,
which benchmarks/chaos.py runs on more data).

The kill points are observable states, not sleeps: a tokenizer actor holding a chosen input
file (chaoskit.faults.hold: its read waits at a gate until released), an evaluation batch
that Ray reports running on a worker node. On the session's cluster (conftest's
chaos_cluster; `cluster` starts the killed node again after each test)."""
import os
import shutil
from pathlib import Path

import pytest

from chaoskit import scenarios

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def small_input(tmp_path_factory, digits_png) -> str:
    """4 training and 3 held-out PNGs per digit and one truncated PNG (a failure row), read
    through chaosfs:// (where a read can be held at a gate)."""
    out = tmp_path_factory.mktemp("chaos_in")
    for split, n in (("train", 4), ("val", 3)):
        for d in sorted((digits_png / split).iterdir()):
            (out / split / d.name).mkdir(parents=True)
            for f in sorted(d.glob("*.png"))[:n]:
                shutil.copy(f, out / split / d.name / f.name)
    first = sorted((out / "train" / "3").glob("*.png"))[0]
    (out / "train" / "3" / "broken.png").write_bytes(first.read_bytes()[:40])
    return f"chaosfs://{out}"


def _cfg():
    from pipelines.config import TokenizeConfig
    return TokenizeConfig(batch_size=4, concurrency=2, cpus_per_actor=1, rows_per_shard=8)


@pytest.fixture(scope="module")
def reference(chaos_cluster, small_input, image_tokenizer, tmp_path_factory):
    """The unfaulted tokenize run, on the same cluster."""
    from pipelines.tokenize import tokenize_to_shards
    out = tmp_path_factory.mktemp("ref_shards")
    tokenize_to_shards(small_input, str(out), str(image_tokenizer[0]), _cfg())
    ref = scenarios.shard_rows(out)
    assert len(ref["rows"]) == 70 and ref["duplicates"] == 0
    assert [f["source_uri"].rsplit("/", 1)[1] for f in ref["manifest"]["failed"]] == ["broken.png"]
    return out, ref


def _whole(got: dict, ref: dict) -> None:
    c = scenarios.compare_shards(got, ref)
    assert c == {"rows_lost": 0, "rows_duplicated": 0, "rows_extra": 0, "rows_changed": 0, "partial_files": 0,
                 "manifest_equal": True}, c


def test_tokenize_survives_a_node_killed_mid_step(cluster, reference, small_input, image_tokenizer, tmp_path):
    _, ref = reference
    held = f"{small_input.removeprefix('chaosfs://')}/train/5/*.png"          # a batch in an actor's hands
    got = scenarios.tokenize_node_killed(cluster, small_input, tmp_path / "shards", str(image_tokenizer[0]), _cfg(),
                                         held)
    assert got["victim"] in scenarios.WORKER_NODES and cluster.killed_at[got["victim"]]
    print(f"tokenize: node {got['victim']} killed; recovered in {got['recovery_s']:.1f} s, step {got['step_s']:.1f} s")
    _whole(scenarios.shard_rows(tmp_path / "shards"), ref)


def test_a_shard_write_broken_mid_file_is_retried_whole(cluster, reference, small_input, image_tokenizer, tmp_path):
    _, ref = reference
    got = scenarios.tokenize_write_broken(cluster, small_input, tmp_path / "shards", str(image_tokenizer[0]), _cfg())
    [hit] = got["broken_writes"]
    print(f"storage: {hit['path'].rsplit('/', 1)[1]} broken mid-file; step {got['step_s']:.1f} s")
    assert hit["pid"] != os.getpid()                                 # it broke in a Ray write task, not here
    _whole(scenarios.shard_rows(tmp_path / "shards"), ref)


@pytest.fixture(scope="module")
def cheap_digits_metric():
    """The digits metric's classifier with one cheap epoch (the same in both runs: one process)."""
    from nestgen.evaluation import quality
    from nestgen.metrics import digits_train
    mp = pytest.MonkeyPatch()
    real_train = digits_train.train_digit_classifier
    mp.setattr(digits_train, "train_digit_classifier",
               lambda epochs, **kw: real_train(epochs=1, size=8, augment=False, **kw))
    mp.setattr(quality, "_DIGITS_NETS", {})
    yield
    mp.undo()


def test_evaluation_survives_a_node_killed_mid_evaluation(cluster, reference, cheap_digits_metric, tmp_path):
    import torch

    from nestgen.checkpoint import save_checkpoint
    from nestgen.model.nested_transformer import NestedTransformer
    from pipelines.config import run_config_from_dict
    from pipelines.evaluate import evaluate
    shards, ref = reference
    m = ref["manifest"]
    trained = run_config_from_dict({"model": {"vocab_size": m["vocab_size"], "grid": m["grid_shape"],
                                              "num_classes": 10, "width": 32, "depth": 1, "heads": 8},
                                    "data": {"source": "shards", "url": str(shards)}})
    torch.manual_seed(0)
    ckpt = save_checkpoint(str(tmp_path / "gen.pt"), trained, NestedTransformer(trained.model),
                           tokenizer_hash=m["tokenizer"]["hash"])
    cfg = run_config_from_dict({"name": "chaos-eval", "evaluate": {
        "num_samples": 160, "batch_size": 4, "num_workers": 2, "cpus_per_worker": 1,
        "schedules": ["baseline", "magnets"], "caches": ["none"], "grid_samples": 4, "interval_chunks": 8,
        "bootstrap_replicates": 20, "search": {"enabled": False}}})
    evaluate(cfg, str(tmp_path / "clean"), ckpt, log_mlflow=False)
    got = scenarios.evaluate_node_killed(cluster, cfg, tmp_path / "faulted", ckpt, log_mlflow=False)
    assert got["victim"] in scenarios.WORKER_NODES
    print(f"evaluate: node {got['victim']} killed; recovered in {got['recovery_s']:.1f} s, step {got['step_s']:.1f} s")
    assert scenarios.summary_results(tmp_path / "faulted") == scenarios.summary_results(tmp_path / "clean")
