"""Shared output folders: one writer at a time (a lease on local paths and on gs:// through
a real GCS emulator), and tokenize deleting only shard folders nobody can be reading."""
import json
import os
import socket
import time

import pytest

from nestgen.storage import write_json_atomic
from pipelines.lease import Lease, LeaseHeld


@pytest.fixture(params=["local", "gs"])
def folder(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    bucket = request.getfixturevalue("gcs_emulator")
    return f"gs://{bucket}/lease-{request.node.name}-{os.getpid()}-{time.time_ns()}"


def test_a_second_writer_is_refused_with_the_holder_named(folder):
    with Lease(folder, "nestgen run (digits-vq)"):
        with pytest.raises(LeaseHeld) as e:
            Lease(folder, "nestgen tokenize").acquire()
        msg = str(e.value)
        assert "nestgen run (digits-vq)" in msg and f"pid {os.getpid()}" in msg
        assert f"host {socket.gethostname()}" in msg and "since 20" in msg and "expires 20" in msg
    with Lease(folder, "nestgen tokenize"):                   # released at the end: the next one gets it
        pass


def test_an_expired_lease_is_taken_over_and_the_old_holder_learns_it(folder):
    dead = Lease(folder, "a run that died", ttl_s=1.0).acquire()   # never renewed, never released
    with pytest.raises(LeaseHeld, match="a run that died"):
        Lease(folder, "second").acquire()
    time.sleep(1.5)
    with Lease(folder, "second"):
        with pytest.raises(LeaseHeld, match="lost the lease.*second"):
            dead.renew()
        dead.release()                                       # does not free what it no longer holds
        with pytest.raises(LeaseHeld, match="second"):
            Lease(folder, "third").acquire()


def test_a_held_lease_is_renewed_past_its_ttl(folder):
    with Lease(folder, "long step", ttl_s=6.0) as held:
        first = held.expires
        deadline = time.time() + 60                          # a renewal is seen, however slow the machine
        while held.expires == first and time.time() < deadline:
            time.sleep(0.1)
        assert held.expires > first
        # Past the first expiry the renewed record (expiring >= 2 s after it) still holds the folder.
        time.sleep(max(0.0, first + 0.1 - time.time()))
        with pytest.raises(LeaseHeld, match="long step"):
            Lease(folder, "other").acquire()


def test_tokenize_deletes_only_unreferenced_shard_folders_older_than_its_run(tmp_path):
    from nestgen.data.shards import FORMAT, MANIFEST
    from pipelines.tokenize import remove_stale_shards
    names = {"referenced": "shards-20260101T000000-aaaaaa",    # what the manifest on storage names
             "replaced": "shards-20260102T000000-bbbbbb",      # an older run nobody references
             "mine": "shards-20260103T000000-cccccc",
             "newer": "shards-20260104T000000-dddddd"}        # another writer's run in progress
    for n in names.values():
        (tmp_path / n / "train").mkdir(parents=True)
        (tmp_path / n / "train" / "part-0.parquet").write_bytes(b"x")
    write_json_atomic(str(tmp_path / MANIFEST), {"format": FORMAT, "shards_dir": names["referenced"], "splits": {}})
    assert remove_stale_shards(str(tmp_path), names["mine"]) == [names["replaced"]]
    assert sorted(p.name for p in tmp_path.glob("shards-*")) == sorted(
        [names["referenced"], names["mine"], names["newer"]])
    assert json.loads((tmp_path / MANIFEST).read_text())["shards_dir"] == names["referenced"]


def test_nestgen_run_and_tokenize_refuse_a_held_output_folder(tmp_path):
    """Both take the lease before they touch Ray or the folder's contents."""
    from pipelines.config import load_run_config
    from pipelines.pipeline import run_pipeline
    from pipelines.tokenize import tokenize_to_shards
    out = str(tmp_path / "pipeline")
    cfg = load_run_config("configs/digits_vq.yaml", [f"pipeline.output_url={out}"])
    with Lease(out, "nestgen run (an earlier one)"):
        with pytest.raises(LeaseHeld, match=r"in use by 'nestgen run \(an earlier one\)'"):
            run_pipeline(cfg)
        with pytest.raises(LeaseHeld, match="in use by"):
            tokenize_to_shards(str(tmp_path / "raw"), out, str(tmp_path / "tok.pt"))
    assert sorted(p.name for p in (tmp_path / "pipeline").iterdir()) == ["_lease"]


def test_configs_sharing_an_output_folder_each_name_their_own_latest(tmp_path, small_model_cfg):
    from nestgen.checkpoint import read_checkpoint, save_checkpoint
    from nestgen.config import NestgenConfig
    from nestgen.model.nested_transformer import NestedTransformer
    from pipelines.config import run_config_from_dict
    from pipelines.dag import Runner, Step
    from pipelines.pipeline import name_latest
    out = str(tmp_path / "shared")

    def train_step(step):
        def run(ctx):
            url = save_checkpoint(f"{ctx.folder}/c.pt", NestgenConfig(model=small_model_cfg),
                                  NestedTransformer(small_model_cfg), step=step)
            return {"checkpoint_url": url}
        return run

    for name, step in (("first", 1), ("second", 2)):
        cfg = run_config_from_dict({"name": name, "pipeline": {"output_url": out}})
        runner = Runner([Step("train", train_step(step), config=lambda n=name: n)], out, backoff_s=0)
        runner.run()
        name_latest(cfg, runner)
    assert read_checkpoint(f"{out}/first")["step"] == 1 and read_checkpoint(f"{out}/second")["step"] == 2
    again = Runner([Step("train", train_step(9), config=lambda: "first")], out, backoff_s=0)
    again.run()                                              # skipped: complete; LATEST still named
    assert again.records["train"].status == "skipped"
    name_latest(run_config_from_dict({"name": "first", "pipeline": {"output_url": out}}), again)
    assert read_checkpoint(f"{out}/first")["step"] == 1
