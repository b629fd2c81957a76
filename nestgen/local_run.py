"""Single-process train and sample on one machine: the quick path before Ray.

The distributed pipeline (pipelines/) reuses the same pieces: NestedTrainer, decode,
checkpoints, the tokenizer trainer; this module only wires them for `nestgen train|sample|demo`
and `nestgen tokenizer-train --local`.
"""
from __future__ import annotations

import numpy as np
import torch

from nestgen.checkpoint import save_checkpoint
from nestgen.config import DecodeConfig, NestgenConfig, config_to_dict
from nestgen.data.media import VideoLimits
from nestgen.decoding.cache_policy import parse_cache_policy
from nestgen.decoding.schedule import resolve_schedule
from nestgen.decoding.worker import DecodeWorker
from nestgen.evaluation.config import EvaluateConfig
from nestgen.flops import decode_flops
from nestgen.images import make_grid, save_png
from nestgen.checkpoint_files import publish_checkpoint, write_latest
from nestgen.storage import url_to_fs, write_json_atomic
from nestgen.tokenizers.config import TokenizerConfig
from nestgen.training.loop import train_on_tokens


def load_tokens(cfg: NestgenConfig):
    """(train, holdout) token/label tensors for cfg.data."""
    if cfg.data.source == "digits":
        from nestgen.data.digits import DIGITS_GRID, DIGITS_VOCAB, load_digit_tokens
        if cfg.model.vocab_size != DIGITS_VOCAB or list(cfg.model.grid) != list(DIGITS_GRID):
            raise ValueError(f"data.source digits needs model.vocab_size={DIGITS_VOCAB} and "
                             f"model.grid={list(DIGITS_GRID)}")
        return load_digit_tokens(cfg.data.holdout_fraction, cfg.data.seed)
    raise ValueError(f"data.source {cfg.data.source!r} is read by the Ray pipeline (nestgen train), "
                     "not by the single-process loader")


def train_local(cfg: NestgenConfig, out: str, progress: bool = True):
    (tokens, labels), _ = load_tokens(cfg)
    fs, path = url_to_fs(out)
    fs.makedirs(path, exist_ok=True)
    trainer, history = train_on_tokens(cfg, tokens, labels, progress=progress)
    ckpt = save_checkpoint(f"{out.rstrip('/')}/checkpoint.pt", cfg, trainer.core, **trainer.state())
    ckpt = publish_checkpoint(out, ckpt, trainer.step)     # LATEST names a copy the next run can't overwrite
    write_latest(out, ckpt)
    write_json_atomic(f"{out.rstrip('/')}/history.json", history)
    write_json_atomic(f"{out.rstrip('/')}/config.json", config_to_dict(cfg))
    return ckpt, history


def train_tokenizer_local(t: TokenizerConfig, data_url: str, split: str, out: str, fps: float,
                          max_image_pixels: int, video_limits: VideoLimits, allow_external: bool = False, *,
                          max_file_bytes: int) -> dict:
    """Train the tokenizer `t` on one split of a raw media folder, evaluate it on the same
    pixels and save it to `out`. Videos are resampled to `fps`; files over the budgets are
    skipped; allow_external: an index may name absolute paths and URLs. Returns the
    checkpoint URL, the number of samples, the metrics and the files that could not be read
    (`skipped`)."""
    from nestgen.data.media import ClipSpec
    from nestgen.data.raw_files import load_raw_split
    from nestgen.tokenizers import (clips_to_pixels, evaluate_tokenizer, images_to_pixels, save_tokenizer,
                                    train_tokenizer)
    clip = ClipSpec(frames=t.frames, fps=fps, size=t.image_size, channels=t.channels)
    arrays, _, failed = load_raw_split(data_url, split, t.kind, clip, max_image_pixels, video_limits, allow_external,
                                       max_file_bytes=max_file_bytes)
    pixels = (clips_to_pixels if t.kind == "video" else images_to_pixels)(arrays)
    model, history = train_tokenizer(t, pixels)
    metrics = evaluate_tokenizer(model, pixels)
    save_tokenizer(out, model, history=history, metrics=metrics)
    return {"checkpoint": out, "samples": len(arrays), **metrics, "skipped": failed}


def sample_grid(model, cfg: NestgenConfig, d: DecodeConfig, out: str, num: int = 40,
                class_label: int | None = None, seed: int = 0, tokenizer=None) -> dict:
    """Decode `num` samples (classes cycled, or one class) and write them as one PNG grid;
    `tokenizer` decodes tokens to pixels (None: the raw digits' gray levels)."""
    if class_label is not None and not 0 <= class_label < cfg.model.num_classes:
        raise ValueError(f"class {class_label} is out of range [0, {cfg.model.num_classes})")
    labels = (torch.full((num,), class_label) if class_label is not None
              else torch.arange(num) % max(1, cfg.model.num_classes))
    batch = DecodeWorker(model, cfg.model.grid, tokenizer).run(d, labels, range(seed, seed + num), render=True)
    images = batch.pixels
    if images.ndim == 5 or (images.ndim == 4 and images.shape[-1] not in (1, 3)):   # clips
        images = np.concatenate(list(np.moveaxis(images, 1, 0)), axis=2)
    save_png(out, make_grid(images, nrow=max(1, min(num, cfg.model.num_classes or 8)),
                            scale=4 if tokenizer is None else 2))
    return {"out": out, "schedule": str(resolve_schedule(d.schedule, cfg.model.nest_factors, d.steps)),
            "cache": str(parse_cache_policy(d.cache)), "num": num,
            "gflops_per_sample": decode_flops(cfg.model, d).gflops,
            "seconds_per_sample": batch.seconds / num}


def run_demo(cfg: NestgenConfig, e: EvaluateConfig, out: str) -> dict:
    """Train on digits, write sample grids of the baseline and MaGNeTS, then evaluate every
    variant of `e` (and the searched schedule) in this process: quality (fd_digits,
    digits_accuracy) against GFLOPs, plot and summary under out/evaluation."""
    from dataclasses import replace

    from nestgen.checkpoint import load_model
    from nestgen.evaluation import build_quality_suite, load_eval_data, local_map, run_evaluation
    from nestgen.evaluation.outputs import write_outputs
    from nestgen.render import tokens_to_pixels
    ckpt, history = train_local(cfg, out)
    model, cfg = load_model(ckpt)
    variants = {"baseline": replace(cfg.decode, schedule="baseline", steps=12, cache="none"),
                "magnets": replace(cfg.decode, schedule="magnets", steps=12, cache="none"),
                "magnets-cached": replace(cfg.decode, schedule="magnets", steps=12, cache="on_switch")}
    samples = {name: sample_grid(model, cfg, d, f"{out.rstrip('/')}/samples_{name}.png")
               for name, d in variants.items()}
    base = samples["baseline"]["gflops_per_sample"]
    for s in samples.values():
        s["gflops_saving"] = base / s["gflops_per_sample"]
    data = load_eval_data(cfg)
    suite = build_quality_suite(cfg, e, data, lambda t: tokens_to_pixels(t, cfg.model.grid))
    report = run_evaluation(cfg, e, suite, data, local_map(model, cfg, suite), checkpoint=ckpt)
    print(report.table())
    files = write_outputs(report, f"{out.rstrip('/')}/evaluation")
    summary = {"checkpoint": ckpt, "final_losses": {k: v for k, v in history[-1].items() if k.startswith("loss/")},
               "samples": samples, "evaluation": files["summary"]}
    write_json_atomic(f"{out.rstrip('/')}/summary.json", summary)
    return summary
