"""Single-process train and sample on one machine: the quick path before Ray.

The distributed pipeline (pipelines/) reuses the same pieces: NestedTrainer, decode,
checkpoints; this module only wires them for `nestgen train|sample|demo`.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from nestgen.checkpoint import save_checkpoint
from nestgen.config import DecodeConfig, NestgenConfig, config_to_dict
from nestgen.decoding.maskgit import decode
from nestgen.flops import decode_flops
from nestgen.images import make_grid, save_png
from nestgen.render import tokens_to_pixels
from nestgen.storage import url_to_fs, write_json_atomic
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
    write_json_atomic(f"{out.rstrip('/')}/history.json", history)
    write_json_atomic(f"{out.rstrip('/')}/config.json", config_to_dict(cfg))
    return ckpt, history


def sample_grid(model, cfg: NestgenConfig, d: DecodeConfig, out: str, num: int = 40,
                class_label: int | None = None, seed: int = 0, tokenizer=None) -> dict:
    """Decode `num` samples (classes cycled, or one class) and write them as one PNG grid;
    `tokenizer` decodes tokens to pixels (None: the raw digits' gray levels)."""
    if class_label is not None and not 0 <= class_label < cfg.model.num_classes:
        raise ValueError(f"class {class_label} is out of range [0, {cfg.model.num_classes})")
    labels = (torch.full((num,), class_label) if class_label is not None
              else torch.arange(num) % max(1, cfg.model.num_classes))
    t0 = time.perf_counter()
    res = decode(model, labels, d, seeds=range(seed, seed + num))
    seconds = time.perf_counter() - t0
    images = tokens_to_pixels(res.tokens, cfg.model.grid, tokenizer)
    if images.ndim == 5 or (images.ndim == 4 and images.shape[-1] not in (1, 3)):   # clips
        images = np.concatenate(list(np.moveaxis(images, 1, 0)), axis=2)
    save_png(out, make_grid(images, nrow=max(1, min(num, cfg.model.num_classes or 8)),
                            scale=4 if tokenizer is None else 2))
    return {"out": out, "schedule": str(res.schedule), "cache": str(res.cache), "num": num,
            "gflops_per_sample": decode_flops(cfg.model, d).gflops,
            "seconds_per_sample": seconds / num}


DEMO_VARIANTS = [("baseline", "none"), ("baseline", "on_switch"), ("magnets", "none"),
                 ("magnets", "on_switch"), ("magnets-lite", "on_switch"), ("large-first", "none")]


def run_demo(cfg: NestgenConfig, out: str, eval_samples: int = 500) -> dict:
    """Train on digits, write sample grids of the baseline and MaGNeTS, and score every
    variant's quality (fd_digits, digits_accuracy) against its GFLOPs."""
    from dataclasses import replace

    from nestgen.checkpoint import load_model
    from nestgen.evaluation import Variant, digits_quality, evaluate_variants, pareto_front, results_table
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
    results = evaluate_variants(model, cfg, [Variant(s, c) for s, c in DEMO_VARIANTS], eval_samples,
                                digits_quality(cfg.data.holdout_fraction, cfg.data.seed))
    print(results_table(results, "fd_digits"))
    front = pareto_front([r.gflops_per_sample for r in results], [r.metrics["fd_digits"] for r in results])
    evaluation = [{"variant": r.variant.name, "schedule": r.schedule, "cache": r.variant.cache,
                   "gflops_per_sample": r.gflops_per_sample, "seconds_per_sample": r.seconds_per_sample,
                   "gflops_saving": results[0].gflops_per_sample / r.gflops_per_sample, "pareto": f, **r.metrics}
                  for r, f in zip(results, front)]
    summary = {"checkpoint": ckpt, "final_losses": {k: v for k, v in history[-1].items() if k.startswith("loss/")},
               "samples": samples, "evaluation": {"num_samples": eval_samples, "variants": evaluation}}
    write_json_atomic(f"{out.rstrip('/')}/summary.json", summary)
    return summary
