"""Checkpoints from a shared store are data, never code: pickled objects are refused, and a
tokenizer replaced since its hash was recorded is refused before it decodes anything."""
import builtins
import os

import pytest
import torch

from nestgen.checkpoint import load_generator, read_checkpoint, save_checkpoint
from nestgen.config import NestgenConfig, config_to_dict
from nestgen.model.nested_transformer import NestedTransformer
from nestgen.storage import write_json_atomic, write_latest
from nestgen.tokenizers import TokenizerConfig, VQTokenizer, load_tokenizer, save_tokenizer
from nestgen.torchfile import UnsafeCheckpointError


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
    path = tmp_path / "out" / "evil.pt"
    path.parent.mkdir()
    torch.save({**_generator_payload(small_model_cfg), "extra": CreatesFile(str(marker))}, path)
    write_latest(str(tmp_path / "out"), str(path))
    for url in (str(path), str(tmp_path / "out")):            # the file, and the folder's LATEST
        with pytest.raises(UnsafeCheckpointError, match=r"refusing to load .*evil\.pt.*could run code"):
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
    from nestgen.storage import resolve_checkpoint
    out = str(tmp_path / "run")
    small = {"model": {"width": 32, "depth": 1}, "train": {"steps": 2, "batch_size": 8, "log_every": 1}}
    first = train_local(config_from_dict(small), out, progress=False)[0]
    assert first.startswith(f"{out}/published/step00000002-") and resolve_checkpoint(out) == first
    before = open(first, "rb").read()
    second = train_local(config_from_dict({**small, "train": {**small["train"], "steps": 3}}), out, progress=False)[0]
    assert resolve_checkpoint(out) == second != first
    assert open(first, "rb").read() == before and read_checkpoint(first)["step"] == 2
    assert read_checkpoint(out)["step"] == 3
