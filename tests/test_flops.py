"""The analytic FLOP counter must agree with torch's FlopCounterMode on the real decode.

FlopCounterMode has no formula for the CPU flash-attention kernel, so the forward runs with
SDPA's math backend here: the same attention, decomposed into matmuls that it counts.
"""
import dataclasses

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from nestgen.config import DecodeConfig, ModelConfig
from nestgen.decoding.maskgit import decode
from nestgen.flops import decode_flops, forward_flops
from nestgen.model.nested_transformer import KVCache, NestedTransformer

CFG = ModelConfig(vocab_size=64, grid=[8, 8], num_classes=4, width=128, depth=3, heads=8)


@pytest.mark.parametrize("attention_width", ["nested", "full"])
@pytest.mark.parametrize("schedule, cache, guidance, cond", [
    ("1x12", "none", 0.0, 0),
    ("8x3,4x3,2x3,1x3", "none", 0.0, 0),
    ("8x3,4x3,2x3,1x3", "on_switch", 0.0, 0),
    ("8x3,4x3,2x3,1x3", "every:2", 1.5, 0),
    ("4x4,1x4", "on_switch", 2.0, 16),
    ("8x3,4x3,2x3,1x3", "on_switch+cls", 0.0, 0),
    ("8x3,4x3,2x3,1x3", "every:2+cls", 1.5, 0),
    ("4x4,1x4", "on_switch+cls", 2.0, 16),
])
def test_counter_matches_flop_counter_mode(attention_width, schedule, cache, guidance, cond):
    cfg = dataclasses.replace(CFG, attention_width=attention_width)
    model = NestedTransformer(cfg).eval()
    d = DecodeConfig(schedule=schedule, steps=sum(int(s.split("x")[1]) for s in schedule.split(",")),
                     cache=cache, guidance_scale=guidance)
    b = 3
    cond_t = torch.randint(0, cfg.vocab_size, (b, cond)) if cond else None
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        decode(model, torch.arange(b) % cfg.num_classes, d, cond=cond_t)
    assert counter.get_total_flops() == b * decode_flops(cfg, d, cond).total


def test_single_forward_matches_exactly():
    model = NestedTransformer(CFG).eval()
    for f in (1, 2, 8):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            model(torch.zeros(2, 64, dtype=torch.long), torch.tensor([0, 1]), f)
        assert counter.get_total_flops() == 2 * forward_flops(CFG, f, 65, 65, 64)


def test_magnets_schedule_with_cache_saves_at_least_2_5x():
    base = decode_flops(CFG, DecodeConfig(schedule="1x12", cache="none")).total
    mag = decode_flops(CFG, DecodeConfig(schedule="magnets", cache="on_switch")).total
    assert base / mag >= 2.5


def test_output_head_is_charged_only_on_the_requested_positions():
    """Decoding asks for logits at the still-masked positions only; the count charges the
    head on exactly those (n_head), on full and cached passes alike."""
    model = NestedTransformer(CFG).eval()
    positions = torch.tensor([[3, 9, 17, 40, 63]] * 2)
    tokens, labels = torch.zeros(2, 64, dtype=torch.long), torch.tensor([0, 1])
    for f in (1, 4):
        cache = KVCache()
        full, cached = FlopCounterMode(display=False), FlopCounterMode(display=False)
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            with full:
                model(tokens, labels, f, cache=cache, head_positions=positions)
            with cached:
                model.forward_active(tokens, positions, f, cache, n_head=2)
        assert full.get_total_flops() == 2 * forward_flops(CFG, f, 65, 65, 5)
        assert cached.get_total_flops() == 2 * forward_flops(CFG, f, 5, 65, 2, cached=True)
