"""The causal 3-D tokenizer (tokenizer.causal, MAGVIT-v2) and the Kinetics-600 protocol it
serves: 5 given frames = frame 0 alone + frames 1-4 = the first 2 latent frames.

Exactness claims (torch.equal) are between inputs of one shape on CPU, where each output
element of a convolution is computed the same way whatever the other positions hold."""
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nestgen.config import DecodeConfig, ModelConfig, config_from_dict
from nestgen.configschema import ConfigError, from_dict, to_dict
from nestgen.data.moving_digits import make_moving_digit_clips
from nestgen.decoding.maskgit import decode
from nestgen.evaluation.data import cond_frames
from nestgen.model.nested_transformer import NestedTransformer
from nestgen.render import tokens_to_pixels
from nestgen.serving.config import EngineConfig
from nestgen.serving.conditioning import condition_tokens, frames_needed
from nestgen.serving.request import Condition
from nestgen.tokenizers import (Tokenizer, TokenizerConfig, VQTokenizer, clips_to_pixels, load_tokenizer,
                                pixel_frames, psnr_from_mse, read_tokenizer_checkpoint, save_tokenizer,
                                train_tokenizer)
from nestgen.tokenizers.model import state_hash

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(kind="video", channels=1, image_size=16, frames=9, downsample=4, temporal_downsample=4,
            base_width=8, max_width=16, codebook_size=32, code_dim=4)


def _tokenizer(causal: bool = True, frames: int = 9) -> VQTokenizer:
    torch.manual_seed(0)
    return VQTokenizer(TokenizerConfig(**{**TINY, "frames": frames}, causal=causal)).eval()


# ---------------------------------------------------------------- config


def test_causal_config_groups_frame_0_alone_then_groups():
    cfg = from_dict(TokenizerConfig, {**TINY, "frames": 17, "causal": True})
    assert cfg.grid == [5, 4, 4] and cfg.pixel_shape == [1, 17, 16, 16]
    assert from_dict(TokenizerConfig, to_dict(cfg)) == cfg
    assert [pixel_frames(k, 4, True) for k in range(4)] == [0, 1, 5, 9]
    assert [pixel_frames(k, 4, False) for k in range(4)] == [0, 4, 8, 12]
    with pytest.raises(ConfigError, match="frames.*1 \\+ a multiple"):
        from_dict(TokenizerConfig, {**TINY, "frames": 16, "causal": True})
    with pytest.raises(ConfigError, match="causal"):
        from_dict(TokenizerConfig, {"kind": "image", "causal": True})
    with pytest.raises(ValueError, match="causal"):
        _tokenizer().encode(torch.zeros(1, 1, 8, 16, 16))


# ---------------------------------------------------------------- causality


def test_latents_of_frames_up_to_t_ignore_later_frames_exactly():
    """For every t, frames > t replaced by noise: latent frames that end at or before t
    (latent 0 = frame 0, latent j = frames 4j-3..4j) keep their encoder outputs and ids
    bit for bit. The non-causal tokenizer, same weights, does not have this property."""
    tok, full = _tokenizer(causal=True), _tokenizer(causal=False, frames=8)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 9, 16, 16, generator=g) * 2 - 1
    with torch.no_grad():
        z = tok.encoder(x)
        for t in (0, 3, 4, 7):                                 # both sides of each group edge
            y = x.clone()
            y[:, :, t + 1:] = torch.rand(y[:, :, t + 1:].shape, generator=g) * 2 - 1
            k = t // 4 + 1                                     # latent frames within frames 0..t
            zy = tok.encoder(y)
            assert torch.equal(zy[:, :, :k], z[:, :, :k]), t
            assert not torch.equal(zy[:, :, k:], z[:, :, k:]), t    # later latents do see them
            assert torch.equal(tok.encode(y)[:, :k], tok.encode(x)[:, :k])
        y = x[:, :, :8].clone()
        y[:, :, 7] = 0
        assert not torch.equal(full.encoder(y)[:, :, :1], full.encoder(x[:, :, :8])[:, :, :1])


def test_the_first_frame_is_encoded_on_its_own():
    """Frame 0 alone (a 1-frame clip) gives latent frame 0 of any clip that starts with it,
    and 5 frames give the first 2 latent frames; decoding is causal the same way. (Clips of
    other lengths may take other convolution kernels, so floats are compared to rounding.)"""
    tok = _tokenizer()
    x = torch.rand(3, 1, 9, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    same = dict(rtol=0, atol=1e-5)
    with torch.no_grad():
        z = tok.encoder(x)
        torch.testing.assert_close(tok.encoder(x[:, :, :1]), z[:, :, :1], **same)
        torch.testing.assert_close(tok.encoder(x[:, :, :5]), z[:, :, :2], **same)
    ids = tok.encode(x)
    assert ids.shape == (3, 3, 4, 4) and torch.equal(tok.encode(x[:, :, :1]), ids[:, :1])
    assert torch.equal(tok.encode(x[:, :, :5]), ids[:, :2])
    pixels = tok.decode(ids)
    assert pixels.shape == x.shape
    torch.testing.assert_close(tok.decode(ids[:, :1]), pixels[:, :, :1], **same)
    torch.testing.assert_close(tok.decode(ids[:, :2]), pixels[:, :, :5], **same)
    other = ids.clone()
    other[:, 2] = (other[:, 2] + 1) % tok.vocab_size
    assert torch.equal(tok.decode(other)[:, :, :5], pixels[:, :, :5])     # same shape: bit for bit
    assert not torch.equal(tok.decode(other)[:, :, 5:], pixels[:, :, 5:])


# ---------------------------------------------------------------- the 5 given frames


@pytest.fixture(scope="module")
def moving_digits_tokenizer():
    """A tiny causal tokenizer briefly trained (60 steps) on 9-frame moving-digit clips (16x16)."""
    clips, _ = make_moving_digit_clips(80, frames=9, size=16, seed=0)
    x = clips_to_pixels(clips)
    cfg = TokenizerConfig(**{**TINY, "codebook_size": 64, "code_dim": 8}, causal=True, steps=60, batch_size=8,
                          lr=3e-3, warmup_steps=5, dead_code_restart_every=20, usage_window=20, log_every=20,
                          seed=0)
    model, _ = train_tokenizer(cfg, x[:64], progress=False)
    return model, clips[64:], x[:64]


def test_five_given_frames_survive_tokenizing_and_generation(moving_digits_tokenizer):
    """Kinetics-600 style: 5 given frames of held-out clips -> the first 2 latent frames.
    Tokens: the serving path (the 5 frames alone) gives exactly the tokens of the real whole
    clip, the tokens the generator trained on: nothing of frames 5+ leaks in. Generation keeps
    those tokens, and as decoding is causal too, the first 5 decoded frames are bit for bit
    the decoded given frames whatever the generator filled in. Pixels: those 5 frames are the
    tokenizer's reconstruction of the given ones, whose error is reported and bounded."""
    tok, val_clips, train = moving_digits_tokenizer
    t, h, w = tok.grid
    n_cond = 2 * h * w
    assert frames_needed(n_cond, tok.grid, tok.temporal_downsample, tok.causal) == 5
    limits = EngineConfig().condition_limits()
    given = val_clips[:, :5]
    cond = torch.stack([condition_tokens(Condition(frames=c.tolist()), tok, n_cond, tok.grid, limits)
                        for c in given])
    real = tok.encode(clips_to_pixels(val_clips)).reshape(len(val_clips), -1)
    assert torch.equal(cond, real[:, :n_cond])

    torch.manual_seed(0)
    model = NestedTransformer(ModelConfig(vocab_size=tok.vocab_size, grid=tok.grid, num_classes=1, width=32,
                                          depth=2, heads=4, nest_factors=[1, 2])).eval()
    for cache in ("none", "on_switch"):
        out = decode(model, torch.zeros(len(cond), dtype=torch.long),
                     DecodeConfig(schedule="2x2,1x2", steps=4, cache=cache), cond=cond).tokens
        assert torch.equal(out[:, :n_cond], cond)
        assert not torch.equal(out[:, n_cond:], real[:, n_cond:])   # the rest is generated
        clips = tokens_to_pixels(out, tok.grid, tok)                 # (B, 9, 16, 16) uint8
        assert np.array_equal(clips[:, :5], tokens_to_pixels(real, tok.grid, tok)[:, :5])

    recon = tok.decode(cond.reshape(-1, 2, h, w)).cpu()
    mse = float((recon - clips_to_pixels(given)).pow(2).mean())
    baseline = float((clips_to_pixels(given) - train[:, :, :5].mean(0, keepdim=True)).pow(2).mean())
    print(f"\n5 given frames through the causal tokenizer: PSNR {psnr_from_mse(mse):.2f} dB "
          f"(mean-frame baseline {psnr_from_mse(baseline):.2f} dB)")
    assert psnr_from_mse(mse) > psnr_from_mse(baseline) + 2.0     # ~2.9 dB after 60 steps


# ---------------------------------------------------------------- checkpoint, interface, hash


def _hash_before_the_causal_field(cfg: TokenizerConfig, state: dict) -> str:
    """The content hash as written before `causal` existed (frozen copy of that formula)."""
    d = to_dict(cfg)
    del d["causal"]
    hh = hashlib.sha256(json.dumps(d, sort_keys=True).encode())
    for name in sorted(state):
        x = state[name].detach().cpu().contiguous()
        hh.update(f"{name}|{x.dtype}|{tuple(x.shape)}".encode())
        hh.update(x.reshape(-1).view(torch.uint8).numpy().tobytes())
    return hh.hexdigest()[:16]


def test_checkpoint_round_trip_interface_and_hash(tmp_path):
    tok, full = _tokenizer(causal=True), _tokenizer(causal=False, frames=8)
    url = str(tmp_path / "causal.pt")
    save_tokenizer(url, tok)
    loaded = load_tokenizer(url)
    assert isinstance(loaded, Tokenizer) and loaded.causal and loaded.frames == 9 and loaded.grid == [3, 4, 4]
    assert loaded.hash == tok.hash == read_tokenizer_checkpoint(url)["hash"]
    x = torch.rand(2, 1, 9, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    assert torch.equal(loaded.encode(x), tok.encode(x))
    assert torch.equal(loaded.decode(tok.encode(x)), tok.decode(tok.encode(x)))
    # The switch is part of the hash: same weights, other tokenizer.
    same_weights = VQTokenizer(dataclasses.replace(tok.cfg, causal=False, frames=8)).eval()
    same_weights.load_state_dict(tok.state_dict())
    assert same_weights.hash != tok.hash
    # Non-causal checkpoints keep the hash they were written with before the field existed,
    # and one written then (no `causal` in its config) still loads, as the non-causal tokenizer.
    assert full.hash == _hash_before_the_causal_field(full.cfg, full.state_dict())
    old = str(tmp_path / "old.pt")
    save_tokenizer(old, full)
    ckpt = read_tokenizer_checkpoint(old)
    del ckpt["config"]["causal"]
    torch.save(ckpt, old)
    again = load_tokenizer(old)
    assert not again.causal and again.hash == full.hash


# ---------------------------------------------------------------- the Kinetics-600 config


def test_kinetics600_conditions_on_5_frames():
    from pipelines.config import load_run_config
    cfg = load_run_config(ROOT / "configs" / "kinetics600.yaml")
    t = cfg.tokenizer
    assert t.causal and t.frames == 17 and cfg.model.grid == t.grid == [5, 16, 16]
    n_latent = cfg.train.cond_tokens // (16 * 16)
    assert cfg.train.cond_tokens % (16 * 16) == 0 and n_latent == 2
    assert pixel_frames(n_latent, t.temporal_downsample, t.causal) == 5
    assert frames_needed(cfg.train.cond_tokens, cfg.model.grid, t.temporal_downsample, t.causal) == 5
    assert cond_frames(cfg, t.frames) == 5                  # the predicted frames scored: 5..16


@pytest.mark.parametrize("grid, frames, cond, given", [
    ([5, 4, 4], 17, 32, 5), ([3, 4, 4], 9, 16, 1),          # causal, temporal_downsample 4
    ([4, 4, 4], 16, 16, 4), ([3, 4, 4], 12, 32, 8),         # whole groups of 4
    ([3, 4, 4], 5, 32, 3), ([4, 4, 4], 4, 16, 1),           # causal by 2; downsample 1
])
def test_evaluation_scores_only_the_frames_after_the_given_ones(grid, frames, cond, given):
    cfg = config_from_dict({"model": {"grid": grid, "vocab_size": 16}, "train": {"cond_tokens": cond}})
    assert cond_frames(cfg, frames) == given
