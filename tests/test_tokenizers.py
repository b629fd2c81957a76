"""VQ tokenizers: shapes, batching, real (short) training on the digits and moving digits,
checkpoint round trip and content hash."""
import dataclasses

import numpy as np
import pytest
import torch

from nestgen.configschema import ConfigError, from_dict, to_dict
from nestgen.data.digits import digit_split
from nestgen.data.image_files import digit_images
from nestgen.data.moving_digits import make_moving_digit_clips
from nestgen.tokenizers import (TokenizerConfig, TokenizerTrainer, VQTokenizer, clips_to_pixels,
                                evaluate_tokenizer, images_to_pixels, load_tokenizer, psnr_from_mse,
                                read_tokenizer_checkpoint, save_tokenizer,
                                train_tokenizer)

TINY = dict(base_width=8, max_width=16, codebook_size=32, code_dim=4)


def _mean_baseline_psnr(train: torch.Tensor, val: torch.Tensor) -> float:
    """PSNR of predicting every held-out sample by the training set's mean sample."""
    return psnr_from_mse(float((val - train.mean(0, keepdim=True)).pow(2).mean()))


# ---------------------------------------------------------------- config


def test_config_loads_from_dict_and_derives_shapes():
    cfg = from_dict(TokenizerConfig, {"kind": "video", "channels": 1, "image_size": 64, "frames": 16,
                                      "downsample": 4, "temporal_downsample": 4, "codebook_size": 1024})
    assert cfg.grid == [4, 16, 16] and cfg.num_tokens == 1024 and cfg.vocab_size == 1024
    assert cfg.pixel_shape == [1, 16, 64, 64]
    assert from_dict(TokenizerConfig, to_dict(cfg)) == cfg
    img = TokenizerConfig(image_size=256, downsample=16)
    assert img.grid == [16, 16] and img.stage_widths()[0] == img.base_width


@pytest.mark.parametrize("bad, field", [
    ({"downsample": 6}, "downsample"),
    ({"image_size": 30, "downsample": 4}, "image_size"),
    ({"kind": "video", "downsample": 4, "temporal_downsample": 8}, "temporal_downsample"),
    ({"kind": "video", "frames": 10, "temporal_downsample": 4}, "frames"),
    ({"codebook_size": 1}, "codebook_size"),
    ({"kind": "audio"}, "kind"),
    ({"codebok_size": 8}, "codebok_size"),
])
def test_config_rejects_bad_values_naming_the_field(bad, field):
    with pytest.raises(ConfigError, match=field):
        from_dict(TokenizerConfig, bad)


# ---------------------------------------------------------------- shapes and batching


@pytest.mark.parametrize("ds", [4, 8, 16])
def test_image_shapes_for_each_downsampling_factor(ds):
    cfg = TokenizerConfig(kind="image", image_size=32, downsample=ds, **TINY)
    model = VQTokenizer(cfg)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    ids = model.encode(x)
    assert ids.shape == (3, 32 // ds, 32 // ds) and list(ids.shape[1:]) == cfg.grid
    assert ids.dtype == torch.long and 0 <= int(ids.min()) and int(ids.max()) < cfg.vocab_size
    out = model.decode(ids)
    assert out.shape == x.shape and float(out.abs().max()) <= 1.0


@pytest.mark.parametrize("ds, tds, frames, size", [(4, 4, 16, 64), (8, 2, 16, 32), (4, 1, 4, 16)])
def test_video_shapes_for_spatial_and_temporal_factors(ds, tds, frames, size):
    cfg = TokenizerConfig(kind="video", channels=1, image_size=size, frames=frames, downsample=ds,
                          temporal_downsample=tds, base_width=4, max_width=8, codebook_size=16, code_dim=4)
    model = VQTokenizer(cfg)
    ids = model.encode(torch.rand(1, 1, frames, size, size) * 2 - 1)
    assert list(ids.shape) == [1, frames // tds, size // ds, size // ds] == [1, *cfg.grid]
    assert model.decode(ids).shape == (1, 1, frames, size, size)


def test_shape_errors_are_explicit():
    model = VQTokenizer(TokenizerConfig(kind="image", image_size=16, **TINY))
    with pytest.raises(ValueError, match="expects"):
        model.encode(torch.zeros(1, 1, 16, 16))            # wrong channel count
    with pytest.raises(ValueError, match="divisible"):
        model.encode(torch.zeros(1, 3, 18, 18))
    with pytest.raises(ValueError, match="grids"):
        model.decode(torch.zeros(1, 4, 4, 4, dtype=torch.long))


@pytest.mark.parametrize("kind", ["image", "video"])
def test_batched_encode_decode_equals_per_sample(kind):
    cfg = TokenizerConfig(kind=kind, channels=1 if kind == "video" else 3, image_size=16, frames=4,
                          temporal_downsample=2, **TINY)
    torch.manual_seed(0)
    model = VQTokenizer(cfg)
    x = torch.rand(5, *cfg.pixel_shape) * 2 - 1
    ids = model.encode(x)
    one_by_one = torch.cat([model.encode(x[i:i + 1]) for i in range(5)])
    assert torch.equal(ids, one_by_one)
    assert torch.equal(model.encode(x, batch_size=2), ids)
    dec = model.decode(ids)
    assert torch.allclose(dec, torch.cat([model.decode(ids[i:i + 1]) for i in range(5)]), atol=1e-5)
    assert torch.allclose(model.decode(ids, batch_size=2), dec, atol=1e-5)


def test_straight_through_gradients_reach_encoder_and_codebook():
    model = VQTokenizer(TokenizerConfig(kind="image", image_size=16, **TINY))
    out = model(torch.rand(2, 3, 16, 16) * 2 - 1)
    (out.recon.pow(2).mean() + out.q_loss).backward()
    first_conv = model.encoder.net[0].weight
    assert first_conv.grad is not None and float(first_conv.grad.abs().sum()) > 0
    assert float(model.quantizer.codebook.grad.abs().sum()) > 0


def test_dead_code_restart_reseeds_only_unused_codes_from_encoder_outputs():
    cfg = TokenizerConfig(kind="image", image_size=16, **TINY)
    trainer = TokenizerTrainer(cfg, device=torch.device("cpu"))
    before = trainer.core.quantizer.codebook.detach().clone()
    trainer._since_restart[:] = 1
    trainer._since_restart[[3, 7, 11]] = 0                 # three codes unused since last restart
    inputs = torch.nn.functional.normalize(torch.randn(100, cfg.code_dim), dim=-1)
    assert trainer.restart_dead_codes(inputs) == 3
    after = trainer.core.quantizer.codebook.detach()
    changed = (after != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == [3, 7, 11]
    # Each new code sits (up to the small tie-breaking noise) on one of the encoder outputs.
    sims = torch.nn.functional.normalize(after[changed], dim=-1) @ inputs.t()
    assert float(sims.max(dim=1).values.min()) > 0.99
    assert int(trainer._since_restart.sum()) == 0


# ---------------------------------------------------------------- training on real data


@pytest.fixture(scope="module")
def digits_32():
    images, _ = digit_images(32)
    train_idx, val_idx = digit_split(len(images), 0.1, 0)
    x = images_to_pixels(images)
    return x[train_idx], x[val_idx]


@pytest.fixture(scope="module")
def trained_image_tokenizer(digits_32):
    train, _ = digits_32
    cfg = TokenizerConfig(kind="image", channels=3, image_size=32, downsample=4, base_width=16,
                          max_width=32, codebook_size=128, code_dim=8, steps=200, batch_size=32,
                          lr=2e-3, warmup_steps=20, dead_code_restart_every=25, usage_window=50,
                          log_every=50, seed=0)
    return train_tokenizer(cfg, train, progress=False)


def test_image_tokenizer_reconstructs_held_out_digits(digits_32, trained_image_tokenizer):
    train, val = digits_32
    model, history = trained_image_tokenizer
    baseline = _mean_baseline_psnr(train, val)
    ev = evaluate_tokenizer(model, val)
    print(f"\nimage tokenizer: held-out PSNR {ev['psnr']:.2f} dB (mean-image baseline {baseline:.2f}), "
          f"codebook usage {ev['usage']:.2f}, perplexity {ev['perplexity']:.1f}")
    assert ev["psnr"] > baseline + 8.0
    assert ev["usage"] > 0.5 and ev["perplexity"] > 20
    assert [h["step"] for h in history] == [50, 100, 150, 200]
    assert history[-1]["psnr"] > history[0]["psnr"] + 5
    assert all(0 < h["usage"] <= 1 and h["perplexity"] >= 1 for h in history)


def test_video_tokenizer_reconstructs_held_out_moving_digits():
    clips, _ = make_moving_digit_clips(72, frames=8, size=32, seed=0)
    x = clips_to_pixels(clips)
    train, val = x[:60], x[60:]
    cfg = TokenizerConfig(kind="video", channels=1, image_size=32, frames=8, downsample=4,
                          temporal_downsample=2, base_width=8, max_width=32, codebook_size=64,
                          code_dim=8, steps=120, batch_size=8, lr=2e-3, warmup_steps=10,
                          dead_code_restart_every=25, usage_window=25, log_every=40, seed=0)
    model, history = train_tokenizer(cfg, train, progress=False)
    assert model.encode(val[:2]).shape == (2, 4, 8, 8)
    baseline = _mean_baseline_psnr(train, val)
    ev = evaluate_tokenizer(model, val, batch_size=6)
    print(f"\nvideo tokenizer: held-out PSNR {ev['psnr']:.2f} dB (mean-clip baseline {baseline:.2f}), "
          f"codebook usage {ev['usage']:.2f}, perplexity {ev['perplexity']:.1f}")
    assert ev["psnr"] > baseline + 3.0
    assert ev["usage"] > 0.3
    assert history[-1]["psnr"] > history[0]["psnr"]


def test_train_tokenizer_accepts_an_iterable_of_uint8_batches():
    g = np.random.default_rng(0)
    batches = [(g.integers(0, 256, (4, 3, 16, 16), dtype=np.uint8), np.zeros(4)) for _ in range(2)]
    cfg = TokenizerConfig(kind="image", image_size=16, steps=5, log_every=2, **TINY)
    model, history = train_tokenizer(cfg, batches, progress=False)
    assert [h["step"] for h in history] == [2, 4, 5]       # re-iterated past its 2 batches
    model, history = train_tokenizer(dataclasses.replace(cfg, steps=50), iter(batches), progress=False)
    assert history[-1]["step"] == 2                          # a one-shot iterator ends training


def test_adversarial_loss_trains_a_discriminator_after_its_warm_up(digits_32, tmp_path):
    train, _ = digits_32
    cfg = TokenizerConfig(kind="image", channels=3, image_size=32, steps=8, batch_size=8, log_every=2,
                          adversarial_weight=0.5, adversarial_start=4, **TINY)
    trainer = TokenizerTrainer(cfg)
    before = [p.detach().clone() for p in trainer.disc.parameters()]
    metrics = [trainer.train_step(train[i * 8:(i + 1) * 8]) for i in range(cfg.steps)]
    assert all("d_loss" not in m and "g_loss" not in m for m in metrics[:4])      # warm-up: MSE only
    adv = metrics[4:]
    assert all(np.isfinite([m["loss"], m["d_loss"], m["g_loss"], m["d_real"], m["d_fake"]]).all() for m in adv)
    assert all(m["d_loss"] >= 0 for m in adv)                                     # hinge: never negative
    changed = [not torch.equal(a, b) for a, b in zip(before, trainer.disc.parameters())]
    assert all(changed), "every discriminator parameter was updated"

    # The tokenizer checkpoint holds the tokenizer alone and loads as before.
    url = str(tmp_path / "tok.pt")
    save_tokenizer(url, trainer.core, trainer=trainer.state())
    ckpt = read_tokenizer_checkpoint(url)
    assert not any("disc" in k for k in ckpt["model"])
    loaded = load_tokenizer(url)
    assert loaded.hash == trainer.core.hash
    # The trainer state carries the discriminator, so a resumed run continues the same game.
    resumed = TokenizerTrainer(cfg)
    resumed.load_state(ckpt["trainer"])
    assert resumed.step == 8 and all(torch.equal(a, b) for a, b in
                                     zip(resumed.disc.state_dict().values(), trainer.disc.state_dict().values()))
    # train_tokenizer reports the adversarial terms once they exist.
    _, history = train_tokenizer(cfg, train[:64], progress=False)
    assert "d_loss" not in history[0] and "d_loss" in history[-1] and "g_loss" in history[-1]
    # Off by default: no discriminator at all.
    assert TokenizerTrainer(dataclasses.replace(cfg, adversarial_weight=0.0)).disc is None


# ---------------------------------------------------------------- checkpoints and hash


@pytest.mark.parametrize("where", ["local", "memory"])
def test_checkpoint_round_trip_keeps_tokens_and_hash(where, tmp_path, digits_32, trained_image_tokenizer):
    _, val = digits_32
    model, history = trained_image_tokenizer
    url = str(tmp_path / "tok" / "image.pt") if where == "local" else "memory://nestgen-tests/tok/image.pt"
    save_tokenizer(url, model, history=history)
    loaded = load_tokenizer(url, device=model.device)       # trained on CUDA when present
    assert loaded.cfg == model.cfg and loaded.device == model.device
    assert torch.equal(loaded.encode(val[:32]), model.encode(val[:32]))
    h = model.hash
    assert len(h) == 16 and int(h, 16) >= 0
    assert loaded.hash == h == read_tokenizer_checkpoint(url)["hash"]
    assert read_tokenizer_checkpoint(url)["history"] == history


def test_hash_changes_with_any_weight_or_config_change(trained_image_tokenizer, tmp_path):
    model, _ = trained_image_tokenizer
    clone = VQTokenizer(model.cfg)
    clone.load_state_dict(model.state_dict())
    h = clone.hash
    with torch.no_grad():
        clone.decoder.net[-1].bias[0] += 1e-6
    assert clone.hash != h
    other_cfg = VQTokenizer(dataclasses.replace(model.cfg, beta=0.5))
    other_cfg.load_state_dict(model.state_dict())
    assert other_cfg.hash != h
    # A checkpoint whose weights no longer match its stored hash is refused.
    url = str(tmp_path / "tampered.pt")
    save_tokenizer(url, model)
    ckpt = read_tokenizer_checkpoint(url)
    ckpt["model"]["quantizer.codebook"][0, 0] += 1.0
    torch.save(ckpt, url)
    with pytest.raises(ValueError, match="hash"):
        load_tokenizer(url)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_encode_decode_run_on_the_module_device():
    cfg = TokenizerConfig(kind="video", channels=1, image_size=16, frames=4, temporal_downsample=2, **TINY)
    model = VQTokenizer(cfg)
    x = torch.rand(3, *cfg.pixel_shape) * 2 - 1
    ids_cpu = model.encode(x)
    model = model.cuda()
    ids = model.encode(x)                                    # CPU input, moved to the module
    assert ids.device.type == "cuda" and model.decode(ids).device.type == "cuda"
    assert (ids.cpu() == ids_cpu).float().mean() > 0.99      # TF32/cuDNN may flip rare near-ties
