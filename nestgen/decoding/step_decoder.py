"""Step-level decoding: rows of any schedules, cache policies, settings and progress advance
one MaskGIT step at a time, sharing forward passes (issue 23).

A `Row` is one sample's decode in progress: its own plan (schedule x cache policy x grid),
step index, tokens, still-masked positions and KV cache (one per lane: the conditional pass,
and the unconditional one when the row is guided), refreshed as its own plan says.
`StepDecoder.advance(rows)` runs every row's next step:

- forward: rows are grouped by what their step runs, (nest factor, full pass or cached,
  `+cls` queries), never by request, schedule or progress. Rows differ in how many tokens
  are still masked; each row's query list (cached steps) and head positions are padded to
  its pass's longest with copies of its own first active position, which recompute exactly
  that position's K/V (the same input gives the same values, so the duplicate scatter into
  the cache is harmless), and the padding's logits are dropped. Padding is real work: in a
  steady running set a cached group holds rows at every stage of their decodes (60 active
  tokens next to 4), and one pass padded to the longest cost 1.5x the FLOPs the rows need
  (measured: 32 staggered rows of the serving mix, width 256, one CPU thread). So a cached
  group is split by active length where a pass's fixed cost is less than the padding it
  saves (`_split`: an exact partition of the rows sorted by length, its cost model timed on
  the device when the decoder is made).
- sampling: rows at the same step of the same K (and sampler schedules) share one call of
  maskgit.sample_step, the function the whole-decode path runs too; every op in it is per
  row, and each row's noise is a function of its own seed, step and positions.

So a row's tokens are what `maskgit.decode` gives it alone, as long as every op rounds a row
the same whatever the batch and padding around it. On the CPU that holds for the matmuls, and
for attention once a cached pass's query count is a multiple of 8 (the model pads it:
nestgen.model.nested_transformer.QUERY_ALIGN); tests/test_step_loop.py checks token equality,
and across 400 rows of mixed schedules, caches and settings (width 256, depth 4, vocabulary
11 and 1024, images and frame prediction) none differed. Other kernels (GPU attention, bf16)
may round by batch shape; a flip then needs two candidates tied to within that rounding.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from nestgen.decoding.config import DecodeConfig
from nestgen.decoding.maskgit import row_settings, sample_step
from nestgen.decoding.plan import PreparedDecode, StepPlan, prepare_decode
from nestgen.flops import forward_flops, plan_flops
from nestgen.model.nested_transformer import KVCache, NestedTransformer


@dataclass(frozen=True)
class LaneCache:
    """One lane's KV cache: row `index` of a forward group's per-layer (lanes, heads, 1+N, hd)
    K/V. While the same lanes meet again in the same order (a steady running set), the next
    cached pass updates those tensors in place instead of gathering the rows into new ones."""
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    index: int


@dataclass
class Row:
    """One sample's decode in progress (create with StepDecoder.new_row)."""
    label: int
    seed: int
    cfg: DecodeConfig                 # its own: schedule, cache policy, temperature, guidance scale
    prep: PreparedDecode
    tokens: torch.Tensor              # (N,) mask id where still masked
    unknown: torch.Tensor             # (n_unknown,) still-masked positions, in the row's own order
    fixed_prev: torch.Tensor | None = None   # positions fixed by the previous step (cached steps query them)
    step: int = 0                     # the next step to run
    # per lane (conditional, then unconditional when guided): where its K/V live
    caches: list[LaneCache] = field(default_factory=list)
    step_gflops: list[float] = field(default_factory=list)   # its plan's GFLOPs, step by step

    @property
    def remaining_gflops(self) -> float:
        return sum(self.step_gflops[self.step:])

    @property
    def guided(self) -> bool:
        return self.cfg.guidance_scale > 0

    @property
    def steps(self) -> int:
        return len(self.prep.plan)

    @property
    def done(self) -> bool:
        return self.step >= self.steps

    @property
    def plan(self) -> StepPlan:
        return self.prep.plan[self.step]

    def forward_key(self) -> tuple:
        """Rows with equal keys share a forward pass: what their next step runs."""
        p = self.plan
        return (p.factor, p.full_pass, not p.full_pass and self.prep.policy.fresh_context)

    def sample_key(self) -> tuple:
        """Rows with equal keys share a sampling call: the same step of the same K, the same
        number of still-masked tokens, and the same (checkpoint-wide) sampler schedules."""
        c = self.cfg
        return (self.step, self.steps, self.unknown.shape[0], c.temperature_schedule, c.guidance_schedule,
                c.choice_temperature)


def _pad(x: torch.Tensor, n: int) -> torch.Tensor:
    """x (m,) to length n with copies of x[0] (see the module docstring)."""
    return x if x.shape[0] == n else torch.cat([x, x[:1].expand(n - x.shape[0])])


class StepDecoder:
    """The model, and one step of any set of rows. Not thread-safe: one loop drives it."""

    def __init__(self, model: NestedTransformer, pass_overhead_flops: float | None = None):
        """`pass_overhead_flops`: a forward pass's fixed cost (launches, Python), in the FLOPs
        the device runs in that time; what decides whether a cached group is split by active
        length (0: a pass per distinct length, inf: one pass per group). None: timed here."""
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.pass_overhead_flops = self._time_pass_overhead() if pass_overhead_flops is None else pass_overhead_flops

    def new_row(self, cfg: DecodeConfig, label: int, seed: int, cond: torch.Tensor | None = None) -> Row:
        """A row at step 0: all tokens masked but the `cond` (n_cond,) leading ones."""
        n_cond = 0 if cond is None else cond.shape[0]
        n = self.model.cfg.num_tokens
        tokens = torch.full((n,), self.model.cfg.mask_id, dtype=torch.long, device=self.device)
        if cond is not None:
            tokens[:n_cond] = cond.to(self.device)
        # The plan is K small records: made per row (no cache that clients' schedules could grow).
        prep = prepare_decode(self.model.cfg, cfg, n_cond)
        return Row(label, seed, cfg, prep, tokens, torch.arange(n_cond, n, device=self.device),
                   step_gflops=[f / 1e9 for _, f in plan_flops(self.model.cfg, prep, cfg.guidance_scale > 0).steps])

    @torch.no_grad()
    def advance(self, rows: list[Row]) -> list[tuple[tuple, int]]:
        """Run the next step of every row (none may be done). Returns the forward passes run:
        (forward_key, lanes) each, for metrics."""
        groups: dict[tuple, list[Row]] = {}
        for r in rows:
            groups.setdefault(r.forward_key(), []).append(r)
        logits: dict[int, list[torch.Tensor]] = {}    # id(row) -> per-lane (n_unknown, V)
        passes = []
        for key, group in groups.items():
            lanes = [(r, 0) for r in group] + [(r, 1) for r in group if r.guided]
            for part in ([lanes] if key[1] else self._split(key, lanes)):
                for (r, lane), out in zip(part, self._forward(key, part)):
                    logits.setdefault(id(r), []).append(out)
                passes.append((key, len(part)))
        samples: dict[tuple, list[Row]] = {}
        for r in rows:
            samples.setdefault(r.sample_key(), []).append(r)
        for group in samples.values():
            self._sample(group, logits)
        return passes

    def _split(self, key: tuple, lanes: list[tuple[Row, int]]) -> list[list[tuple[Row, int]]]:
        """A cached group's lanes in passes of similar active length: the partition of the
        lanes, sorted by length, of least modelled cost, sum over passes of (overhead + lanes
        x the FLOPs of a lane padded to the pass's longest). Only runs of equal length need be
        considered as boundaries (a pass that ends inside a run does no better moving that run's
        rest into it), so this is a small dynamic programme over the distinct lengths."""
        factor, _, fresh = key
        m = self.model.cfg
        width = {id(r): r.unknown.shape[0] + r.fixed_prev.shape[0] + (r.prep.n_cond if fresh else 0)
                 for r, _ in lanes}
        lanes = sorted(lanes, key=lambda lane: -width[id(lane[0])])
        lengths = [width[id(r)] for r, _ in lanes]
        starts = [i for i, w in enumerate(lengths) if i == 0 or w != lengths[i - 1]] + [len(lanes)]
        if len(starts) <= 2:
            return [lanes]
        kv = 1 + m.num_tokens
        per_lane = [forward_flops(m, factor, lengths[i], kv, r.unknown.shape[0], cached=True)
                    for i, (r, _) in ((i, lanes[i]) for i in starts[:-1])]
        # best[b]: least cost of the lanes before run boundary b; cut[b]: where its last pass starts
        best, cut = [0.0] + [float("inf")] * (len(starts) - 1), [0] * len(starts)
        for b in range(1, len(starts)):
            for a in range(b):
                cost = best[a] + self.pass_overhead_flops + (starts[b] - starts[a]) * per_lane[a]
                if cost < best[b]:
                    best[b], cut[b] = cost, a
        parts, b = [], len(starts) - 1
        while b > 0:
            parts.append(lanes[starts[cut[b]]:starts[b]])
            b = cut[b]
        return parts[::-1]

    def _time_pass_overhead(self, repeats: int = 3) -> float:
        """The fixed cost of a forward pass in FLOPs of this device: from the fastest of
        `repeats` full passes of 1 row at the smallest width and of 8 rows at the full width,
        t = overhead + FLOPs x seconds per FLOP."""
        m = self.model.cfg
        n, kv = m.num_tokens, 1 + m.num_tokens

        def seconds(factor: int, rows: int) -> float:
            tokens = torch.zeros(rows, n, dtype=torch.long, device=self.device)
            labels = torch.zeros(rows, dtype=torch.long, device=self.device)
            best = float("inf")
            for _ in range(repeats + 1):        # the first one warms up
                t0 = time.perf_counter()
                self.model(tokens, labels, factor).sum().item()     # .item(): waits for the device
                best = min(best, time.perf_counter() - t0)
            return best

        small, big = max(m.nest_factors), min(m.nest_factors)
        f_small, f_big = (forward_flops(m, small, kv, kv, n), 8 * forward_flops(m, big, kv, kv, n))
        with torch.no_grad():
            t_small, t_big = seconds(small, 1), seconds(big, 8)
        if t_big <= t_small:        # no measurable per-FLOP cost: never worth a second pass
            return float("inf")
        per_flop = (t_big - t_small) / (f_big - f_small)
        return max(0.0, t_small - f_small * per_flop) / per_flop

    def _forward(self, key: tuple, lanes: list[tuple[Row, int]]) -> list[torch.Tensor]:
        """One forward pass over `lanes` ((row, lane) each) -> each lane's logits at its row's
        still-masked positions."""
        factor, full_pass, fresh = key
        m = self.model
        tok_in = torch.stack([r.tokens for r, _ in lanes])
        labels = torch.tensor([r.label if lane == 0 else m.cfg.null_class for r, lane in lanes], device=self.device)
        n_u = [r.unknown.shape[0] for r, _ in lanes]
        n_head = max(n_u)
        keep = [r.prep.policy.enabled for r, _ in lanes]
        if full_pass:
            cache = KVCache() if any(keep) else None
            heads = torch.stack([_pad(r.unknown, n_head) for r, _ in lanes])
            out = m(tok_in, labels, factor, cache=cache, head_positions=heads)
        else:
            active = [torch.cat([r.unknown, r.fixed_prev]
                                + ([torch.arange(r.prep.n_cond, device=self.device)] if fresh else []))
                      for r, _ in lanes]
            width = max(a.shape[0] for a in active)
            cache = self._gather_cache(factor, [r.caches[lane] for r, lane in lanes])
            out = m.forward_active(tok_in, torch.stack([_pad(a, width) for a in active]), factor, cache,
                                   n_head=n_head, labels=labels if fresh else None)
        if cache is not None:
            for j, (r, lane) in enumerate(lanes):
                if keep[j]:
                    lc = LaneCache(cache.keys, cache.values, j)
                    if len(r.caches) <= lane:
                        r.caches.append(lc)
                    else:
                        r.caches[lane] = lc
        return [out[j, :n] for j, n in enumerate(n_u)]

    @staticmethod
    def _gather_cache(factor: int, lanes: list[LaneCache]) -> KVCache:
        """The lanes' K/V as one batch: their own tensors when they are exactly its rows, in
        order; else a copy of their rows."""
        base = lanes[0]
        if base.keys[0].shape[0] == len(lanes) and all(
                lc.keys is base.keys and lc.index == j for j, lc in enumerate(lanes)):
            return KVCache(factor, base.keys, base.values)
        return KVCache(factor, [torch.stack([lc.keys[i][lc.index] for lc in lanes]) for i in range(len(base.keys))],
                       [torch.stack([lc.values[i][lc.index] for lc in lanes]) for i in range(len(base.keys))])

    def _sample(self, group: list[Row], logits: dict[int, list[torch.Tensor]]) -> None:
        """maskgit.sample_step over rows at the same step of the same plan shape."""
        r0 = group[0]
        settings = row_settings(r0.cfg, len(group), self.device, [r.cfg.temperature for r in group],
                                [r.cfg.guidance_scale for r in group])
        lg = torch.stack([logits[id(r)][0] for r in group]
                         + [logits[id(r)][1] for r in group if r.guided])
        tokens = torch.stack([r.tokens for r in group])
        seeds = torch.tensor([r.seed for r in group], dtype=torch.long, device=self.device)
        p = r0.plan
        unknown, fixed = sample_step(lg, tokens, torch.stack([r.unknown for r in group]), seeds, settings, r0.cfg,
                                     p.step, r0.steps, p.n_fixed)
        for i, r in enumerate(group):
            r.tokens, r.unknown, r.fixed_prev = tokens[i], unknown[i], fixed[i]
            r.step += 1
