"""FID and Inception Score with StyleGAN2-ADA's TorchScript Inception-v3.

Images go to the network as uint8 NCHW RGB at their own resolution; the network resizes to
299 itself (see feature_nets.INCEPTION). Both metrics stream (`fid_metric`, `is_metric`:
nestgen.metrics.sums.StreamedMetric): a chunk of samples is reduced to summed features or
split probabilities where it was made, and any set of chunks' sums gives the value.
Reference statistics of a data set stream through `inception_stats` batch by batch.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from nestgen.metrics.feature_nets import LoadedFeatureNet, on_worker
from nestgen.metrics.frechet import (FeatureStats, RunningStats, frechet_metric, frechet_stats, frechet_sums,
                                     resolve_reference)
from nestgen.metrics.inputs import images_to_nchw3, iter_batches
from nestgen.metrics.protocol import MetricResult
from nestgen.metrics.sums import Chunk, StreamedMetric, Sums, contiguous_parts, inception_score, inception_sums

__all__ = ["inception_outputs", "inception_stats", "fid_result", "is_result", "fid_metric", "is_metric",
           "INCEPTION_BATCH"]

INCEPTION_BATCH = 64      # images per Inception forward pass


@torch.inference_mode()
def inception_outputs(net: LoadedFeatureNet, images, *, features: bool = True, probs: bool = False,
                      layout: str = "auto") -> tuple[np.ndarray | None, np.ndarray | None, tuple[int, int]]:
    """One batch: float64 pool3 features (n, 2048) and/or softmax probabilities, and its (H, W)."""
    x = images_to_nchw3(images, layout).to(net.device, non_blocking=True)
    f = net(x, return_features=True).reshape(x.shape[0], -1).double().cpu().numpy() if features else None
    # no_output_bias: the original IS code's softmax has no bias term.
    p = net(x, return_features=False, no_output_bias=True).double().cpu().numpy() if probs else None
    return f, p, (int(x.shape[2]), int(x.shape[3]))


def inception_stats(net: LoadedFeatureNet, images, batch_size: int = INCEPTION_BATCH, layout: str = "auto",
                    ddof: int = 1) -> FeatureStats:
    """Reference statistics of images (an array or an iterable of batches, e.g. of a data set)
    to compare samples with, or to save with frechet.save_stats."""
    stats = RunningStats(ddof=ddof)
    for batch in iter_batches(images, batch_size):
        stats.update(inception_outputs(net, batch, layout=layout)[0])
    if stats.n == 0:
        raise ValueError("no images were given")
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


def is_result(net, sums: Sums, seen: dict) -> MetricResult:
    """Inception Score from summed statistics of any number of chunks, with its protocol."""
    mean, std = inception_score(sums)
    proto = _base_protocol("inception_score", net, seen)
    proto.update({"num_splits": int(len(sums["count"])), "split_order": "in given order, no shuffle",
                  "softmax": "no_output_bias=True", "num_classes": int(sums["p"].shape[1])})
    return MetricResult("inception_score", mean, proto, extra={"std": std})


def fid_metric(net: LoadedFeatureNet, reference: FeatureStats | str, source: str = "") -> StreamedMetric:
    """FID of samples against reference statistics (FeatureStats, or an .npz path/URL; `source`:
    where in-memory ones came from), streamed. Features are summed about the reference mean."""
    ref, resolved = resolve_reference(reference)
    load, shift, source = on_worker(net), ref.mu, source or resolved

    def features(chunk: Chunk, device) -> Sums:
        here = load(device)
        f = [inception_outputs(here, b)[0] for b in iter_batches(chunk.pixels, INCEPTION_BATCH)]
        return frechet_sums(np.concatenate(f), shift)

    def results(sums: Sums, shape: tuple) -> list[MetricResult]:
        seen = {"num_samples": int(sums["n"]), "input_resolutions": [list(shape[:2])]}
        return [fid_result(net, frechet_stats(sums, shift), seen, ref, source=source)]
    return StreamedMetric(features, results)


def is_metric(net: LoadedFeatureNet, splits: int = 10) -> StreamedMetric:
    """Inception Score of samples, streamed: sample i of n falls in split i * splits // n, in
    order (no shuffling, like StyleGAN2-ADA)."""
    load = on_worker(net)

    def features(chunk: Chunk, device) -> Sums:
        here = load(device)
        p = [inception_outputs(here, b, features=False, probs=True)[1]
             for b in iter_batches(chunk.pixels, INCEPTION_BATCH)]
        return inception_sums(np.concatenate(p), contiguous_parts(chunk.index, chunk.n, splits), splits)

    def results(sums: Sums, shape: tuple) -> list[MetricResult]:
        seen = {"num_samples": int(sums["count"].sum()), "input_resolutions": [list(shape[:2])]}
        return [is_result(net, sums, seen)]
    return StreamedMetric(features, results)
