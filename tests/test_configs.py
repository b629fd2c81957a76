"""Every shipped config in configs/ loads strictly, and what the schema cannot check alone:
the transformer matches its tokenizer, frame-prediction conditioning is whole latent
frames, and the paper-scale configs fit the GPU cluster of ray_cluster.yaml / infra/."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.config import load_run_config as load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def is_serve_file(path: Path) -> bool:
    """Ray Serve config files (what `serve deploy` takes) are named serve_*.yaml; every other
    YAML in configs/ is a nestgen config."""
    return path.name.startswith("serve_")


NESTGEN_CONFIGS = [p for p in CONFIGS if not is_serve_file(p)]
PAPER = ["imagenet256.yaml", "ucf101.yaml", "kinetics600.yaml"]
EMBEDDED_VIDEO = ["moving_digits.yaml", "moving_digits_predict.yaml"]


def test_the_shipped_configs_are_there():
    names = {p.name for p in NESTGEN_CONFIGS}
    assert {"digits.yaml", "digits_vq.yaml", *PAPER, *EMBEDDED_VIDEO} <= names, names


def test_serve_files_are_serve_configs():
    """The naming rule hides no nestgen config: serve_* files are Serve applications."""
    for path in CONFIGS:
        data = yaml.safe_load(path.read_text()) or {}
        assert is_serve_file(path) == ("applications" in data), path.name


@pytest.mark.parametrize("path", NESTGEN_CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_matches_its_tokenizer(path):
    cfg = load_config(path)
    assert cfg.name
    if cfg.data.source == "shards":
        # The transformer's vocabulary and grid are the tokenizer's codebook and token grid.
        assert cfg.model.vocab_size == cfg.tokenizer.codebook_size, path.name
        assert cfg.model.grid == cfg.tokenizer.grid, (path.name, cfg.model.grid, cfg.tokenizer.grid)
    if cfg.train.cond_tokens:
        # Frame prediction conditions on whole leading latent frames of a [t, h, w] grid.
        assert cfg.model.is_video, path.name
        per_frame = cfg.model.grid[1] * cfg.model.grid[2]
        assert cfg.train.cond_tokens % per_frame == 0, path.name
        assert cfg.train.cond_tokens // per_frame < cfg.model.grid[0], path.name


@pytest.mark.parametrize("name", PAPER)
def test_paper_configs_also_train_sharded_with_their_ema(name):
    cfg = load_config(ROOT / "configs" / name, ["scaling.strategy=fsdp"])
    assert cfg.scaling.strategy == "fsdp" and cfg.train.ema_decay > 0


def test_embedded_video_configs():
    gen, pred = (load_config(ROOT / "configs" / n) for n in EMBEDDED_VIDEO)
    for cfg in (gen, pred):
        assert cfg.tokenizer.kind == "video" and cfg.tokenizer.channels == 1   # gray clips
        assert cfg.scaling.use_gpu != "yes" and not cfg.data.url.startswith("gs://")
    assert gen.train.cond_tokens == 0
    assert pred.train.cond_tokens == pred.model.grid[1] * pred.model.grid[2]   # latent frame 0
    # Same tokenizer and shards: the prediction run can reuse the generation run's.
    assert pred.tokenizer == gen.tokenizer and pred.data.url == gen.data.url


def _gpu_capacity(cpus_per_worker: float) -> int:
    """Training workers (1 GPU + cpus_per_worker CPUs each) that ray_cluster.yaml's GPU node
    types can hold at their max_workers, and that infra/rayjob.yaml's GPU groups can hold."""
    cluster = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    vm = sum(t["max_workers"] * min(t["resources"]["GPU"], int(t["resources"]["CPU"] // cpus_per_worker))
             for t in cluster["available_node_types"].values() if t["resources"].get("GPU"))
    job = yaml.safe_load((ROOT / "infra" / "rayjob.yaml").read_text())
    k8s = 0
    for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        lim = g["template"]["spec"]["containers"][0]["resources"]["limits"]
        if lim.get("nvidia.com/gpu"):
            k8s += g["maxReplicas"] * min(lim["nvidia.com/gpu"], int(float(lim["cpu"]) // cpus_per_worker))
    return min(vm, k8s)


@pytest.mark.parametrize("name", PAPER)
def test_paper_scale_configs(name):
    cfg = load_config(ROOT / "configs" / name)
    assert cfg.data.source == "shards" and cfg.data.url.startswith("gs://NESTGEN_BUCKET/"), cfg.data.url
    assert cfg.scaling.use_gpu == "yes" and cfg.train.precision == "bf16"
    assert cfg.model.nest_factors == [1, 2, 4, 8] and cfg.model.width >= 768 and cfg.model.depth >= 24
    assert cfg.tokenizer.codebook_size == 1024
    # K600 takes 1 + 16 frames through a causal tokenizer (5 given frames = 2 latent frames)
    assert cfg.model.grid == ([16, 16] if cfg.tokenizer.kind == "image" else
                              [5 if cfg.tokenizer.causal else 4, 16, 16])
    # The cluster's MLFLOW_TRACKING_URI applies (a URI in the config would override it).
    assert cfg.mlflow.tracking_uri == ""
    # Global batches split evenly over the workers (each takes batch // num_workers).
    n = cfg.scaling.num_workers
    assert n > 1 and cfg.train.batch_size % n == 0 and cfg.tokenizer.batch_size % n == 0
    assert n <= _gpu_capacity(cfg.scaling.cpus_per_worker), f"{n} GPU workers do not fit the cluster"
    assert cfg.evaluate.reference_stats.startswith("gs://NESTGEN_BUCKET/")


def test_kinetics600_is_frame_prediction():
    cfg = load_config(ROOT / "configs" / "kinetics600.yaml")
    _, h, w = cfg.model.grid
    assert cfg.train.cond_tokens == 2 * h * w             # latent frames 0-1: the first 5 frames
    assert cfg.model.num_classes == 1 and cfg.decode.guidance_scale == 0.0
    assert load_config(ROOT / "configs" / "ucf101.yaml").train.cond_tokens == 0
