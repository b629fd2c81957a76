"""A decode worker: one generator (and its tokenizer) loaded once, decoding batches of
requests and timing them. What an evaluation actor and a serving replica each hold.

Timing is decode only (rendering pixels excluded) and synchronised with the GPU, so it
measures the decode and not the launch queue. On CUDA the worker can replay whole-decode
CUDA graphs (nestgen.decoding.cuda_graph) instead of launching every kernel. With
`warm_up`, the first decode of each shape (decode config, rows, guided rows, conditioning
length) runs once untimed before the timed one: one-time costs (allocator, kernels, graph
capture) never count in the measured seconds. Tokens depend only on each row's label,
seed, conditioning, temperature and guidance scale (nestgen.decoding.maskgit), never on
the worker, the batch or the graphs.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from nestgen.decoding.config import DecodeConfig
from nestgen.decoding.cuda_graph import GraphedDecoder
from nestgen.decoding.maskgit import decode, row_settings, shared_settings
from nestgen.decoding.plan import PreparedDecode


@dataclass
class DecodedBatch:
    tokens: torch.Tensor          # (n, L) on the CPU
    pixels: np.ndarray | None     # uint8 images / clips when rendered
    seconds: float                # decode wall time (synchronised on CUDA)


class DecodeWorker:
    def __init__(self, model, grid: Sequence[int], tokenizer=None, *, cuda_graphs: bool = False,
                 warm_up: bool = False, precision: str = "fp32", max_graphs: int = 4):
        self.model, self.grid, self.tokenizer = model, list(grid), tokenizer
        self.device = next(model.parameters()).device
        self.bf16 = precision == "bf16"          # eager: bf16 autocast on the model's device
        # Each graph keeps its own activation memory; batches of one decode config come one
        # after another (full batches, then the last), so a few graphs are enough.
        self.graphs = (GraphedDecoder(model, precision, max_graphs)
                       if cuda_graphs and self.device.type == "cuda" else None)
        self.warm_up = warm_up
        self._warm: set[tuple] = set()

    def render(self, tokens: torch.Tensor) -> np.ndarray:
        from nestgen.render import tokens_to_pixels
        return tokens_to_pixels(tokens, self.grid, self.tokenizer)

    @torch.no_grad()
    def run(self, cfg: DecodeConfig, labels: torch.Tensor, seeds: Sequence[int],
            cond: torch.Tensor | None = None, render: bool = False,
            temperature: Sequence[float] | None = None,
            guidance_scale: Sequence[float] | None = None, prep: PreparedDecode | None = None) -> DecodedBatch:
        """Decode len(labels) samples (sample i: labels[i], seeds[i], cond[i], temperature[i],
        guidance_scale[i]; None: cfg's value for every row); pixels when `render`. `prep`: cfg's
        decode as the caller prepared it (nestgen.decoding.maskgit.decode)."""
        seeds = list(seeds)
        if self.warm_up:
            self._warm_up(cfg, len(seeds), 0 if cond is None else cond.shape[1], temperature, guidance_scale, prep)
        self._sync()
        t0 = time.perf_counter()
        tokens = self._decode(cfg, labels, seeds, cond, temperature, guidance_scale, prep)
        self._sync()
        seconds = time.perf_counter() - t0
        tokens = tokens.cpu()
        return DecodedBatch(tokens, self.render(tokens) if render else None, seconds)

    def _decode(self, cfg: DecodeConfig, labels, seeds, cond, temperature=None, guidance_scale=None,
                prep: PreparedDecode | None = None) -> torch.Tensor:
        if self.graphs is not None:
            return self.graphs(labels, cfg, seeds, cond, temperature, guidance_scale, prep)
        with torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext():
            return decode(self.model, labels, cfg, seeds=seeds, cond=cond, temperature=temperature,
                          guidance_scale=guidance_scale, prep=prep).tokens

    def _warm_up(self, cfg: DecodeConfig, rows: int, n_cond: int, temperature, guidance_scale,
                 prep: PreparedDecode | None) -> None:
        if self.graphs is not None:
            # A graph is captured per shape (batch size, guided rows, unit temperatures): its
            # warm-up is the real one (and is needed again if the graph was evicted).
            if self.graphs.captured(rows, cfg, n_cond, temperature, guidance_scale):
                return
        else:
            # Eager kernels do not depend on the batch size or on the values of the per-row
            # settings, only on which code runs: two rows, as many guided (up to two) and at a
            # temperature other than 1 if any row is, warm a shape up.
            settings = row_settings(cfg, rows, "cpu", temperature, guidance_scale)
            key = (shared_settings(cfg), n_cond, settings.n_guided > 0, settings.unit_temperature)
            if key in self._warm:
                return
            self._warm.add(key)
            rows, guided = min(rows, 2), min(settings.n_guided, 2)
            temperature = None if settings.unit_temperature else [0.5] * rows
            guidance_scale = [1.0] * guided + [0.0] * (rows - guided)
        cond = torch.zeros(rows, n_cond, dtype=torch.long) if n_cond else None
        self._decode(cfg, torch.zeros(rows, dtype=torch.long), list(range(rows)), cond, temperature, guidance_scale,
                     prep)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
