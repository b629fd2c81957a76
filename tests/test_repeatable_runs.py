"""One seed pins a Ray Train run: the same config and seed on CPU with 2 workers gives
bit-identical weights; another seed gives other weights. The tokenizer's here; the
generator's repeatability is checked by test_train_pipeline's worker-failure test (a faulted
and resumed fit equals an uninterrupted one, weights and EMA), its other seed by
test_seeds_pipeline.py, whose two seed branches train the same config."""
import dataclasses

import pytest
import torch

from nestgen.checkpoint import read_checkpoint
from nestgen.tokenizers.checkpoint import read_tokenizer_checkpoint
from pipelines.config import run_config_from_dict

pytestmark = pytest.mark.timeout(600)


def _same_tensors(a: dict, b: dict) -> bool:
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) for k in a)


def test_tokenizer_weights_are_repeatable_with_one_seed(ray_local, digits_png, tmp_path):
    from pipelines.train_tokenizer import fit_tokenizer

    def train(seed: int, out: str) -> dict:
        cfg = run_config_from_dict({
            "name": "seeded-tok",
            "tokenizer": {"kind": "image", "channels": 3, "image_size": 16, "base_width": 8, "max_width": 8,
                          "downsample": 4, "codebook_size": 32, "code_dim": 4, "steps": 6, "batch_size": 64,
                          "lr": 3e-3, "log_every": 3, "dead_code_restart_every": 2, "seed": seed},
            "scaling": {"num_workers": 2, "checkpoint_every": 6, "shuffle_buffer": 64},
        })
        return read_tokenizer_checkpoint(fit_tokenizer(cfg, str(digits_png), str(tmp_path / out)).checkpoint_url)

    a, again = train(0, "a"), train(0, "again")
    assert a["hash"] == again["hash"] and _same_tensors(a["model"], again["model"])


def test_another_tokenizer_seed_starts_from_other_weights():
    from nestgen.tokenizers import TokenizerConfig, TokenizerTrainer
    cfg = TokenizerConfig(image_size=16, base_width=8, max_width=8, codebook_size=32, code_dim=4)
    first, again, other = (TokenizerTrainer(dataclasses.replace(cfg, seed=s), torch.device("cpu")).model.state_dict()
                           for s in (0, 0, 1))
    assert _same_tensors(first, again) and not _same_tensors(first, other)
