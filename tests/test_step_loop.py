"""The step-level decode loop without Ray (issue 23): requests of any schedules, cache policies,
settings and progress share forward passes and still get their solo tokens; caps, cancel,
deadline, per-step events, a failing step, and `auto` moving to cheaper schedules before the
queue refuses."""
import dataclasses
from collections import Counter
from concurrent.futures import CancelledError

import pytest
import torch

from nestgen.checkpoint import save_checkpoint
from nestgen.config import DecodeConfig, ModelConfig, config_from_dict
from nestgen.configschema import ConfigError
from nestgen.decoding.maskgit import decode
from nestgen.decoding.step_decoder import StepDecoder
from nestgen.model.nested_transformer import NestedTransformer
from nestgen.serving.engine import Engine
from nestgen.serving.job import Job
from nestgen.serving.request import DecodeFailed, GenerateRequest, RequestError
from nestgen.serving.step_loop import LoopMetrics, StepLoop
from pipelines.config import ServeConfig, run_config_from_dict


def _model(grid):
    torch.manual_seed(0)
    m = NestedTransformer(ModelConfig(vocab_size=11, grid=grid, num_classes=3, width=64, depth=2, heads=8,
                                      nest_factors=[1, 2, 4, 8])).eval()
    with torch.no_grad():   # weights large enough for class, guidance and temperature to change samples
        for p in m.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.3)
        m.head_bias.add_(torch.randn(m.head_bias.shape))
    return m


class Recorder(LoopMetrics):
    def __init__(self):
        self.forwards, self.waits = [], []

    def forward(self, factor, full_pass, lanes):
        self.forwards.append((factor, full_pass, lanes))

    def joined(self, queue_wait_s):
        self.waits.append(queue_wait_s)


def _job(schedule, cache, temperature, guidance, label, seed, rows=1, cond=None):
    steps = sum(int(item.split("x")[1]) for item in schedule.split(","))
    d = DecodeConfig(schedule=schedule, steps=steps, cache=cache, temperature=temperature, guidance_scale=guidance)
    return Job(labels=[label] * rows, seeds=[seed + i for i in range(rows)], decode=d, schedule_name="custom",
               format="tokens", cond=cond)


# (schedule, cache, temperature, guidance, rows, the tick it arrives at)
MIX = [("8x3,4x3,2x3,1x3", "on_switch", 1.0, 0.0, 2, 0), ("1x12", "none", 1.7, 1.5, 1, 0),
       ("8x4,4x4,2x2,1x2", "every:2+cls", 0.5, 0.0, 1, 2), ("2x6,1x6", "every:3", 1.0, 3.0, 2, 3),
       ("4x5,1x3", "on_switch+cls", 1.3, 0.7, 1, 5), ("8x3,4x3,2x3,1x3", "none", 1.0, 2.0, 1, 7),
       ("1x12", "on_switch", 1.0, 0.0, 1, 9)]


@pytest.mark.parametrize("grid, n_cond", [([4, 4], 0), ([2, 2, 4], 8)], ids=["image", "video-frame-prediction"])
def test_requests_joining_mid_way_among_other_schedules_get_their_solo_tokens(grid, n_cond):
    model = _model(grid)
    metrics = Recorder()
    # no cost to a pass: a cached group runs as one pass per distinct active length
    loop = StepLoop(StepDecoder(model, pass_overhead_flops=0.0), max_active_rows=64, max_queued_rows=64,
                    deadline_s=1e9, metrics=metrics)
    gen = torch.Generator().manual_seed(1)
    jobs = [_job(s, c, t, g, i % 3, 100 + 10 * i, rows,
                 torch.randint(0, 11, (1, n_cond), generator=gen).expand(rows, -1) if n_cond else None)
            for i, (s, c, t, g, rows, _) in enumerate(MIX)]
    futures, tick, split = {}, 0, False
    while len(futures) < len(jobs) or not all(f.done() for f in futures.values()):
        for i, (*_, at) in enumerate(MIX):
            if at == tick:
                futures[i] = loop.submit(jobs[i])
        n_before = len(metrics.forwards)
        loop.tick()
        ticked = metrics.forwards[n_before:]
        # one full pass per nested size in flight, whatever the requests; cached ones split by
        # active length (with or without `+cls`: two keys per size)
        full = [f[0] for f in ticked if f[1]]
        assert len(full) == len(set(full)) <= len(model.cfg.nest_factors)
        cached = Counter(f[0] for f in ticked if not f[1])
        split |= max(cached.values(), default=0) > 2
        tick += 1
    assert tick < 12 + 9 + 2 and split
    # forward passes did mix requests of different schedules: more lanes than any one request has
    assert max(lanes for *_, lanes in metrics.forwards) > 4
    for job, (i, fut) in zip(jobs, sorted(futures.items())):
        got = fut.result().tokens
        alone = decode(model, torch.tensor(job.labels), job.decode, seeds=job.seeds, cond=job.cond).tokens
        assert torch.equal(got, alone), (i, MIX[i])
    # the settings take effect: without temperature and guidance the guided request differs
    plain = decode(model, torch.tensor(jobs[1].labels), dataclasses.replace(jobs[1].decode, temperature=1.0,
                                                                            guidance_scale=0.0),
                   seeds=jobs[1].seeds, cond=jobs[1].cond).tokens
    assert not torch.equal(plain, futures[1].result().tokens)


def test_caps_queue_cancel_deadline_and_step_events():
    loop = StepLoop(StepDecoder(_model([4, 4])), max_active_rows=3, max_queued_rows=5, deadline_s=1e9,
                    retry_after_s=7)
    events = []
    a = loop.submit(_job("2x6,1x6", "on_switch", 1.0, 0.0, 0, 1, rows=2), on_step=events.append)
    b = loop.submit(_job("1x12", "none", 1.0, 0.0, 1, 5, rows=2))
    c = loop.submit(_job("1x12", "none", 1.0, 0.0, 2, 9, rows=1))
    with pytest.raises(RequestError) as full:          # 2 + 2 + 1 rows queued: one more is over the cap
        loop.submit(_job("1x12", "none", 1.0, 0.0, 2, 9, rows=1))
    assert full.value.status == 503 and full.value.retry_after_s == 7 and "serve.max_queued_rows" in full.value.reason
    loop.tick()                                         # a joins (2 rows); b (2 more) would pass 3 and waits
    assert (loop.active_rows, loop.queued_rows) == (2, 3)
    b.cancel()                                          # b's client went away while queued
    loop.tick()                                         # c joins past the dropped b
    assert (loop.active_rows, loop.queued_rows) == (3, 0) and b.cancelled()
    c.cancel()                                          # c's client went away while decoding
    loop.tick()
    assert loop.active_rows == 2
    while loop.tick():
        pass
    assert [e.step for e in events] == list(range(1, 13)) and all(e.steps == 12 for e in events)
    masked = [int(e.masked.sum()) for e in events]
    assert masked == sorted(masked, reverse=True) and masked[-1] == 0 and masked[0] < 2 * 16
    assert torch.equal(events[-1].tokens, a.result().tokens) and a.result().ticks == 12
    late = StepLoop(loop.decoder, 3, 3, deadline_s=-1.0)  # every request is past a negative deadline
    d = late.submit(_job("1x12", "none", 1.0, 0.0, 0, 1))
    late.tick()
    assert isinstance(d.exception(), RequestError) and d.exception().status == 503
    with pytest.raises(CancelledError):
        b.result()


def test_a_failing_step_fails_its_requests_and_the_loop_lives_on(monkeypatch):
    loop = StepLoop(StepDecoder(_model([4, 4])), 8, 8, deadline_s=1e9)
    first = loop.submit(_job("1x12", "none", 1.0, 0.0, 0, 1))

    def boom(rows):
        raise RuntimeError("shape mismatch in /secret/path")
    monkeypatch.setattr(loop.decoder, "advance", boom)
    loop.tick()
    assert isinstance(first.exception(), DecodeFailed) and "secret" not in str(first.exception())
    monkeypatch.undo()
    second = loop.submit(_job("1x12", "none", 1.0, 0.0, 0, 1))
    while loop.tick():
        pass
    assert second.result().tokens.shape == (1, 16)


def test_step_batching_needs_room_for_a_whole_request():
    for bad in ({"max_active_rows": 2}, {"max_queued_rows": 2}, {"retry_after_s": 0}, {"batching": "steps"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            run_config_from_dict({"serve": {"max_samples_per_request": 4, **bad}})


def test_auto_moves_to_cheaper_schedules_as_the_loop_queue_grows_before_it_refuses(tmp_path):
    torch.manual_seed(0)
    cfg = config_from_dict({"model": {"width": 32, "depth": 1}})
    ckpt = save_checkpoint(str(tmp_path / "c.pt"), cfg, NestedTransformer(cfg.model))
    engine = Engine(ServeConfig(checkpoint=ckpt, max_active_rows=4, max_queued_rows=64, max_samples_per_request=4),
                    device="cpu")
    assert engine.loop is not None and engine.batch_rows == 4
    # a target the best preset just meets on an empty replica
    engine.cfg = dataclasses.replace(engine.cfg, auto_latency_target_s=engine.latency.expected_latency("baseline", 0, 4))
    chosen, futures = [], []
    while True:
        req = GenerateRequest(schedule="auto", num_samples=4, format="tokens", seed=len(chosen))
        engine.admit(4)
        job = engine.resolve(req, 4)
        try:
            futures.append((job, engine.submit(job)))
        except RequestError as e:
            assert e.status == 503
            break
        chosen.append(job.schedule_name)
    order = engine.auto_presets
    assert chosen[0] == "baseline" and chosen[-1] == order[-1]
    assert [order.index(c) for c in chosen] == sorted(order.index(c) for c in chosen)
    for _, ahead in futures[:-1]:          # their clients go away: the last request runs alone
        ahead.cancel()
    while engine.loop.tick():
        pass
    job, fut = futures[-1]
    out = engine.respond(job, fut.result())
    assert out["schedule_name"] == chosen[-1] and out["batching"] == "step" and out["auto"]["queue_rows"] > 0
    assert out["auto"]["pending_gflops"] > 0 and out["auto"]["gflops_per_s"] > 0
    from pipelines.serve.responses import AutoChoice        # the HTTP answer carries them
    assert AutoChoice(**out["auto"]).model_dump(exclude_unset=True) == out["auto"]


def test_auto_in_the_step_loop_expects_the_work_owed_at_the_speed_the_loop_measured(tmp_path):
    """Expected latency = (pending GFLOPs + the request's) / the loop's measured GFLOPs/s: with
    work queued, the preset that fits the target at the measured speed wins; at half that
    speed none fits and the cheapest is taken."""
    from nestgen.flops import decode_flops
    torch.manual_seed(0)
    cfg = config_from_dict({"model": {"width": 32, "depth": 1}})
    ckpt = save_checkpoint(str(tmp_path / "c.pt"), cfg, NestedTransformer(cfg.model))
    engine = Engine(ServeConfig(checkpoint=ckpt, max_active_rows=4, max_queued_rows=64, max_samples_per_request=4),
                    device="cpu")
    g = {p: decode_flops(engine.spec.model, engine._decode_cfg(p)).gflops for p in engine.auto_presets}
    auto = GenerateRequest(schedule="auto", format="tokens")
    engine.loop.gflops_per_s = 10 * g["baseline"]                  # as measured: 10 baseline samples a second
    assert engine.resolve(auto).auto["model_latency_s"] == pytest.approx(0.1, abs=1e-4)
    for seed in range(2):                                          # 8 baseline rows queued
        engine.submit(engine.resolve(GenerateRequest(schedule="baseline", num_samples=4, format="tokens", seed=seed)))
    engine.cfg = dataclasses.replace(engine.cfg, auto_latency_target_s=(8 * g["baseline"] + g["magnets"])
                                     / engine.loop.gflops_per_s)
    job = engine.resolve(auto)
    assert job.schedule_name == "magnets" and job.auto["met_target"]
    assert job.auto["pending_gflops"] == pytest.approx(8 * g["baseline"], abs=1e-3)
    engine.loop.gflops_per_s /= 2                                  # the replica slowed down
    job = engine.resolve(auto)
    assert job.schedule_name == engine.auto_presets[-1] and not job.auto["met_target"]


def test_the_loop_knows_the_work_it_owes_and_the_speed_it_sustains():
    """pending_gflops is the queued decodes' and the running rows' rest, down by each tick's
    row-steps and zero when all are answered; gflops_per_s is measured from the ticks."""
    from nestgen.flops import decode_flops
    model = _model([4, 4])
    loop = StepLoop(StepDecoder(model), max_active_rows=3, max_queued_rows=16, deadline_s=300)
    jobs = [Job(labels=[1, 2], seeds=[0, 1], format="tokens", schedule_name="magnets",
                decode=DecodeConfig(schedule="8x3,4x3,2x3,1x3", cache="on_switch")),
            Job(labels=[0], seeds=[5], format="tokens", schedule_name="baseline",
                decode=DecodeConfig(schedule="1x12", cache="none", guidance_scale=2.0)),
            Job(labels=[2], seeds=[7], format="tokens", schedule_name="custom",
                decode=DecodeConfig(schedule="2x4", steps=4, cache="none"))]
    owed = [decode_flops(model.cfg, j.decode).gflops * j.rows for j in jobs]
    unguided = decode_flops(model.cfg, dataclasses.replace(jobs[1].decode, guidance_scale=0.0)).gflops
    assert owed[1] == pytest.approx(2 * unguided)          # guidance runs every step twice
    futures = [loop.submit(j) for j in jobs]
    assert loop.pending_gflops() == pytest.approx(sum(owed)) and loop.gflops_per_s is None
    before = loop.pending_gflops()
    loop.tick()                                         # the first two jobs join (3 rows), the third waits
    first_steps = sum(r.step_gflops[0] for t in loop._active for r in t.rows)
    assert loop.pending_gflops() == pytest.approx(before - first_steps)
    assert loop.gflops_per_s > 0
    while loop.tick():
        pass
    assert all(f.done() for f in futures) and loop.pending_gflops() == 0


@pytest.mark.parametrize("n", [33, 34, 65, 97])
def test_a_cached_pass_gives_a_row_the_same_logits_and_cache_whatever_its_padding(n):
    """What the step decoder relies on: a row's queries padded with copies of its first one (to
    the longest row of its pass) change none of its logits or K/V, including when its own query
    count leaves 1 or 2 queries in the attention kernel's last block."""
    from nestgen.model.nested_transformer import KVCache
    torch.manual_seed(0)
    m = NestedTransformer(ModelConfig(vocab_size=64, grid=[16, 16], num_classes=3, width=64, depth=2, heads=2,
                                      nest_factors=[1])).eval()
    tokens = torch.randint(0, 64, (1, 256))
    with torch.no_grad():
        full = KVCache()
        m(tokens, torch.tensor([1]), 1, cache=full)

        def cached(positions):
            cache = KVCache(1, [k.clone() for k in full.keys], [v.clone() for v in full.values])
            return m.forward_active(tokens, positions, 1, cache, n_head=n), cache
        pos = torch.randperm(256, generator=torch.Generator().manual_seed(n))[:n][None]
        alone, alone_cache = cached(pos)
        padded, padded_cache = cached(torch.cat([pos, pos[:, :1].expand(1, 200 - n)], 1))
    assert torch.equal(alone, padded)
    assert all(torch.equal(a, b) for a, b in zip(alone_cache.keys + alone_cache.values,
                                                 padded_cache.keys + padded_cache.values))


def test_autoscaling_targets_the_running_set_of_the_batching_in_use():
    from pipelines.serve.deployment import deployment_options
    kw = {"max_active_rows": 48, "max_batch_size": 16, "max_replicas": 3}
    assert deployment_options(ServeConfig(**kw))["autoscaling_config"]["target_ongoing_requests"] == 48
    assert deployment_options(ServeConfig(batching="request", **kw))["autoscaling_config"]["target_ongoing_requests"] == 16
