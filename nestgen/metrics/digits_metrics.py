"""Honest offline metrics on the embedded digits: Fréchet distances in the features of the
small digits nets (fd_digits for images, fvd_digits for clips) and classifier accuracy of
class-conditional samples against the labels they were asked for.

These are *not* FID/FVD and are named so; each protocol record carries the digits net's
weight hash, so numbers are comparable only between runs that used the same net. Both kinds
stream (`digits_frechet_metric`, `digits_accuracy_metric`: nestgen.metrics.sums.StreamedMetric);
reference statistics stream through `digits_stats`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from nestgen.metrics.digits_nets import net_hash
from nestgen.metrics.frechet import FeatureStats, RunningStats, frechet_metric, frechet_stats, frechet_sums
from nestgen.metrics.inputs import iter_batches
from nestgen.metrics.protocol import MetricResult
from nestgen.metrics.sums import Chunk, StreamedMetric, Sums, accuracy, class_sums

__all__ = ["digits_stats", "digits_features", "digits_predictions", "frechet_result", "accuracy_result", "net_record",
           "digits_frechet_metric", "digits_accuracy_metric"]

_INPUT_TEXT = {
    "digits_image_cnn": "uint8 0..255 images, any size, (N,H,W) | (N,H,W,C) | (N,C,H,W); RGB "
                        "averaged to gray; bilinear (antialias) resize to {size}x{size}; [0,1]",
    "digits_clip_cnn3d": "uint8 0..255 clips, (B,T,H,W) | (B,T,H,W,C) | (B,C,T,H,W); RGB averaged "
                         "to gray; frames bilinear (antialias) resized to {size}x{size}; [0,1]",
}


def net_record(net, info: dict[str, Any] | None) -> dict[str, Any]:
    rec = {"name": net.kind, "net_hash": net_hash(net), "config": dict(net.config)}
    for k in ("file_sha256", "trained_on", "seed", "epochs", "holdout_accuracy", "val_accuracy"):
        if info and k in info:
            rec[k] = info[k]
    return rec


@torch.no_grad()
def digits_stats(net, data, batch_size: int = 256, ddof: int = 1) -> FeatureStats:
    """Streaming feature statistics (reference stats for fd_digits / fvd_digits)."""
    net.eval()
    rs = RunningStats(ddof=ddof)
    for b in iter_batches(data, batch_size):
        rs.update(net.features(net.preprocess(b)))
    return rs.stats()


def frechet_result(name: str, net, gen: FeatureStats, ref: FeatureStats, source: str, info: dict | None,
                   eps: float = 1e-6, record: dict | None = None) -> MetricResult:
    """fd_digits / fvd_digits of sample statistics against reference statistics, with the
    protocol (`record`: the net's `net_record`, when already made: it hashes the weights)."""
    proto: dict[str, Any] = {
        "metric": name,
        "num_samples": gen.n,
        "input_conventions": _INPUT_TEXT[net.kind].format(size=net.config["size"]),
        "resize": f"bilinear, antialias, align_corners=False, to {net.config['size']}x{net.config['size']}",
        "feature_net": record or net_record(net, info),
        "features": f"{gen.dim}-d penultimate pre-activations of a digits classifier trained in nestgen",
        "comparable_to": "only runs with the same feature_net.net_hash; not FID/FVD",
    }
    return frechet_metric(name, gen, ref, source, proto, eps)


@torch.no_grad()
def digits_features(net, data, batch_size: int = 256) -> np.ndarray:
    """float64 (n, d) features of uint8 images or clips (one chunk of an evaluation)."""
    net.eval()
    return np.concatenate([net.features(net.preprocess(b)).double().cpu().numpy()
                           for b in iter_batches(data, batch_size)])


@torch.no_grad()
def digits_predictions(net, data, batch_size: int = 256) -> np.ndarray:
    net.eval()
    return np.concatenate([net(net.preprocess(b)).argmax(1).cpu().numpy() for b in iter_batches(data, batch_size)])


def accuracy_result(name: str, net, sums: Sums, info: dict | None, record: dict | None = None) -> MetricResult:
    """digits_accuracy / digit_clip_accuracy from summed class counts (nestgen.metrics.sums);
    `record` as in frechet_result."""
    value, per_class = accuracy(sums)
    proto = {
        "metric": name, "num_samples": int(sums["asked"].sum()),
        "definition": "share of samples the digits classifier assigns to the requested label",
        "input_conventions": _INPUT_TEXT[net.kind].format(size=net.config["size"]),
        "feature_net": record or net_record(net, info),
    }
    return MetricResult(name, value, proto, extra=per_class)


def digits_frechet_metric(name: str, net, info: dict | None, reference: FeatureStats, source: str) -> StreamedMetric:
    """fd_digits (DigitImageNet) / fvd_digits (DigitClipNet) of samples against `reference`
    statistics (digits_stats of real images or clips; `source`: where they came from),
    streamed: features summed about the reference mean."""
    shift, record = reference.mu, net_record(net, info)
    return StreamedMetric(
        lambda chunk, device: frechet_sums(digits_features(net.to(device), chunk.pixels), shift),
        lambda sums, shape: [frechet_result(name, net, frechet_stats(sums, shift), reference, source, info,
                                            record=record)])


def digits_accuracy_metric(name: str, net, info: dict | None) -> StreamedMetric:
    """digits_accuracy (DigitImageNet) / digit_clip_accuracy (DigitClipNet): the share of
    samples the classifier gives the class they were asked for (Chunk.labels), streamed."""
    classes, record = net.config["num_classes"], net_record(net, info)

    def features(chunk: Chunk, device) -> Sums:
        return class_sums(digits_predictions(net.to(device), chunk.pixels), chunk.labels, classes)
    return StreamedMetric(features, lambda sums, shape: [accuracy_result(name, net, sums, info, record=record)])
