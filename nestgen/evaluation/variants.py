"""Quality against compute for decode variants (schedule x cache policy x guidance).

For each variant: generate N class-conditional samples with fixed seeds, measure wall
time per sample next to the analytic GFLOPs per sample, and score the samples with a
quality function. The Ray evaluation step (pipelines) spreads this over workers; this
module is the single-process core it reuses.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from nestgen.config import DecodeConfig, NestgenConfig
from nestgen.decoding.maskgit import decode
from nestgen.decoding.schedule import resolve_schedule
from nestgen.flops import decode_flops


@dataclass(frozen=True)
class Variant:
    schedule: str
    cache: str = "none"
    guidance_scale: float = 0.0

    @property
    def name(self) -> str:
        g = f" g{self.guidance_scale:g}" if self.guidance_scale else ""
        return f"{self.schedule} cache={self.cache}{g}"


@dataclass
class VariantResult:
    variant: Variant
    schedule: str                 # the resolved compact schedule
    gflops_per_sample: float
    seconds_per_sample: float
    metrics: dict[str, float] = field(default_factory=dict)
    tokens: torch.Tensor | None = None


# A quality function gets (tokens (N, L), requested labels (N,)) and returns named metrics.
QualityFn = Callable[[torch.Tensor, torch.Tensor], dict[str, float]]


def evaluate_variants(model, cfg: NestgenConfig, variants: list[Variant], num_samples: int,
                      quality: QualityFn, seed: int = 0, batch_size: int = 256,
                      keep_tokens: bool = False) -> list[VariantResult]:
    """Every variant decodes the same labels with the same seeds (sample i: seed + i)."""
    labels = torch.arange(num_samples) % max(1, cfg.model.num_classes)
    results = []
    for v in variants:
        sched = resolve_schedule(v.schedule, cfg.model.nest_factors)
        d: DecodeConfig = replace(cfg.decode, schedule=v.schedule, steps=sched.steps, cache=v.cache,
                                  guidance_scale=v.guidance_scale)
        out, t0 = [], time.perf_counter()
        for i in range(0, num_samples, batch_size):
            lab = labels[i:i + batch_size]
            out.append(decode(model, lab, d, seeds=range(seed + i, seed + i + len(lab))).tokens.cpu())
        seconds = (time.perf_counter() - t0) / num_samples
        tokens = torch.cat(out)
        results.append(VariantResult(v, str(sched), decode_flops(cfg.model, d).gflops, seconds,
                                     quality(tokens, labels), tokens if keep_tokens else None))
    return results


def pareto_front(gflops: list[float], quality: list[float], lower_is_better: bool = True) -> list[bool]:
    """True where no other point has both fewer (or equal) GFLOPs and better (or equal)
    quality with one of the two strictly better."""
    q = np.asarray(quality, dtype=float) * (1 if lower_is_better else -1)
    g = np.asarray(gflops, dtype=float)
    front = []
    for i in range(len(g)):
        dominated = np.any((g <= g[i]) & (q <= q[i]) & ((g < g[i]) | (q < q[i])))
        front.append(not bool(dominated))
    return front


def digits_quality(holdout_fraction: float = 0.1, seed: int = 0, epochs: int = 15) -> QualityFn:
    """Quality of raw-digits token samples (8x8, 17 gray levels): `fd_digits` (Fréchet distance
    in the features of a digits classifier, against the held-out real digits) and
    `digits_accuracy` (that classifier's accuracy on the samples vs the requested class)."""
    from nestgen.data.digits import digit_tokens_to_images
    from nestgen.metrics.digits_metrics import digits_accuracy, digits_stats, fd_digits
    from nestgen.metrics.digits_train import digits_image_splits, train_digit_classifier

    net, info = train_digit_classifier(epochs=epochs, seed=seed, holdout_fraction=holdout_fraction)
    (_, _), (held, _) = digits_image_splits(holdout_fraction, seed)
    ref = digits_stats(net, held)

    def quality(tokens: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        images = digit_tokens_to_images(tokens)
        return {"fd_digits": fd_digits(net, images, ref, info).value,
                "digits_accuracy": digits_accuracy(net, images, labels.numpy(), info).value}
    quality.reference = {"classifier_holdout_accuracy": info.get("holdout_accuracy"),  # type: ignore[attr-defined]
                         "reference_samples": len(held)}
    return quality


def results_table(results: list[VariantResult], quality_key: str, lower_is_better: bool = True,
                  baseline: int = 0) -> str:
    base = results[baseline]
    front = pareto_front([r.gflops_per_sample for r in results], [r.metrics[quality_key] for r in results],
                         lower_is_better)
    keys = sorted({k for r in results for k in r.metrics})
    head = f"{'variant':34s} {'GFLOPs':>8s} {'saving':>7s} {'ms/sample':>10s} " + " ".join(f"{k:>15s}" for k in keys)
    rows = [head + "  pareto"]
    for r, f in zip(results, front):
        rows.append(f"{r.variant.name:34s} {r.gflops_per_sample:8.3f} {base.gflops_per_sample / r.gflops_per_sample:6.2f}x "
                    f"{r.seconds_per_sample * 1e3:10.2f} " + " ".join(f"{r.metrics[k]:15.4f}" for k in keys)
                    + ("  *" if f else ""))
    return "\n".join(rows)
