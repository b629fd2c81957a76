import pytest
import torch

from nestgen.config import DecodeConfig
from nestgen.decoding import noise
from nestgen.decoding.maskgit import decode
from nestgen.masking import decode_mask_counts
from nestgen.model.nested_transformer import NestedTransformer


@pytest.fixture
def model(small_model_cfg):
    torch.manual_seed(0)
    m = NestedTransformer(small_model_cfg).eval()
    with torch.no_grad():   # sharpen logits so that decoding is not pure noise
        m.head_bias.add_(torch.randn(m.head_bias.shape))
    return m


def _record_queries(model):
    calls = []
    h = model.blocks[0].register_forward_pre_hook(lambda mod, args: calls.append(tuple(args[0].shape[1:])))
    return calls, h


def test_mask_counts_follow_maskgit_arithmetic():
    assert decode_mask_counts(16, 4) == [16, 14, 11, 6, 0]
    assert decode_mask_counts(3, 6) == [3, 2, 1, 1, 1, 1, 0]    # clamp: keep >= 1 until the end
    with pytest.raises(ValueError, match="nothing to decode"):
        decode_mask_counts(0, 4)


def test_query_tokens_per_step_match_schedule_arithmetic(model):
    """16 tokens, K=4: masked counts [16, 14, 11, 6, 0]. With `on_switch` and schedule 2x2,1x2,
    steps 0 and 2 are full passes (17 queries incl. the class token); a cached step runs the
    still-masked tokens plus those fixed one step earlier: 16 at step 1, 11 at step 3."""
    calls, h = _record_queries(model)
    res = decode(model, torch.tensor([0, 1]), DecodeConfig(schedule="2x2,1x2", steps=4, cache="on_switch"),
                 keep_history=True)
    h.remove()
    w = model.cfg.width
    assert calls == [(17, w // 2), (16, w // 2), (17, w), (11, w)]
    assert [p.n_query for p in res.plan] == [17, 16, 17, 11]
    masked = [int((t == model.cfg.mask_id).sum(1)[0]) for t in res.history]
    assert masked == [14, 11, 6, 0]


@pytest.mark.parametrize("n_cond", [0, 6])
def test_cls_option_adds_class_and_conditioning_queries_to_cached_steps(model, n_cond):
    """`on_switch+cls`: the cached steps of the `on_switch` decode above also run the class
    token and the conditioning tokens (masked counts [16-c, ...] over the free tokens)."""
    calls, h = _record_queries(model)
    cond = torch.randint(0, model.cfg.vocab_size, (2, n_cond)) if n_cond else None
    res = decode(model, torch.tensor([0, 1]), DecodeConfig(schedule="2x2,1x2", steps=4, cache="on_switch+cls"),
                 cond=cond)
    h.remove()
    counts = decode_mask_counts(16 - n_cond, 4)
    expected = [17, counts[0] + 1 + n_cond, 17, counts[2] + 1 + n_cond]
    assert [c[0] for c in calls] == expected
    assert [p.n_query for p in res.plan] == expected


def test_every_r_refresh_and_guidance_double_the_rows(model):
    calls, h = _record_queries(model)
    decode(model, torch.tensor([0]), DecodeConfig(schedule="1x6", steps=6, cache="every:2",
                                                  guidance_scale=1.0))
    h.remove()
    counts = decode_mask_counts(16, 6)
    assert [c[0] for c in calls] == [17, counts[0], 17, counts[2], 17, counts[4]]


def test_conditioning_tokens_are_kept(model):
    cond = torch.randint(0, model.cfg.vocab_size, (3, 6))
    for cache in ("none", "on_switch"):
        res = decode(model, torch.tensor([0, 1, 2]), DecodeConfig(schedule="4x2,1x2", steps=4, cache=cache),
                     cond=cond, keep_history=True)
        assert torch.equal(res.tokens[:, :6], cond)
        assert res.plan[0].n_unknown == 10
        assert (res.tokens < model.cfg.vocab_size).all()


def test_samples_do_not_depend_on_batch_neighbours(model):
    d = DecodeConfig(schedule="magnets", steps=12, cache="on_switch")
    batch = decode(model, torch.tensor([0, 1, 2]), d, seeds=[10, 11, 12]).tokens
    alone = decode(model, torch.tensor([1]), d, seeds=[11]).tokens
    assert torch.equal(batch[1], alone[0])
    again = decode(model, torch.tensor([0, 1, 2]), d, seeds=[10, 11, 12]).tokens
    assert torch.equal(batch, again)
    other = decode(model, torch.tensor([0, 1, 2]), d, seeds=[20, 21, 22]).tokens
    assert not torch.equal(batch, other)


def test_seed_count_must_match(model):
    with pytest.raises(ValueError, match="2 seeds for 3 samples"):
        decode(model, torch.tensor([0, 1, 2]), DecodeConfig(schedule="1x12"), seeds=[1, 2])


@pytest.mark.parametrize("choice_temperature", [0.0, 4.5])
def test_first_step_fixes_the_most_confident_under_annealed_gumbel_noise(model, choice_temperature):
    """Step 0 of K rebuilt by hand: sample every masked position by inverse CDF, score it by
    log-probability + choice_temperature * (1 - 1/K) * Gumbel noise (MaskGIT's annealing), fix
    the top scores. The decoder must fix exactly those positions with exactly those tokens."""
    k, seeds, labels = 3, [7, 8], torch.tensor([0, 2])
    cfg = model.cfg
    d = DecodeConfig(schedule=f"1x{k}", steps=k, cache="none", choice_temperature=choice_temperature)
    first = decode(model, labels, d, seeds=seeds, keep_history=True).history[0]
    seed_t = torch.tensor(seeds)
    pos = torch.arange(cfg.num_tokens).expand(2, -1)
    with torch.no_grad():
        logp = model(torch.full((2, cfg.num_tokens), cfg.mask_id), labels, 1).log_softmax(-1)
    cdf = logp.exp().cumsum(-1)
    u = noise.uniform(seed_t, 0, pos, stream=0)
    sampled = (cdf < u[..., None] * cdf[..., -1:]).sum(-1).clamp(max=cfg.vocab_size - 1)
    score = logp.gather(-1, sampled[..., None])[..., 0] \
        + choice_temperature * (1 - 1 / k) * noise.gumbel(seed_t, 0, pos, stream=1)
    n_fixed = cfg.num_tokens - decode_mask_counts(cfg.num_tokens, k)[1]
    expected = torch.full_like(first, cfg.mask_id)
    top = score.topk(n_fixed, dim=1).indices
    expected.scatter_(1, top, sampled.gather(1, top))
    assert torch.equal(first, expected)


def test_decode_worker_gives_the_decode_tokens_after_an_untimed_warm_up(model):
    from nestgen.decoding.worker import DecodeWorker
    d = DecodeConfig(schedule="8x3,4x3,2x3,1x3", steps=12, cache="on_switch", guidance_scale=1.0)
    labels, cond = torch.tensor([0, 1, 2]), torch.randint(0, model.cfg.vocab_size, (3, 4))
    worker = DecodeWorker(model, model.cfg.grid, warm_up=True)
    rows = []
    h = model.blocks[0].register_forward_pre_hook(lambda mod, args: rows.append(args[0].shape[0]))
    try:
        # a new shape (decode config, conditioning length) is decoded once with two rows first
        for c, warmed in ((None, True), (cond, True), (None, False)):
            rows.clear()
            got = worker.run(d, labels, [5, 6, 7], c)
            assert (2 * 2 in rows) == warmed and 3 * 2 in rows          # rows doubled for guidance
            assert got.pixels is None and got.seconds > 0
            assert torch.equal(got.tokens, decode(model, labels, d, seeds=[5, 6, 7], cond=c).tokens)
    finally:
        h.remove()


# Per-row settings: a mixed batch, rows 0..3: one at the config's settings, one hotter and
# guided, one colder and unguided, one guided harder.
ROW_TEMPS, ROW_GUIDANCE = [1.0, 1.7, 0.5, 1.0], [0.0, 1.5, 0.0, 3.0]


@pytest.mark.parametrize("grid, n_cond", [([4, 4], 0), ([2, 2, 4], 8)], ids=["image", "video-frame-prediction"])
@pytest.mark.parametrize("cache", ["none", "on_switch", "every:2+cls"])
def test_a_row_among_others_with_other_temperature_and_guidance_decodes_as_alone(small_model_cfg, grid, n_cond,
                                                                                 cache):
    import dataclasses
    torch.manual_seed(0)
    model = NestedTransformer(dataclasses.replace(small_model_cfg, grid=grid)).eval()
    with torch.no_grad():   # weights large enough for guidance and class to change the samples
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.3)
        model.head_bias.add_(torch.randn(model.head_bias.shape))
    d = DecodeConfig(schedule="8x3,4x3,2x3,1x3", steps=12, cache=cache)
    labels, seeds = torch.tensor([0, 1, 2, 1]), [3, 4, 5, 6]
    cond = torch.randint(0, model.cfg.vocab_size, (4, n_cond)) if n_cond else None
    rows = []
    h = model.blocks[0].register_forward_pre_hook(lambda mod, args: rows.append(args[0].shape[0]))
    try:
        mixed = decode(model, labels, d, seeds=seeds, cond=cond, temperature=ROW_TEMPS,
                       guidance_scale=ROW_GUIDANCE)
    finally:
        h.remove()
    assert mixed.guided and set(rows) == {4 + 2}      # one decode; only the 2 guided rows run twice
    for i in range(4):
        alone = decode(model, labels[i:i + 1], dataclasses.replace(d, temperature=ROW_TEMPS[i],
                                                                   guidance_scale=ROW_GUIDANCE[i]),
                       seeds=seeds[i:i + 1], cond=None if cond is None else cond[i:i + 1])
        assert torch.equal(mixed.tokens[i], alone.tokens[0]), i
    # the settings take effect: at the config's own settings for every row, the tokens differ
    plain = decode(model, labels, d, seeds=seeds, cond=cond).tokens
    assert torch.equal(plain[0], mixed.tokens[0])
    assert all(not torch.equal(plain[i], mixed.tokens[i]) for i in (1, 2, 3))


def test_per_row_settings_are_checked(model):
    d = DecodeConfig(schedule="1x4", steps=4)
    with pytest.raises(ValueError, match="got 1 temperatures for 2 samples"):
        decode(model, torch.tensor([0, 1]), d, temperature=[1.0])
    with pytest.raises(ValueError, match="temperatures must be > 0"):
        decode(model, torch.tensor([0, 1]), d, temperature=[1.0, 0.0])
