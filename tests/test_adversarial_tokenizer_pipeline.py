"""The tokenizer's adversarial loss in the Ray Train step: the discriminator is wrapped for
data parallelism like the tokenizer, trains on two workers, and its state rides in the
trainer state of the checkpoint (the tokenizer checkpoint itself stays loadable alone)."""
import math

from nestgen.tokenizers import load_tokenizer, read_tokenizer_checkpoint
from pipelines.config import run_config_from_dict
from pipelines.train_tokenizer import fit_tokenizer


def test_adversarial_tokenizer_trains_on_two_workers(ray_local, digits_png, tmp_path):
    cfg = run_config_from_dict({
        "name": "tok-adv",
        "tokenizer": {"kind": "image", "channels": 3, "image_size": 16, "base_width": 8, "max_width": 16,
                      "downsample": 4, "codebook_size": 32, "code_dim": 8, "steps": 8, "batch_size": 16,
                      "log_every": 4, "adversarial_weight": 0.1, "adversarial_start": 2},
        "scaling": {"num_workers": 2, "checkpoint_every": 8, "shuffle_buffer": 64},
    })
    res = fit_tokenizer(cfg, str(digits_png), str(tmp_path / "out"))
    assert res.metrics["step"] == 8
    assert math.isfinite(res.metrics["d_loss"]) and res.metrics["d_loss"] >= 0
    assert math.isfinite(res.metrics["g_loss"])
    ckpt = read_tokenizer_checkpoint(res.checkpoint_url)
    assert "discriminator" in ckpt["trainer"] and not any("disc" in k for k in ckpt["model"])
    assert load_tokenizer(res.checkpoint_url).hash == res.tokenizer_hash
