"""Checkpoints from a shared store are data, never code: pickled objects are refused, and a
tokenizer replaced since its hash was recorded is refused before it decodes anything."""
import builtins
import re
import os

import pytest
import torch

from nestgen.checkpoint import load_generator, read_checkpoint, save_checkpoint
from nestgen.checkpoint_files import UnsafeCheckpointError, publish_checkpoint, write_latest
from nestgen.config import NestgenConfig, config_to_dict
from nestgen.model.nested_transformer import NestedTransformer
from nestgen.storage import write_json_atomic
from nestgen.tokenizers import TokenizerConfig, VQTokenizer, load_tokenizer, save_tokenizer


class CreatesFile:
    """Unpickling this calls open(path, "w"): the file appearing means code ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return builtins.open, (self.path, "w")


TINY_TOK = TokenizerConfig(kind="image", channels=1, image_size=8, base_width=8, max_width=8, downsample=2,
                           codebook_size=8, code_dim=4)


def _generator_payload(small_model_cfg) -> dict:
    cfg = NestgenConfig(model=small_model_cfg)
    return {"config": config_to_dict(cfg), "model": NestedTransformer(small_model_cfg).state_dict(), "step": 3}


def test_the_payload_runs_code_when_unpickled_freely(tmp_path):
    """The hostile file of the tests below is live: a plain torch.load creates the marker."""
    marker, path = tmp_path / "ran", tmp_path / "evil.pt"
    torch.save({"x": CreatesFile(str(marker))}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_generator_checkpoint_with_a_pickled_object_is_refused(tmp_path, small_model_cfg):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({**_generator_payload(small_model_cfg), "extra": CreatesFile(str(marker))}, path)
    published = publish_checkpoint(str(tmp_path / "out"), str(path), 1)
    write_latest(str(tmp_path / "out"), published)
    for url in (str(path), published, str(tmp_path / "out")):     # the file, its published copy, the LATEST
        with pytest.raises(UnsafeCheckpointError, match=r"refusing to load .*(evil|step00000001-\w+)\.pt.*run code"):
            read_checkpoint(url)
        with pytest.raises(UnsafeCheckpointError):
            load_generator(url)
    assert not marker.exists()


def test_a_plain_generator_checkpoint_still_loads(tmp_path, small_model_cfg):
    cfg = NestgenConfig(model=small_model_cfg)
    url = save_checkpoint(str(tmp_path / "ok.pt"), cfg, NestedTransformer(small_model_cfg), step=7,
                          optimizer=torch.optim.AdamW(NestedTransformer(small_model_cfg).parameters()).state_dict())
    assert read_checkpoint(url)["step"] == 7
    model, loaded_cfg, tok = load_generator(url)
    assert loaded_cfg.model == small_model_cfg and tok is None


def test_a_tokenizer_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    marker = tmp_path / "ran"
    url = save_tokenizer(str(tmp_path / "tok.pt"), VQTokenizer(TINY_TOK))
    ckpt = torch.load(url, weights_only=True)
    torch.save({**ckpt, "history": [CreatesFile(str(marker))]}, url)
    with pytest.raises(UnsafeCheckpointError, match="could run code"):
        load_tokenizer(url)
    assert not marker.exists()


def test_a_tokenizer_replaced_since_the_manifest_recorded_it_is_refused(tmp_path):
    from nestgen.data.shards import FORMAT, MANIFEST, shard_tokenizer
    torch.manual_seed(0)
    first = VQTokenizer(TINY_TOK)
    url = save_tokenizer(str(tmp_path / "tok.pt"), first)
    shards = tmp_path / "shards"
    write_json_atomic(str(shards / MANIFEST), {"format": FORMAT, "tokenizer": {"url": url, "hash": first.hash},
                                               "splits": {}})
    assert shard_tokenizer(str(shards)).hash == first.hash
    torch.manual_seed(1)
    save_tokenizer(url, VQTokenizer(TINY_TOK))                 # a valid, self-consistent, other tokenizer
    with pytest.raises(ValueError, match="replaced"):
        shard_tokenizer(str(shards))
    with pytest.raises(ValueError, match="trained on tokens of tokenizer"):
        shard_tokenizer(str(shards), expected_hash="0" * 16)
    assert os.path.exists(url)


def test_what_latest_names_outlives_the_next_run_in_the_same_folder(tmp_path):
    """A second run rewrites the folder's working checkpoint; the published copy the first
    LATEST named stays, byte for byte (the Ray Train version of this is in test_train_pipeline)."""
    from nestgen.config import config_from_dict
    from nestgen.local_run import train_local
    from nestgen.checkpoint_files import checkpoint_file
    out = str(tmp_path / "run")
    small = {"model": {"width": 32, "depth": 1}, "train": {"steps": 2, "batch_size": 8, "log_every": 1}}
    first = train_local(config_from_dict(small), out, progress=False)[0]
    assert first.startswith(f"{out}/published/step00000002-") and checkpoint_file(out) == first
    before = open(first, "rb").read()
    second = train_local(config_from_dict({**small, "train": {**small["train"], "steps": 3}}), out, progress=False)[0]
    assert checkpoint_file(out) == second != first
    assert open(first, "rb").read() == before and read_checkpoint(first)["step"] == 2
    assert read_checkpoint(out)["step"] == 3


def test_a_torch_older_than_2_6_is_refused_before_loading(tmp_path, small_model_cfg, monkeypatch):
    """weights_only=True can be bypassed before torch 2.6 (CVE-2025-32434): no checkpoint is
    loaded there. Versions compare as numbers (2.10 is newer than 2.6)."""
    from nestgen.checkpoint_files import check_torch_version
    url = save_checkpoint(str(tmp_path / "ok.pt"), NestgenConfig(model=small_model_cfg),
                          NestedTransformer(small_model_cfg), step=1)
    for old in ("2.5.1", "2.5.1+cu124", "1.13.0"):
        monkeypatch.setattr(torch, "__version__", old)
        with pytest.raises(UnsafeCheckpointError, match=rf"torch {re.escape(old)}: .*CVE-2025-32434.*torch>=2\.6") as e:
            read_checkpoint(url)
        assert "\n" not in str(e.value)
    for new in ("2.6.0", "2.10.0+cpu", "3.0.0"):
        monkeypatch.setattr(torch, "__version__", new)
        check_torch_version()
    assert read_checkpoint(url)["step"] == 1


def _published(tmp_path, small_model_cfg, step=1) -> tuple[str, str]:
    """(output folder, its published checkpoint named by its LATEST)."""
    out = str(tmp_path / "out")
    src = save_checkpoint(str(tmp_path / f"work{step}.pt"), NestgenConfig(model=small_model_cfg),
                          NestedTransformer(small_model_cfg), step=step)
    url = publish_checkpoint(out, src, step)
    write_latest(out, url)
    return out, url


def test_a_published_checkpoint_whose_bytes_changed_is_refused(tmp_path, small_model_cfg):
    """A published name pins the content: a valid checkpoint put in its place (another
    model, same name) is refused by every reader: the file, the folder's LATEST, a copy."""
    from nestgen.checkpoint_files import UntrustedCheckpointError, read_verified, republish
    out, url = _published(tmp_path, small_model_cfg)
    assert read_checkpoint(out)["step"] == 1 and open(url, "rb").read() == read_verified(url)
    torch.manual_seed(1)
    save_checkpoint(url, NestgenConfig(model=small_model_cfg), NestedTransformer(small_model_cfg), step=666)
    for read in (read_checkpoint, load_generator, read_verified,
                 lambda u: republish(str(tmp_path / "elsewhere"), u), lambda u: publish_checkpoint(out, u, 2)):
        with pytest.raises(UntrustedCheckpointError, match=r"refusing .*step00000001-.*\.pt: its bytes hash to "
                                                           r"sha256 [0-9a-f]{12}\.\.\., not the [0-9a-f]{12}"):
            read(url)
    with pytest.raises(UntrustedCheckpointError, match="replaced or damaged"):
        read_checkpoint(out)
    assert not (tmp_path / "elsewhere").exists()


def test_latest_names_only_its_own_published_checkpoints(tmp_path, small_model_cfg):
    """LATEST holds a name relative to its folder; whoever can write it cannot point readers
    at another file, folder or URL. An older LATEST holding the full URL of its own published
    checkpoint still reads."""
    from nestgen.checkpoint_files import UntrustedCheckpointError, checkpoint_file
    out, url = _published(tmp_path, small_model_cfg)
    name = os.path.basename(url)
    assert open(os.path.join(out, "LATEST")).read() == f"published/{name}" and checkpoint_file(out) == url
    other = save_checkpoint(str(tmp_path / "other" / "published" / name), NestgenConfig(model=small_model_cfg),
                            NestedTransformer(small_model_cfg), step=1)
    for named in (other, f"../other/published/{name}", f"published/../../other/published/{name}",
                  f"{out}/published/../../other/published/{name}", "memory://x/published/" + name,
                  "http://127.0.0.1:9/published/" + name, f"{out}/work1.pt", "published/work1.pt", "", "xyz://a"):
        with open(os.path.join(out, "LATEST"), "w") as f:
            f.write(named)
        with pytest.raises(UntrustedCheckpointError, match=r"refusing .*LATEST: it names .*which is not a checkpoint "
                                                           r"in .*/out/published/") as e:
            checkpoint_file(out)
        assert "\n" not in str(e.value)
    for older in (url, f"file://{url}"):                       # what earlier runs wrote
        with open(os.path.join(out, "LATEST"), "w") as f:
            f.write(older)
        assert checkpoint_file(out) == url and read_checkpoint(out)["step"] == 1
    with pytest.raises(ValueError, match="names only its own folder's published checkpoints"):
        write_latest(out, other)


def test_a_registered_model_cannot_name_files_outside_its_download_folder(tmp_path, monkeypatch):
    """What the tracking server says (a logged model's artifact path, its model id) is joined
    under the local download folder only when it stays there."""
    from pipelines.model_registry import checkpoint_resolver
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    models = tmp_path / "cache" / "nestgen" / "mlflow-models"
    secret = tmp_path / "secret.pt"
    secret.write_bytes(b"not yours")
    resolve = checkpoint_resolver("http://127.0.0.1:9")      # never asked: these model ids name no version
    for model_id, path in (("m-abs", str(secret)), ("m-up", "../../../../secret.pt"), ("m-link", "artifacts/link.pt"),
                           ("m-ok", "artifacts/checkpoint.pt")):
        (models / model_id / "artifacts").mkdir(parents=True)      # as download_model leaves a model
        (models / model_id / "MLmodel").write_text(
            f"flavors:\n  python_function:\n    artifacts:\n      checkpoint:\n        path: {path}\n")
    (models / "m-link" / "artifacts" / "link.pt").symlink_to(secret)
    assert resolve("models:/m-ok") == str(models / "m-ok" / "artifacts" / "checkpoint.pt")
    for model_id in ("m-abs", "m-up", "m-link"):
        with pytest.raises(ValueError, match=rf"refusing models:/{model_id}: checkpoint artifact path .*: it leaves "):
            resolve(f"models:/{model_id}")
    with pytest.raises(ValueError, match=r"refusing models:/\.\.: model id '\.\.': it leaves"):
        resolve("models:/..")
