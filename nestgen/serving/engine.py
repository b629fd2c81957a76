"""One replica's generator: the checkpoint and its tokenizer, loaded once, answering batches.

`Engine` is what a Ray Serve replica holds (pipelines/serve/app.py), and it works the same in a
plain process: resolve() turns a request into a Job (or a RequestError). Then, by
serve.batching:
- step: submit() queues the Job on the replica's StepLoop (nestgen.serving.step_loop), where
  its rows join the running set at the next step boundary, and respond() encodes its result;
- request: run() decodes one Serve batch of Jobs, grouped by the decode settings a forward
  pass shares (temperature and guidance scale are per row, so they never split a batch).
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from dataclasses import replace
from typing import Callable

import torch

from nestgen.checkpoint import model_from_checkpoint, read_checkpoint
from nestgen.checkpoint_files import checkpoint_file
from nestgen.configschema import to_dict
from nestgen.decoding.config import DecodeConfig
from nestgen.decoding.schedule import presets_for
from nestgen.decoding.step_decoder import StepDecoder
from nestgen.decoding.worker import DecodeWorker
from nestgen.device import resolve_device
from nestgen.flops import decode_flops
from nestgen.serving.auto import LatencyFeedback, LatencyModel, calibrate, choose_preset
from nestgen.serving.conditioning import condition_tokens
from nestgen.serving.config import EngineConfig
from nestgen.serving.encode import encode_sample
from nestgen.serving.job import Job, group_jobs, row_slices, rows_of
from nestgen.serving.step_loop import LoopMetrics, StepEvent, StepLoop, StepResult
from nestgen.serving.request import FAILED, DecodeFailed, GenerateRequest, RequestError  # noqa: F401 - FAILED: part of this module's API
from nestgen.serving.resolve import ModelSpec, resolve_request

log = logging.getLogger(__name__)


def _load_tokenizer(cfg: EngineConfig, model_cfg, ckpt: dict, device, resolve_uri):
    """(tokenizer or None, its URL): the configured one, else the one that made the
    checkpoint's training shards. A tokenizer whose hash differs from the one the model was
    trained on is refused: its ids would mean other pixels."""
    from nestgen.tokenizers import load_tokenizer, resolve_tokenizer_url
    expected = ckpt.get("tokenizer_hash")
    if cfg.tokenizer:
        tok = load_tokenizer(resolve_tokenizer_url(cfg.tokenizer, resolve_uri), device)
        if expected and tok.hash != expected:
            raise ValueError(f"serve.tokenizer {cfg.tokenizer} has hash {tok.hash}, but the "
                             f"checkpoint was trained on tokens of tokenizer {expected}")
        return tok, cfg.tokenizer
    if model_cfg.data.source == "shards":
        from nestgen.data.shards import read_manifest, shard_tokenizer
        return shard_tokenizer(model_cfg.data.url, expected, device), read_manifest(model_cfg.data.url)["tokenizer"]["url"]
    return None, ""


def _formats(model_cfg, tokenizer) -> tuple[str, ...]:
    """Formats this model can answer in, the default first."""
    from nestgen.data.digits import DIGITS_GRID, DIGITS_VOCAB
    video = model_cfg.model.is_video
    raw_digits = (tokenizer is None and model_cfg.data.source == "digits" and not video
                  and model_cfg.model.vocab_size == DIGITS_VOCAB and list(model_cfg.model.grid) == list(DIGITS_GRID))
    if tokenizer is None and not raw_digits:
        return ("tokens",)
    return ("mp4", "png", "tokens") if video else ("png", "tokens")


MAX_STEPS_FACTOR = 4      # serve.max_steps = 0: a request may take 4x the checkpoint's steps
class Engine:
    def __init__(self, cfg: EngineConfig, device: str | None = None,
                 resolve_uri: Callable[[str], str] | None = None, metrics: LoopMetrics | None = None):
        """`resolve_uri`: for checkpoint and tokenizer names that are not storage URLs
        (runs:/, models:/), see nestgen.checkpoint_files.checkpoint_file. `metrics`: where the step
        loop reports (batching step). The loop's thread is started by start_loop()."""
        self.cfg = cfg
        self.device = resolve_device(device or cfg.device)
        self.checkpoint_url = checkpoint_file(cfg.checkpoint, resolve_uri)
        ckpt = read_checkpoint(self.checkpoint_url)
        self.model, self.model_cfg = model_from_checkpoint(ckpt, self.device)
        self.tokenizer, self.tokenizer_url = _load_tokenizer(cfg, self.model_cfg, ckpt, self.device, resolve_uri)
        # Eager decoding: a replica's batch sizes vary with the traffic, and a CUDA graph is
        # captured per batch size.
        self.worker = DecodeWorker(self.model, self.model_cfg.model.grid, self.tokenizer)
        self.tokenizer_hash = ckpt.get("tokenizer_hash")
        if self.tokenizer is not None and not self.tokenizer_hash:
            self.tokenizer_hash = self.tokenizer.hash
        m = self.model_cfg
        self.spec = ModelSpec(model=m.model, decode=m.decode, cond_tokens=m.train.cond_tokens,
                              formats=_formats(m, self.tokenizer), max_samples=cfg.max_samples_per_request,
                              max_steps=cfg.max_steps or MAX_STEPS_FACTOR * m.decode.steps)
        self.presets = presets_for(m.model.nest_factors)
        self.auto_presets = [p for p in cfg.auto_presets if p in self.presets]
        self.queue_rows = 0     # rows admitted and not yet answered (the replica's queue depth)
        self.decoding_since: float | None = None   # monotonic start of the decode in flight
        self.feedback = LatencyFeedback()
        self.latency: LatencyModel | None = None
        # The rows decoded together: a Serve batch, or the step loop's running set (a whole
        # decode of that many rows gives auto its speed until the loop has measured its own).
        self.batch_rows = cfg.max_active_rows if cfg.batching == "step" else cfg.max_batch_size
        calibrated_gflops_per_s = None
        if self.auto_presets:
            self.latency = calibrate(self.auto_presets, self._time_preset, self.batch_rows)
            best = self.auto_presets[0]
            calibrated_gflops_per_s = (self.batch_rows * decode_flops(m.model, self._decode_cfg(best)).gflops
                                       / self.latency.batch_seconds(best, self.batch_rows))
        self.loop = StepLoop(StepDecoder(self.model), cfg.max_active_rows, cfg.max_queued_rows,
                             cfg.decode_deadline_s, cfg.retry_after_s, metrics,
                             gflops_per_s=calibrated_gflops_per_s) if cfg.batching == "step" else None

    # ---- requests -> jobs
    def _decode_cfg(self, preset: str) -> DecodeConfig:
        s = self.presets[preset]
        return replace(self.model_cfg.decode, schedule=str(s), steps=s.steps)

    def _time_preset(self, preset: str, rows: int) -> float:
        return self.worker.run(self._decode_cfg(preset), torch.zeros(rows, dtype=torch.long), range(rows)).seconds

    def admit(self, rows: int) -> float:
        """Count a request's rows into the queue depth from its arrival (conditioning work
        included); returns its admission time. Pair with finish() in a `finally`."""
        self.queue_rows += rows
        return time.perf_counter()

    def finish(self, rows: int, admitted: float, job: Job | None = None) -> None:
        self.queue_rows -= rows
        if job is not None and job.auto:
            self.feedback.observe(job.auto["model_latency_s"], time.perf_counter() - admitted)

    def decode_age_s(self) -> float:
        """Seconds the decode (batching request) or step (batching step) in flight has run (0
        when idle): how a stuck replica shows."""
        if self.loop is not None:
            return self.loop.tick_age_s()
        since = self.decoding_since
        return 0.0 if since is None else time.monotonic() - since

    def resolve(self, req: GenerateRequest, admitted_rows: int = 0) -> Job:
        """The validated Job for `req`; RequestError (with its HTTP status) when refused.
        Tokenizes the conditioning clip, if any: call it off the event loop.
        `admitted_rows`: the request's own rows already in queue_rows (not queue ahead of it)."""
        def choose_auto(rows: int) -> tuple[str, dict]:
            queue = self.queue_rows - admitted_rows
            if self.loop is None:
                return choose_preset(self.auto_presets, lambda p: self.latency.expected_latency(p, queue, rows),
                                     self.cfg.auto_latency_target_s, self.feedback.ratio, queue_rows=queue)
            pending, speed = self.loop.pending_gflops(), self.loop.gflops_per_s
            guidance = self.spec.decode.guidance_scale if req.guidance_scale is None else req.guidance_scale
            gflops = {p: decode_flops(self.spec.model, replace(self._decode_cfg(p), guidance_scale=guidance)).gflops
                      for p in self.auto_presets}
            return choose_preset(self.auto_presets, lambda p: (pending + rows * gflops[p]) / speed,
                                 self.cfg.auto_latency_target_s, self.feedback.ratio, queue_rows=queue,
                                 pending_gflops=round(pending, 3), gflops_per_s=round(speed, 3))
        job = resolve_request(req, self.spec, choose_auto if self.latency else None)
        if req.condition is not None:
            if self.tokenizer is None:
                raise RequestError("condition: this model has no tokenizer to encode frames with")
            ids = condition_tokens(req.condition, self.tokenizer, self.spec.cond_tokens, list(self.spec.model.grid),
                                   self.cfg.condition_limits())
            job.cond = ids.expand(job.rows, -1)
        return job

    # ---- batching step
    def start_loop(self):
        """Start the step loop's thread (batching step); returns the event that stops it."""
        return self.loop.start()

    def submit(self, job: Job, on_step: Callable[[StepEvent], None] | None = None) -> Future:
        """Queue `job` on the step loop: a Future of its StepResult (cancel it to drop the
        job); a 503 RequestError when the queue is full. `on_step` is called in the loop's
        thread after each of its steps."""
        return self.loop.submit(job, on_step)

    def respond(self, job: Job, result: StepResult) -> dict:
        """The response to a job the step loop finished (renders pixels: off the event loop)."""
        pixels = self.worker.render(result.tokens) if job.format != "tokens" else None
        return self._response(job, result.tokens, pixels) | {
            "batching": "step", "batch_size": result.peak_rows, "batch_requests": result.peak_requests,
            "batch_rows": result.peak_rows, "decode_seconds": result.decode_s,
            "queue_wait_seconds": result.queue_wait_s}

    # ---- batching request: one Serve batch
    def run(self, jobs: list[Job]) -> list[dict | Exception]:
        """Responses in the order of `jobs` (a DecodeFailed for a group whose decode failed,
        so that one failure never takes the other requests of the batch with it)."""
        out: list[dict | Exception] = [DecodeFailed()] * len(jobs)
        for idxs in group_jobs(jobs):
            self.decoding_since = time.monotonic()
            try:
                for i, resp in zip(idxs, self._run_group([jobs[i] for i in idxs])):
                    out[i] = resp | {"batch_requests": len(jobs), "batch_rows": rows_of(jobs)}
            except Exception:     # noqa: BLE001 - reported to those requests, replica lives on
                log.exception("decode of %d request(s) with %s failed", len(idxs), jobs[idxs[0]].decode)
            finally:
                self.decoding_since = None
        return out

    def _run_group(self, jobs: list[Job]) -> list[dict]:
        labels = torch.tensor([lab for j in jobs for lab in j.labels])
        seeds = [s for j in jobs for s in j.seeds]
        cond = None if jobs[0].cond is None else torch.cat([j.cond for j in jobs])
        batch = self.worker.run(jobs[0].decode, labels, seeds, cond, render=any(j.format != "tokens" for j in jobs),
                                temperature=[j.decode.temperature for j in jobs for _ in j.labels],
                                guidance_scale=[j.decode.guidance_scale for j in jobs for _ in j.labels])
        tokens, pixels, seconds = batch.tokens, batch.pixels, batch.seconds
        return [self._response(job, tokens[rows], None if pixels is None else pixels[rows])
                | {"batching": "request", "batch_size": len(labels), "decode_seconds": seconds}
                for job, rows in zip(jobs, row_slices(jobs))]

    def _response(self, job: Job, tokens: torch.Tensor, pixels) -> dict:
        """The response body for `job`'s decoded rows (tokens (rows, N), pixels or None),
        without how it was batched (the caller adds that)."""
        d = job.decode
        gflops = decode_flops(self.spec.model, d, 0 if job.cond is None else job.cond.shape[1]).gflops
        samples = [{"seed": seed, **encode_sample(job.format, tokens[i], None if pixels is None else pixels[i],
                                                 self.spec.kind == "video", self.cfg.video_fps)}
                   for i, seed in enumerate(job.seeds)]
        return {"samples": samples, "format": job.format, "class_label": job.labels[0],
                "schedule": d.schedule, "schedule_name": job.schedule_name, "steps": d.steps, "cache": d.cache,
                "guidance_scale": d.guidance_scale, "temperature": d.temperature,
                "gflops_per_sample": gflops, "gflops": gflops * job.rows,
                **({"auto": job.auto} if job.auto else {})}

    # ---- read-only endpoints
    def info(self) -> dict:
        return {
            "checkpoint": self.checkpoint_url, "kind": self.spec.kind, "formats": list(self.spec.formats),
            "device": str(self.device), "params": self.model.num_params(),
            "tokenizer": {"url": self.tokenizer_url, "hash": self.tokenizer_hash} if self.tokenizer else None,
            "cond_tokens": self.spec.cond_tokens, "num_classes": self.spec.model.num_classes,
            "config": {k: to_dict(getattr(self.model_cfg, k)) for k in ("model", "decode")} | {"name": self.model_cfg.name},
            "limits": {k: getattr(self.cfg, k) for k in ("batching", "max_active_rows", "max_queued_rows",
                                                        "max_samples_per_request", "max_batch_size",
                                                        "decode_deadline_s", "max_condition_pixels",
                                                        "max_condition_frames", "max_condition_seconds")}
            | {"max_steps": self.spec.max_steps},
        }

    def schedules(self) -> dict:
        rows = []
        for name, s in self.presets.items():
            d = self._decode_cfg(name)
            entry = {"name": name, "schedule": str(s), "steps": s.steps, "cache": d.cache,
                     "gflops_per_sample": decode_flops(self.spec.model, d).gflops,
                     "gflops_per_sample_no_cache": decode_flops(self.spec.model, replace(d, cache="none")).gflops}
            if self.latency and name in self.auto_presets:
                entry["seconds_per_batch_of_1"] = self.latency.batch_seconds(name, 1)
                entry["seconds_per_full_batch"] = self.latency.batch_seconds(name, self.batch_rows)
            rows.append(entry)
        return {"default": self.model_cfg.decode.schedule, "presets": rows,
                "auto": {"presets_best_first": self.auto_presets, "target_s": self.cfg.auto_latency_target_s}
                if self.latency else None}
