import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import pytest
import torch

from nestgen.metrics.stand_in_nets import StandInI3D, save_stand_in
from pipelines.ray_runtime import free_port
from scripts.mlflow_screenshots import mlflow_process

# Tests talk to loopback only. These must be set before Ray starts (its workers inherit
# them) and before gcsfs is imported (its hierarchical-namespace probe otherwise stalls 60 s
# per call against the emulator).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
# Without Ray's token authentication, for every Ray of the session alike: a local ray.init()
# otherwise turns it on for this process for good, and then refuses the calls of the `cluster`
# tests' nodes, which run without it (their first Ray Data actors died unstarted).
os.environ["RAY_AUTH_MODE"] = "disabled"
GCS_PORT = free_port()
os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{GCS_PORT}"

# MLflow's default store is ./mlflow.db: tests write to a temporary one instead.
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp(prefix='nestgen-test-mlflow-')}/mlflow.db"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    """`cluster` tests share a multi-node Ray cluster (chaos_cluster), started after the
    session's local Ray is stopped: they go last."""
    items.sort(key=lambda it: it.get_closest_marker("cluster") is not None)


@pytest.fixture
def fake_i3d_file(tmp_path) -> Path:
    """A stand-in I3D (6-d features) as a TorchScript file, the form the real I3D comes in
    (NESTGEN_I3D_PATH)."""
    path = tmp_path / "i3d_torchscript.pt"
    save_stand_in(StandInI3D(features=6), path)
    return path


@pytest.fixture
def small_model_cfg():
    from nestgen.config import ModelConfig
    return ModelConfig(vocab_size=11, grid=[4, 4], num_classes=3, width=64, depth=2, heads=8,
                       nest_factors=[1, 2, 4, 8])


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """One local Ray for the whole session (start-up costs seconds and ~1 GB)."""
    from pipelines.ray_runtime import init_ray
    ray = init_ray(num_cpus=4)
    yield ray
    ray.shutdown()


NODE_DEATH_S = 3


@pytest.fixture(scope="session")
def chaos_cluster(tmp_path_factory):
    """One local multi-node Ray cluster for every `cluster` test (chaoskit.cluster): a head
    with no CPUs, worker nodes w1 and w2 of 2 CPUs (a 1.5-CPU Train rank or Serve replica
    each, so a lost node's one cannot move to the other) and w3 of 1 CPU (Ray Data's 1-CPU
    tasks beside the ranks), this process its driver. Starting it stops the session's local
    Ray: two Ray clusters do not fit 2 cores. Ray Train gives up placing its workers after 8 s
    (train_faults.START_TIMEOUT_ENV), not 60; its controller polls the workers every 0.5 s, not
    2 (a registered checkpoint, a dead rank and a finished fit show that much sooner); and the
    GCS declares a silent node dead after NODE_DEATH_S s of failed health checks, not Ray's 15
    (every scenario waits for that)."""
    import ray

    from chaoskit.cluster import LocalCluster
    from chaoskit.train_faults import START_TIMEOUT_ENV
    if ray.is_initialized():
        ray.shutdown()
    env = START_TIMEOUT_ENV | {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
    with LocalCluster(tmp_path_factory.mktemp("cluster"), head_cpus=0, workers=(2, 2, 1), env=env,
                      node_death_s=NODE_DEATH_S) as c:
        c.connect()
        try:
            yield c
        finally:
            ray.shutdown()


@pytest.fixture
def cluster(chaos_cluster):
    """chaos_cluster, whole again after the test (the nodes it killed started again) and with
    nothing of the test's left holding resources, for the next one."""
    yield chaos_cluster
    chaos_cluster.heal()
    chaos_cluster.wait_idle()


@pytest.fixture(scope="session")
def gcs_emulator():
    """A real GCS emulator process on 127.0.0.1, stopped by PID. Yields the bucket name."""
    exe = Path(sys.executable).parent / "gcp-storage-emulator"
    if not exe.exists():
        pytest.skip("gcp-storage-emulator is not installed (pip install -e '.[dev]')")
    proc = subprocess.Popen([str(exe), "start", "--host", "127.0.0.1", "--port", str(GCS_PORT),
                             "--in-memory", "--default-bucket", "nestgen-test"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", GCS_PORT), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("GCS emulator did not start")
    yield "nestgen-test"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (SQLite backend, proxied artifacts) on 127.0.0.1, stopped by PID."""
    root = tmp_path_factory.mktemp("mlflow_server")
    with mlflow_process(["server", "--workers", "1", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                         "--artifacts-destination", str(root / "artifacts")], root / "server.log") as url:
        yield url


# ---- real data files and small trained tokenizers, made once per session -------------

@pytest.fixture(scope="session")
def png_claiming():
    """png_claiming(w, h) -> a PNG with a valid header claiming w x h and a few bytes of
    pixels: (100_000, 100_000) is a decompression bomb of under 150 bytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    def make(width: int, height: int) -> bytes:
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return make


@pytest.fixture(scope="session")
def digits_png(tmp_path_factory) -> Path:
    from nestgen.data.image_files import write_digit_images
    out = tmp_path_factory.mktemp("digits_png")
    write_digit_images(str(out), size=16, holdout_fraction=0.1, seed=0)
    return out


@pytest.fixture(scope="session")
def moving_digits_mp4(tmp_path_factory) -> Path:
    from nestgen.data.moving_digits import write_moving_digits
    out = tmp_path_factory.mktemp("moving_mp4")
    write_moving_digits(str(out), num_clips_per_class=3, frames=8, size=32, fps=8, seed=0,
                        holdout_fraction=0.34)
    return out


@pytest.fixture(scope="session")
def image_tokenizer(tmp_path_factory, digits_png):
    """(checkpoint path, measured reconstruction MSE on the training images)."""
    from nestgen.data.image_files import read_image_folder
    from nestgen.tokenizers import TokenizerConfig, evaluate_tokenizer, images_to_pixels, save_tokenizer, train_tokenizer
    images, _, _ = read_image_folder(str(digits_png), "train")
    cfg = TokenizerConfig(kind="image", channels=3, image_size=16, base_width=16, max_width=32,
                          downsample=4, codebook_size=32, code_dim=8, steps=120, batch_size=32,
                          lr=3e-3, log_every=60)
    px = images_to_pixels(images)
    model, _ = train_tokenizer(cfg, px, progress=False)
    path = tmp_path_factory.mktemp("tok") / "image_tokenizer.pt"
    save_tokenizer(str(path), model)
    return path, evaluate_tokenizer(model, px)["mse"]


@pytest.fixture(scope="session")
def video_tokenizer(tmp_path_factory, moving_digits_mp4):
    from nestgen.data.moving_digits import read_video_folder
    from nestgen.tokenizers import TokenizerConfig, clips_to_pixels, save_tokenizer, train_tokenizer
    clips, _, _ = read_video_folder(str(moving_digits_mp4), "train", gray=True)
    cfg = TokenizerConfig(kind="video", channels=1, image_size=32, frames=8, base_width=8, max_width=16,
                          downsample=8, temporal_downsample=4, codebook_size=32, code_dim=8,
                          steps=40, batch_size=8, lr=3e-3, log_every=20)
    model, _ = train_tokenizer(cfg, clips_to_pixels(clips), progress=False)
    path = tmp_path_factory.mktemp("tok") / "video_tokenizer.pt"
    save_tokenizer(str(path), model)
    return path


@pytest.fixture(scope="session")
def digit_shards(ray_local, tmp_path_factory, digits_png, image_tokenizer) -> Path:
    """The digits PNGs tokenized by the Ray step: Parquet shards + manifest (grid 4x4, vocab 32)."""
    from pipelines.tokenize import tokenize_to_shards
    out = tmp_path_factory.mktemp("digit_shards")
    tokenize_to_shards(str(digits_png), str(out), str(image_tokenizer[0]))
    return out
