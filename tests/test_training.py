import dataclasses
import math
import random

import pytest
import torch

from nestgen.config import NestgenConfig, TrainConfig, config_from_dict
from nestgen.masking import random_training_mask
from nestgen.model.nested_transformer import NestedTransformer
from nestgen.training.loop import NestedTrainer, train_on_tokens
from nestgen.training.objective import distill_lambda, nested_loss, sizes_for_step


def _synthetic_task(n=512, classes=3, vocab=11, tokens=16, seed=0):
    """Each class is a fixed random template; 10% of tokens are noise. Learnable, not trivial."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randint(0, vocab, (classes, tokens), generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    x = templates[labels].clone()
    noise = torch.rand(n, tokens, generator=g) < 0.1
    x[noise] = torch.randint(0, vocab, (int(noise.sum()),), generator=g)
    return x, labels


def _eval_losses(model, cfg, tokens, labels):
    tcfg = dataclasses.replace(cfg.train, class_dropout=0.0)
    dev = next(model.parameters()).device
    with torch.no_grad():
        out = nested_loss(model, tokens.to(dev), labels.to(dev), tcfg, 0, cfg.model.nest_factors,
                          torch.Generator(device=dev).manual_seed(123))
    return {f: float(v) for f, v in out.per_size.items()}


def test_every_nested_size_learns(small_model_cfg):
    cfg = NestgenConfig(model=small_model_cfg,
                        train=TrainConfig(steps=150, batch_size=32, lr=3e-3, warmup_steps=10, log_every=50))
    tokens, labels = _synthetic_task()
    trainer = NestedTrainer(cfg)
    before = _eval_losses(trainer.core, cfg, tokens[:256], labels[:256])
    trainer, history = train_on_tokens(cfg, tokens, labels, progress=False, trainer=trainer)
    after = _eval_losses(trainer.core, cfg, tokens[:256], labels[:256])
    assert set(before) == {1, 2, 4, 8}
    for f in before:
        assert after[f] < 0.75 * before[f], (f, before[f], after[f])
    assert after[1] < 0.5 * before[1]
    assert [h["step"] for h in history] == [50, 100, 150]
    lams = [h["lambda"] for h in history]          # window means of the linear 1 -> 0 anneal
    assert lams == sorted(lams, reverse=True) and lams[-1] < 0.2
    assert history[-1]["tokens_per_s"] > 0


def test_distillation_target_is_stop_gradient(small_model_cfg):
    """With lambda = 0 the small size learns only from softmax(full).detach(): the full-size
    weights outside the small slice get exactly the gradient of CE(full) alone."""
    torch.manual_seed(0)
    model = NestedTransformer(small_model_cfg)
    tokens, labels = _synthetic_task(n=8)
    tcfg = TrainConfig(distill={"schedule": "fixed", "value": 0.0}, class_dropout=0.0)
    tcfg = config_from_dict({"train": {"distill": {"schedule": "fixed", "value": 0.0},
                                       "class_dropout": 0.0}}).train

    def grads(factors):
        model.zero_grad()
        nested_loss(model, tokens, labels, tcfg, 0, factors, torch.Generator().manual_seed(5)).total.backward()
        return model.blocks[-1].mlp.fc2.weight.grad.clone()

    full_only, with_small = grads([1]), grads([1, 8])
    w = small_model_cfg.width // 8
    outside = torch.ones_like(full_only, dtype=torch.bool)
    outside[:w, : 4 * w] = False
    torch.testing.assert_close(with_small[outside], full_only[outside])
    assert not torch.allclose(with_small[~outside], full_only[~outside])


def test_lambda_schedules():
    t = TrainConfig(steps=101)
    assert distill_lambda(t, 0) == 1.0 and distill_lambda(t, 50) == pytest.approx(0.5)
    assert distill_lambda(t, 100) == 0.0
    fixed = config_from_dict({"train": {"distill": {"schedule": "fixed", "value": 0.3}}}).train
    assert distill_lambda(fixed, 0) == distill_lambda(fixed, 999) == 0.3
    off = config_from_dict({"train": {"distill": {"schedule": "off"}}}).train
    assert distill_lambda(off, 50) == 1.0


def test_sizes_per_step_all_or_sampled():
    rng = random.Random(0)
    assert sizes_for_step([1, 2, 4, 8], None, rng) == [1, 2, 4, 8]
    seen = set()
    for _ in range(50):
        s = sizes_for_step([1, 2, 4, 8], 1, rng)
        assert len(s) == 2 and s[0] == 1
        seen.add(s[1])
    assert seen == {2, 4, 8}


def test_training_mask_respects_conditioning_and_cosine_counts():
    g = torch.Generator().manual_seed(0)
    mask = random_training_mask(4000, 20, cond_tokens=4, generator=g)
    assert not mask[:, :4].any()
    counts = mask.sum(1).float()
    assert counts.min() >= 1 and counts.max() <= 16
    # E[ceil(16 cos(pi u / 2))] for u ~ U(0,1) is about 16 * 2/pi + 0.5 = 10.7
    assert 10.0 < counts.mean() < 11.4


def test_class_dropout_rate(small_model_cfg):
    from nestgen.training.objective import drop_labels
    labels = torch.zeros(20000, dtype=torch.long)
    dropped = drop_labels(labels, 3, 0.1, torch.Generator().manual_seed(0))
    assert 0.09 < (dropped == 3).float().mean() < 0.11


def test_grad_accumulation_and_sampled_sizes_run(small_model_cfg):
    cfg = NestgenConfig(model=small_model_cfg, train=TrainConfig(
        steps=3, batch_size=8, grad_accum=2, sizes_per_step="sample:1", ema_decay=0.9, log_every=1))
    tokens, labels = _synthetic_task(n=32)
    trainer, history = train_on_tokens(cfg, tokens, labels, progress=False)
    assert trainer.step == 3 and len(history) == 3
    assert all(len([k for k in h if k.startswith("loss/")]) == 2 for h in history)
    ema = trainer.eval_model()
    assert ema is not trainer.core
    assert not torch.equal(ema.blocks[0].attn.qkv.weight, trainer.core.blocks[0].attn.qkv.weight)


def test_the_ema_resumes_exactly_and_starts_at_the_weights_of_a_checkpoint_without_one(small_model_cfg):
    """The EMA starts at the initial weights and update t moves it 1 - min(decay, (1+t)/(10+t))
    of the way to the new ones (warm-up: 0.1 then 2/11 here, below decay 0.9); a resumed
    trainer continues the checkpoint's average at the checkpoint's step (not restarting it at
    the weights or the warm-up), and a checkpoint without an average starts it at the
    checkpoint's weights."""
    cfg = NestgenConfig(model=small_model_cfg, train=TrainConfig(steps=3, batch_size=8, ema_decay=0.9))
    tokens, labels = _synthetic_task(n=16)
    first = NestedTrainer(cfg)
    init = {k: v.clone() for k, v in first.core.state_dict().items()}
    first.train_step(tokens[:8], labels[:8])
    ckpt = {"model": first.core.state_dict(), **first.state()}
    for k, w in ckpt["model"].items():
        torch.testing.assert_close(ckpt["ema"][k], 0.1 * init[k] + 0.9 * w, rtol=1e-6, atol=1e-7)
    resumed = NestedTrainer(cfg)
    resumed.load_state(ckpt)
    resumed.train_step(tokens[8:], labels[8:])
    for k, w in resumed.core.state_dict().items():
        torch.testing.assert_close(resumed.ema.state_dict()[k], 2 / 11 * ckpt["ema"][k] + 9 / 11 * w,
                                   rtol=1e-6, atol=1e-7)
    without = NestedTrainer(cfg)
    without.load_state({**ckpt, "ema": None})
    assert all(torch.equal(without.ema.state_dict()[k], w) for k, w in ckpt["model"].items())


@pytest.mark.parametrize("decay, steps", [(0.5, 12), (0.9999, 25_000)])
def test_the_ema_warm_up_forgets_the_initial_weights(decay, steps):
    """Weights 1 at init jump to 0 and stay: after `steps` updates the average is the init's
    weight, prod_t min(decay, (1+t)/(10+t)) (TensorFlow's / timm's warm-up). At 0.5 the
    warm-up hands over to the decay at t = 8; at 0.9999 the init would keep 0.9999^25000 = 8%
    without the warm-up, and keeps ~1e-34 with it."""
    from nestgen.training.ema import WeightEMA
    layer = torch.nn.Linear(3, 2)
    with torch.no_grad():
        for p in layer.parameters():
            p.fill_(1.0)
    ema = WeightEMA(layer, decay)
    with torch.no_grad():
        for p in layer.parameters():
            p.zero_()
    for t in range(steps):
        ema.update(t)
    w_init = math.prod(min(decay, (1 + t) / (10 + t)) for t in range(steps))
    assert w_init < 0.1 * decay ** steps                    # the warm-up matters at both
    for avg in ema.state_dict().values():                   # float32 products: 1e-7 a step
        torch.testing.assert_close(avg, torch.full_like(avg, w_init), rtol=1e-2, atol=0)


def test_a_resumed_run_continues_bit_for_bit(small_model_cfg, tmp_path):
    """4 steps straight vs 2 steps, a checkpoint file (saved and read back with weights_only,
    as a resume does), and 2 more: the same losses at every step and the same weights, EMA
    and optimizer state. Sampled sizes, masks, label dropout and batch draws all take part.
    torch.equal is fair: both runs are the same ops on the same machine on one thread, so
    only a different random draw (or a lost state) could make them differ. One thread,
    because CPU kernels split large reductions over threads in no fixed order: two identical
    6-step runs of configs/digits.yaml on 2 threads differ by ~4e-9 in 45 tensors. The LR is
    constant and the distillation weight fixed, so the first half's shorter config changes
    no schedule."""
    from nestgen.checkpoint import read_checkpoint, save_checkpoint
    cfg = config_from_dict({"model": dataclasses.asdict(small_model_cfg),
                            "train": {"steps": 4, "batch_size": 8, "lr": 3e-3, "warmup_steps": 0,
                                      "min_lr_ratio": 1.0, "distill": {"schedule": "fixed", "value": 0.5},
                                      "sizes_per_step": "sample:1", "class_dropout": 0.3, "ema_decay": 0.9,
                                      "log_every": 1}})
    half = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=2))
    tokens, labels = _synthetic_task(n=64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        straight, history = train_on_tokens(cfg, tokens, labels, progress=False)
        first, head = train_on_tokens(half, tokens, labels, progress=False)
        url = save_checkpoint(str(tmp_path / "half.pt"), half, first.core, **first.state())
        resumed = NestedTrainer(cfg)
        resumed.load_state(read_checkpoint(url))
        resumed, tail = train_on_tokens(cfg, tokens, labels, progress=False, trainer=resumed)
    finally:
        torch.set_num_threads(threads)
    losses = [{k: v for k, v in h.items() if k.startswith("loss/")} for h in history]
    assert losses == [{k: v for k, v in h.items() if k.startswith("loss/")} for h in head + tail]
    assert len({tuple(sorted(h)) for h in losses}) > 1                  # the sampled size changed
    for k, w in straight.core.state_dict().items():
        assert torch.equal(resumed.core.state_dict()[k], w), k
        assert torch.equal(resumed.ema.state_dict()[k], straight.ema.state_dict()[k]), k
    a, b = straight.opt.state_dict()["state"], resumed.opt.state_dict()["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[i]["exp_avg"], b[i]["exp_avg"]) for i in a)


def _loss_and_grads(model, tcfg, factors, step=0):
    tokens, labels = _synthetic_task(n=8)
    model.zero_grad()
    out = nested_loss(model, tokens, labels, tcfg, step, factors, torch.Generator().manual_seed(5))
    out.total.backward()
    return out, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("output_head", ["tied", "separate"])
def test_chunked_loss_equals_whole_batch_loss(small_model_cfg, output_head):
    """Head + CE over chunks of masked tokens (7 does not divide their count): the same loss,
    per-size CEs and gradients of every parameter as the whole-batch loss, distillation on."""
    torch.manual_seed(0)
    model = NestedTransformer(dataclasses.replace(small_model_cfg, output_head=output_head))
    whole = config_from_dict({"train": {"distill": {"schedule": "fixed", "value": 0.3}}}).train
    chunked = dataclasses.replace(whole, loss_chunk=7)
    ref, ref_grads = _loss_and_grads(model, whole, [1, 2, 4, 8])
    out, grads = _loss_and_grads(model, chunked, [1, 2, 4, 8])
    torch.testing.assert_close(out.total, ref.total)
    assert out.per_size.keys() == ref.per_size.keys()
    for f in ref.per_size:
        torch.testing.assert_close(out.per_size[f], ref.per_size[f])
    assert grads.keys() == ref_grads.keys() and "tok_emb.weight" in grads
    for k in ref_grads:
        torch.testing.assert_close(grads[k], ref_grads[k], msg=k)


def test_activation_checkpointing_keeps_gradients(small_model_cfg):
    torch.manual_seed(0)
    model = NestedTransformer(small_model_cfg)
    tcfg = config_from_dict({"train": {"distill": {"schedule": "fixed", "value": 0.5}}}).train
    ref, ref_grads = _loss_and_grads(model, tcfg, [1, 4])
    model.checkpoint_blocks = True
    out, grads = _loss_and_grads(model, tcfg, [1, 4])
    torch.testing.assert_close(out.total, ref.total)
    assert grads.keys() == ref_grads.keys()
    for k in ref_grads:
        torch.testing.assert_close(grads[k], ref_grads[k], msg=k)


def test_a_size_that_runs_on_some_steps_is_averaged_over_those_steps():
    from nestgen.training.metric_window import MetricWindow
    w = MetricWindow()
    w.add({"loss": 2.0, "loss/f1": 1.0, "loss/f8": 4.0})
    w.add({"loss": 4.0, "loss/f1": 3.0})                 # f8 not sampled this step
    w.add({"loss": 3.0, "loss/f1": 2.0, "loss/f8": 6.0})
    assert w.means() == {"loss": 3.0, "loss/f1": 2.0, "loss/f8": 5.0} and w.steps == 3
    w.reset()
    assert w.means() == {} and w.steps == 0


def test_sampled_sizes_log_their_own_mean_loss():
    """With sample:1 each small size runs on some steps only; its logged loss is its mean over
    those steps, so it is on the scale of the full model's (the old window divided by every step)."""
    from nestgen.config import config_from_dict
    from nestgen.data.digits import load_digit_tokens
    from nestgen.training.loop import train_on_tokens
    cfg = config_from_dict({"model": {"width": 32, "depth": 1},
                            "train": {"steps": 12, "batch_size": 16, "log_every": 12, "sizes_per_step": "sample:1"},
                            "seed": 3})
    (tokens, labels), _ = load_digit_tokens()
    _, history = train_on_tokens(cfg, tokens, labels, progress=False)
    row = history[-1]
    small = [row[k] for k in ("loss/f2", "loss/f4", "loss/f8") if k in row]
    assert small and all(v > 0.5 * row["loss/f1"] for v in small), row
