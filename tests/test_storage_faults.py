"""Transient storage faults on the write side: a write broken mid-file is retried, whole; a
reader never sees part of an object under its final name, and a failed attempt leaves no
temporary object behind. The faults come from a real fsspec filesystem registered under
the test protocol flaky://, which delegates everything to the local disk and breaks the
chosen writes after half of their bytes."""
import errno
import logging
import os

import fsspec
import pytest
import torch
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

from nestgen import storage
from nestgen.checkpoint import read_checkpoint, save_checkpoint
from nestgen.config import NestgenConfig
from nestgen.model.nested_transformer import NestedTransformer
from nestgen.checkpoint_files import checkpoint_file, publish_checkpoint, write_latest
from nestgen.storage import WRITE_ATTEMPTS, read_json, write_json_atomic


class Faults:
    """Which writes break (1-based, counted over every open-for-write, pipe_file and put_file
    of the flaky filesystem), with what, and what a reader saw at that moment."""

    def __init__(self):
        self.fail: set[int] = set()
        self.always = False
        self.error: OSError = ConnectionResetError(errno.ECONNRESET, "injected: connection reset mid-upload")
        self.probe = None            # called when a write breaks: what a reader sees then
        self.seen: list = []
        self.writes = self.injected = 0

    def hit(self) -> bool:
        self.writes += 1
        broken = self.always or self.writes in self.fail
        self.injected += broken
        return broken

    def fail_now(self):
        if self.probe is not None:
            self.seen.append(self.probe())
        raise self.error


FAULTS = Faults()


class _BreaksMidFile:
    """A file open for writing that takes half of the first write's bytes, then fails."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[:len(data) // 2])
        self.f.flush()
        FAULTS.fail_now()

    def close(self):
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FlakyFileSystem(DirFileSystem):
    """The local filesystem under flaky://, breaking the writes FAULTS names mid-file."""
    protocol = "flaky"

    def __init__(self, **kwargs):
        super().__init__(path="/", fs=LocalFileSystem(), **kwargs)
        self.path = ""               # no prefix: flaky:///a/b is /a/b

    def open(self, path, mode="rb", **kwargs):
        f = super().open(path, mode, **kwargs)
        return _BreaksMidFile(f) if "r" not in mode and FAULTS.hit() else f

    def pipe_file(self, path, value, **kwargs):
        if FAULTS.hit():
            super().pipe_file(path, value[:len(value) // 2], **kwargs)
            FAULTS.fail_now()
        return super().pipe_file(path, value, **kwargs)

    def put_file(self, lpath, rpath, **kwargs):
        if FAULTS.hit():
            with open(lpath, "rb") as f:
                super().pipe_file(rpath, f.read()[:os.path.getsize(lpath) // 2])
            FAULTS.fail_now()
        return super().put_file(lpath, rpath, **kwargs)


fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)


@pytest.fixture
def faults(caplog):
    global FAULTS
    FAULTS = Faults()
    caplog.set_level(logging.WARNING, logger="nestgen.storage")
    return FAULTS


def _retries(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]


def test_a_checkpoint_broken_mid_file_is_written_again_whole(tmp_path, faults, small_model_cfg, caplog):
    faults.fail = {1}
    model = NestedTransformer(small_model_cfg)
    url = save_checkpoint(f"flaky://{tmp_path}/run/checkpoint.pt", NestgenConfig(model=small_model_cfg), model,
                          step=7)
    assert faults.injected == 1 and faults.writes == 2
    ckpt = read_checkpoint(url)
    assert ckpt["step"] == 7
    assert all(torch.equal(ckpt["model"][k], v) for k, v in model.state_dict().items())
    assert os.listdir(tmp_path / "run") == ["checkpoint.pt"]          # the broken attempt's bytes are gone
    (line,) = _retries(caplog)
    assert "checkpoint.pt" in line and "attempt 1 of" in line and "ConnectionResetError" in line


def test_publishing_and_latest_each_survive_a_broken_write(tmp_path, faults, small_model_cfg, caplog):
    trained = save_checkpoint(str(tmp_path / "train" / "checkpoint.pt"), NestgenConfig(model=small_model_cfg),
                              NestedTransformer(small_model_cfg), step=7)
    out = f"flaky://{tmp_path}/out"
    faults.fail = {1, 3}             # the published copy's first write, then LATEST's first write
    # what stands under a final name (not a temporary one) at the moment a write breaks
    faults.probe = lambda: sorted(p.name for p in (tmp_path / "out").rglob("*")
                                  if p.is_file() and ".tmp-" not in p.name)
    url = publish_checkpoint(out, trained, 7)
    write_latest(out, url)
    assert faults.injected == 2 and len(_retries(caplog)) == 2
    name = url.rsplit("/", 1)[1]
    assert faults.seen == [[], [name]]               # no half copy, no LATEST before the copy is whole
    assert checkpoint_file(out) == url
    assert read_checkpoint(out)["step"] == 7                          # whole: it loads and its hash checks
    assert sorted(os.listdir(tmp_path / "out")) == ["LATEST", "published"]
    assert os.listdir(tmp_path / "out" / "published") == [name]


def test_a_manifest_broken_mid_write_leaves_readers_the_old_one_whole(tmp_path, faults, caplog):
    manifest = f"flaky://{tmp_path}/tokens/manifest.json"
    old = {"shards_dir": "shards-1", "splits": {"train": {"files": [f"shards-1/train/{i}.parquet" for i in range(50)]}}}
    new = {"shards_dir": "shards-2", "splits": {"train": {"files": [f"shards-2/train/{i}.parquet" for i in range(80)]}}}
    write_json_atomic(manifest, old)
    faults.fail = {2}
    faults.probe = lambda: read_json(manifest)                        # a reader at the moment it broke
    write_json_atomic(manifest, new)
    assert faults.seen == [old]
    assert read_json(manifest) == new
    assert os.listdir(tmp_path / "tokens") == ["manifest.json"]
    assert len(_retries(caplog)) == 1


def test_a_persistent_fault_fails_in_one_line_after_bounded_attempts_and_leaves_nothing(tmp_path, faults, caplog):
    marker = f"flaky://{tmp_path}/step/_done.json"
    write_json_atomic(marker, {"status": "old"})
    faults.always = True
    with pytest.raises(OSError) as e:
        write_json_atomic(marker, {"status": "new", "pad": "x" * 4000})
    msg = str(e.value)
    assert "\n" not in msg and marker in msg and f"failed {WRITE_ATTEMPTS} times" in msg
    assert faults.injected == WRITE_ATTEMPTS and len(_retries(caplog)) == WRITE_ATTEMPTS - 1
    assert read_json(marker) == {"status": "old"}
    assert os.listdir(tmp_path / "step") == ["_done.json"]


@pytest.mark.parametrize("error", [PermissionError(errno.EACCES, "injected: permission denied"),
                                   FileExistsError(errno.EEXIST, "injected: exists")])
def test_an_error_about_the_request_is_not_retried_and_leaves_nothing(tmp_path, faults, caplog, error):
    faults.always, faults.error = True, error
    with pytest.raises(type(error)):
        storage.write_bytes_atomic(f"flaky://{tmp_path}/x/LATEST", b"published/step00000001-0123456789ab.pt")
    assert faults.injected == 1 and not _retries(caplog)
    assert os.listdir(tmp_path / "x") == []
