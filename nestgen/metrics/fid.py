"""FID and Inception Score with StyleGAN2-ADA's TorchScript Inception-v3.

Images go to the network as uint8 NCHW RGB at their own resolution; the network resizes to
299 itself (see feature_nets.INCEPTION). Batches stream through: FID keeps only running
mean/covariance, IS keeps the (N, 1008) probabilities it needs for its splits.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from nestgen.metrics.feature_nets import LoadedFeatureNet
from nestgen.metrics.frechet import FeatureStats, RunningStats, frechet_metric, resolve_reference
from nestgen.metrics.inputs import images_to_nchw3, iter_batches
from nestgen.metrics.protocol import MetricResult
from nestgen.metrics.sums import Sums, contiguous_parts, inception_score, inception_sums

__all__ = ["inception_pass", "inception_outputs", "compute_inception_stats", "compute_fid", "compute_inception_score",
           "compute_fid_and_is", "inception_score_from_probs", "inception_split_sums", "fid_result", "is_result"]


@torch.inference_mode()
def inception_pass(net: LoadedFeatureNet, images, *, features: bool = True, probs: bool = False,
                   batch_size: int = 64, layout: str = "auto", ddof: int = 1
                   ) -> tuple[RunningStats | None, np.ndarray | None, dict[str, Any]]:
    """One pass over the images: running pool3 stats and/or softmax probabilities, plus what
    was seen (count, input resolutions) for the protocol record."""
    stats = RunningStats(ddof=ddof) if features else None
    all_probs: list[np.ndarray] = []
    resolutions: set[tuple[int, int]] = set()
    n = 0
    for batch in iter_batches(images, batch_size):
        f, p, resolution = inception_outputs(net, batch, features=features, probs=probs, layout=layout)
        resolutions.add(resolution)
        n += len(batch)
        if features:
            stats.update(f)
        if probs:
            all_probs.append(p)
    if n == 0:
        raise ValueError("no images were given")
    seen = {"num_samples": n, "input_resolutions": sorted([list(r) for r in resolutions])}
    return stats, (np.concatenate(all_probs) if probs else None), seen


@torch.inference_mode()
def inception_outputs(net: LoadedFeatureNet, images, *, features: bool = True, probs: bool = False,
                      layout: str = "auto") -> tuple[np.ndarray | None, np.ndarray | None, tuple[int, int]]:
    """One batch: float64 pool3 features (n, 2048) and/or softmax probabilities, and its (H, W)."""
    x = images_to_nchw3(images, layout).to(net.device, non_blocking=True)
    f = net(x, return_features=True).reshape(x.shape[0], -1).double().cpu().numpy() if features else None
    # no_output_bias: the original IS code's softmax has no bias term.
    p = net(x, return_features=False, no_output_bias=True).double().cpu().numpy() if probs else None
    return f, p, (int(x.shape[2]), int(x.shape[3]))


def compute_inception_stats(net: LoadedFeatureNet, images, batch_size: int = 64,
                            layout: str = "auto", ddof: int = 1) -> FeatureStats:
    """Reference statistics (e.g. of a data set) to save with frechet.save_stats."""
    stats, _, _ = inception_pass(net, images, batch_size=batch_size, layout=layout, ddof=ddof)
    return stats.stats()


def _base_protocol(metric: str, net: LoadedFeatureNet, seen: dict) -> dict[str, Any]:
    return {
        "metric": metric,
        "num_samples": seen["num_samples"],
        "input_resolutions": seen["input_resolutions"],
        "input_conventions": "uint8 NCHW RGB 0..255 at native resolution; grayscale repeated to 3 channels",
        "resize": net.spec.conventions.get("resize", "inside the network"),
        "feature_net": net.record(),
    }


def fid_result(net, gen: FeatureStats, seen: dict, reference, eps: float = 1e-6,
               source: str = "") -> MetricResult:
    """FID of sample statistics against the reference, with its protocol record (`source`:
    where in-memory reference statistics came from)."""
    ref, resolved = resolve_reference(reference)
    return frechet_metric("fid", gen, ref, source or resolved, _base_protocol("fid", net, seen), eps)


def compute_fid(net: LoadedFeatureNet, images, reference: FeatureStats | str, batch_size: int = 64,
                layout: str = "auto", ddof: int = 1, eps: float = 1e-6) -> MetricResult:
    """FID of images against reference stats (FeatureStats, or an .npz path/URL)."""
    stats, _, seen = inception_pass(net, images, batch_size=batch_size, layout=layout, ddof=ddof)
    return fid_result(net, stats.stats(), seen, reference, eps)


def inception_score_from_probs(probs: np.ndarray, num_splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) per split, in order (no shuffling, like StyleGAN2-ADA;
    split i is [i*n//num_splits, (i+1)*n//num_splits)); (mean, std) over splits."""
    return inception_score(inception_split_sums(probs, num_splits))


def inception_split_sums(probs: np.ndarray, num_splits: int) -> Sums:
    """Summed statistics (nestgen.metrics.sums) of probabilities in split order."""
    n = len(probs)
    if n < num_splits:
        raise ValueError(f"need at least num_splits={num_splits} samples, got {n}")
    return inception_sums(probs, contiguous_parts(np.arange(n), n, num_splits), num_splits)


def is_result(net, sums: Sums, seen: dict) -> MetricResult:
    """Inception Score from summed statistics of any number of chunks, with its protocol."""
    mean, std = inception_score(sums)
    proto = _base_protocol("inception_score", net, seen)
    proto.update({"num_splits": int(len(sums["count"])), "split_order": "in given order, no shuffle",
                  "softmax": "no_output_bias=True", "num_classes": int(sums["p"].shape[1])})
    return MetricResult("inception_score", mean, proto, extra={"std": std})


def compute_inception_score(net: LoadedFeatureNet, images, num_splits: int = 10,
                            batch_size: int = 64, layout: str = "auto") -> MetricResult:
    _, probs, seen = inception_pass(net, images, features=False, probs=True,
                                    batch_size=batch_size, layout=layout)
    return is_result(net, inception_split_sums(probs, num_splits), seen)


def compute_fid_and_is(net: LoadedFeatureNet, images, reference: FeatureStats | str,
                       num_splits: int = 10, batch_size: int = 64, layout: str = "auto",
                       ddof: int = 1, eps: float = 1e-6) -> tuple[MetricResult, MetricResult]:
    """Both from one pass over the images (useful when images are sampled on the fly)."""
    stats, probs, seen = inception_pass(net, images, features=True, probs=True,
                                        batch_size=batch_size, layout=layout, ddof=ddof)
    return (fid_result(net, stats.stats(), seen, reference, eps),
            is_result(net, inception_split_sums(probs, num_splits), seen))
