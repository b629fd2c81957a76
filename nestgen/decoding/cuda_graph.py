"""Whole-decode CUDA graphs: capture the K steps once, replay them per batch.

Eager decoding on a GPU is bound by per-op launch overhead (thousands of small kernels
per decode), which hides exactly the savings MaGNeTS is about: a D/8 sub-model launches
as many kernels as the full one. Because the decode loop has static shapes for a given
(batch size, guided rows, schedule, cache policy, conditioning length) and never syncs
with the host (nestgen.decoding.maskgit.decode_loop), the whole loop is captured as one
graph and replayed with new labels, seeds, conditioning and per-row settings (temperatures,
which rows are guided and how strongly) copied into its input buffers.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch

from nestgen.decoding.config import DecodeConfig
from nestgen.decoding.maskgit import RowSettings, decode, decode_loop, row_settings, seed_tensor, shared_settings
from nestgen.decoding.plan import PreparedDecode, prepare_decode
from nestgen.model.nested_transformer import NestedTransformer


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    labels: torch.Tensor
    seeds: torch.Tensor
    cond: torch.Tensor | None
    rows: RowSettings
    out: torch.Tensor


class GraphedDecoder:
    """`decoder(labels, cfg, seeds, cond, temperature, guidance_scale)` -> tokens; CUDA graphs
    on GPU, eager on CPU. Per-row temperature / guidance_scale: as in maskgit.decode.

    Keeps at most `max_graphs` captured graphs (least recently used evicted); each holds
    its own activation memory. The model's weights may change in place between calls.
    """

    def __init__(self, model: NestedTransformer, precision: str = "fp32", max_graphs: int = 16):
        self.model = model.eval()
        self.precision = precision
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple, _Captured] = OrderedDict()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.precision == "bf16")

    @staticmethod
    def _key(rows: int, cfg: DecodeConfig, n_cond: int, settings: RowSettings) -> tuple:
        # The per-row values are buffers, not part of the graph: how many rows are guided and
        # whether sampling divides by the temperatures are.
        return rows, settings.n_guided, settings.unit_temperature, n_cond, shared_settings(cfg)

    def captured(self, rows: int, cfg: DecodeConfig, n_cond: int = 0, temperature: Sequence[float] | None = None,
                 guidance_scale: Sequence[float] | None = None) -> bool:
        """Whether a graph for this shape is held (its next call replays, no capture)."""
        settings = row_settings(cfg, rows, "cpu", temperature, guidance_scale)
        return self._key(rows, cfg, n_cond, settings) in self._graphs

    @torch.no_grad()
    def __call__(self, labels: torch.Tensor, cfg: DecodeConfig, seeds: Sequence[int] | None = None,
                 cond: torch.Tensor | None = None, temperature: Sequence[float] | None = None,
                 guidance_scale: Sequence[float] | None = None, prep: PreparedDecode | None = None) -> torch.Tensor:
        if self.device.type != "cuda":
            return decode(self.model, labels, cfg, seeds, cond, temperature=temperature,
                          guidance_scale=guidance_scale, prep=prep).tokens
        b = labels.shape[0]
        n_cond = 0 if cond is None else cond.shape[1]
        seed_t = seed_tensor(seeds, b, self.device)
        rows = row_settings(cfg, b, self.device, temperature, guidance_scale)
        key = self._key(b, cfg, n_cond, rows)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(labels.to(self.device), seed_t, cond, cfg, rows, prep)
            self._graphs[key] = entry
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        entry.labels.copy_(labels)
        entry.seeds.copy_(seed_t)
        if cond is not None:
            entry.cond.copy_(cond)
        for name in ("temperature", "guided", "guidance"):
            getattr(entry.rows, name).copy_(getattr(rows, name))
        entry.graph.replay()
        return entry.out.clone()

    def _capture(self, labels, seeds, cond, cfg: DecodeConfig, rows: RowSettings,
                 prep: PreparedDecode | None) -> _Captured:
        prep = prep or prepare_decode(self.model.cfg, cfg, 0 if cond is None else cond.shape[1])
        labels, seeds = labels.clone(), seeds.clone()
        cond = None if cond is None else cond.to(self.device).clone()
        rows = RowSettings(rows.temperature.clone(), rows.guided.clone(), rows.guidance.clone(), rows.unit_temperature)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), self._autocast():     # warm-up: kernels, cuBLAS handles
            for _ in range(2):
                decode_loop(self.model, labels, seeds, cond, cfg, prep, rows)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), self._autocast():
            out = decode_loop(self.model, labels, seeds, cond, cfg, prep, rows)
        return _Captured(graph, labels, seeds, cond, rows, out)
