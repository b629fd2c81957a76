"""A writer that lost its output folder's lease commits nothing more (no step marker, no
dag.json, no LATEST, no manifest), and says so in one line naming the writer that took over;
a lease record nobody can read blocks the folder only until its TTL has passed."""
import json
import os
import shutil
import time

import pytest
from fsspec import register_implementation
from fsspec.implementations.local import LocalFileSystem

from pipelines.lease import LEASE_DIR, Lease, LeaseHeld, LeaseLost


class RefusingLocalFileSystem(LocalFileSystem):
    """Local files through a store that refuses to overwrite objects while `refusing` is set
    (a revoked write permission, a bucket gone read-only): renewals (pipe_file) fail, reads
    and create-if-absent still work."""
    protocol = "refusinglocal"
    refusing = False

    def pipe_file(self, path, value, **kwargs):
        if RefusingLocalFileSystem.refusing:
            raise PermissionError(13, "the store refuses writes", path)
        return super().pipe_file(path, value, **kwargs)


register_implementation("refusinglocal", RefusingLocalFileSystem, clobber=True)


@pytest.fixture
def refusing_store():
    yield RefusingLocalFileSystem
    RefusingLocalFileSystem.refusing = False


def take_over(folder: str, purpose: str = "writer B") -> Lease:
    """Writer B: takes the folder as soon as the holder's lease has expired (ttl long enough
    not to need renewing during a test)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return Lease(folder, purpose, ttl_s=120).acquire()
        except LeaseHeld:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def assert_clear(e: LeaseLost, why: str) -> None:
    msg = str(e)
    assert "\n" not in msg and msg.startswith("lost the lease on ") and why in msg
    assert "now in use by 'writer B'" in msg and "run again" in msg


def test_a_writer_whose_renewals_fail_loses_the_lease_and_commits_nothing_after(tmp_path, refusing_store):
    from pipelines.config import run_config_from_dict
    from pipelines.dag import DAG_FILE, MARKER, Runner, Step
    from pipelines.pipeline import name_latest
    plain = str(tmp_path / "out")
    url = f"refusinglocal://{plain}"                         # writer A's view of the same folder
    cfg = run_config_from_dict({"name": "a", "pipeline": {"output_url": url}})
    held = {}

    def lose_the_lease(ctx):
        refusing_store.refusing = True                      # A's renewals fail from here on ...
        held["b"] = take_over(plain)                        # ... until its lease expired and B took the folder
        return {"summary_url": f"{ctx.folder}/summary.json"}

    runner = Runner([Step("train", lambda ctx: {"checkpoint_url": f"{ctx.folder}/c.pt"}, config=lambda: "a"),
                     Step("evaluate", lose_the_lease, deps=["train"], config=lambda: "a")], url, backoff_s=0)
    with Lease(url, "writer A", ttl_s=0.5):
        with pytest.raises(LeaseLost) as e:
            runner.run()
        assert_clear(e.value, "after its renewals failed (PermissionError")
        assert runner.records["train"].status == "done"      # committed while A held the folder
        assert runner.records["evaluate"].status == "failed" and runner.records["evaluate"].attempts == 1
        with pytest.raises(LeaseLost) as e:
            name_latest(cfg, runner)
        assert_clear(e.value, "after its renewals failed")
    held["b"].release()
    out = tmp_path / "out"
    assert (out / runner.records["train"].folder.rsplit("/", 1)[1] / MARKER).exists()
    evaluate = out / runner.records["evaluate"].folder.rsplit("/", 1)[1]
    assert not (evaluate / MARKER).exists() and not (out / DAG_FILE).exists()
    assert not (out / "a" / "LATEST").exists()              # pipeline_folder(cfg): what LATEST would be under


def test_a_stalled_writer_starts_no_step_once_its_lease_is_taken_over(tmp_path):
    from pipelines.dag import Runner, Step
    out = str(tmp_path / "out")
    ran = []
    Lease(out, "writer A", ttl_s=0.5).acquire()              # its renewals stalled: never renewed
    b = take_over(out)
    with pytest.raises(LeaseLost) as e:
        Runner([Step("train", lambda ctx: ran.append(1) or {})], out, backoff_s=0).run()
    assert_clear(e.value, "without being renewed")
    assert ran == [] and sorted(p.name for p in (tmp_path / "out").iterdir()) == [LEASE_DIR]
    b.release()


@pytest.mark.parametrize("record", [b"", b'{"owner": "3f2a', b"[]"], ids=["empty", "truncated", "not-a-record"])
def test_an_unreadable_record_blocks_the_folder_until_its_ttl_passed(tmp_path, record):
    out = tmp_path / "out"
    (out / LEASE_DIR).mkdir(parents=True)
    left = out / LEASE_DIR / "0000000000.json"             # a writer that crashed while creating it
    left.write_bytes(record)
    with pytest.raises(LeaseHeld, match="lease record 0 is unreadable .* counts as held until 20"):
        Lease(str(out), "next", ttl_s=60).acquire()
    past = time.time() - 61
    os.utime(left, (past, past))                             # modified longer than a TTL ago
    lease = Lease(str(out), "next", ttl_s=60).acquire()
    assert json.loads((out / LEASE_DIR / "0000000001.json").read_bytes())["owner"] == lease.owner
    with pytest.raises(LeaseHeld, match="in use by 'next'"):
        Lease(str(out), "third").acquire()
    lease.release()


def test_a_tokenize_run_that_lost_its_lease_writes_no_manifest(ray_local, digits_png, image_tokenizer, tmp_path):
    """The shards are written by Ray Data workers into a fresh folder nothing names yet; the
    driver's manifest write is the commit, and a lost lease stops it."""
    from nestgen.data.shards import MANIFEST
    from pipelines.config import TokenizeConfig
    from pipelines.tokenize import tokenize_to_shards
    raw = tmp_path / "raw"                                   # a few of the digits: the work itself is not the point
    for png in sorted(digits_png.glob("*/*/*.png"))[::40]:
        (raw / png.parent.relative_to(digits_png)).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, raw / png.relative_to(digits_png))
    out = str(tmp_path / "out")
    Lease(out, "writer A", ttl_s=0.5).acquire()              # the pipeline's lease, stalled
    b = take_over(out)
    with pytest.raises(LeaseLost) as e:
        tokenize_to_shards(str(raw), f"{out}/tokenize", str(image_tokenizer[0]), TokenizeConfig(batch_size=16))
    assert_clear(e.value, "without being renewed")
    assert not (tmp_path / "out" / "tokenize" / MANIFEST).exists()
    b.release()


def test_an_empty_record_on_gcs_blocks_until_its_modification_time_plus_ttl(gcs_emulator):
    """On GCS the record's age comes from the object's `updated` time (a real emulator)."""
    from nestgen.storage import url_to_fs
    folder = f"gs://{gcs_emulator}/lease-empty-{os.getpid()}-{time.time_ns()}"
    fs, path = url_to_fs(f"{folder}/{LEASE_DIR}/0000000000.json")
    fs.pipe_file(path, b"")                                  # a writer that crashed while creating it
    with pytest.raises(LeaseHeld, match="lease record 0 is unreadable"):
        Lease(folder, "next", ttl_s=3).acquire()
    deadline = time.monotonic() + 60
    while True:                                              # taken over once 3 s passed since it was written
        try:
            lease = Lease(folder, "next", ttl_s=3).acquire()
            break
        except LeaseHeld:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert lease.seq == 1
    lease.release()


def test_a_released_lease_is_taken_without_a_takeover_warning_an_expired_one_with(tmp_path, caplog):
    """The next run after one that finished says nothing about taking over; after a writer
    that died (its lease expired, never released) it says whose lease it took."""
    folder = str(tmp_path)
    with caplog.at_level("WARNING", logger="pipelines.lease"):
        with Lease(folder, "run 1", ttl_s=60):
            pass
        Lease(folder, "run 2", ttl_s=0.2).acquire()      # dies: never released
        assert "taking over" not in caplog.text
        time.sleep(0.3)
        Lease(folder, "run 3", ttl_s=60).acquire()
    assert "taking over the expired lease" in caplog.text and "run 2" in caplog.text
