"""Evaluation metrics, each returned with the protocol that produced it, each streamed: a
`StreamedMetric` (sums.py) reduces chunks of samples to statistics that add up, and turns
any set of chunks' sums into its results (`StreamedMetric.over` runs one in one process).

Standard (need local TorchScript feature nets, never downloaded):
  fid.fid_metric / is_metric, fid.inception_stats (references)   (StyleGAN2-ADA Inception)
  fvd.fvd_metric, fvd.i3d_stats (references)                       (StyleGAN-V I3D)
Embedded, offline (feature nets trained here on the sklearn digits):
  digits_metrics.digits_frechet_metric (fd_digits, fvd_digits) / digits_accuracy_metric
  (digits_accuracy, digit_clip_accuracy), digits_metrics.digits_stats (references)
  frame_error.frame_pred_metric
Shared: sums (the streamed form), frechet (stats, distance, .npz, the Fréchet metrics' record),
feature_nets (loading), protocol (MetricResult).
"""
from nestgen.metrics.digits_metrics import digits_accuracy_metric, digits_frechet_metric, digits_stats
from nestgen.metrics.digits_nets import DigitClipNet, DigitImageNet, net_hash
from nestgen.metrics.digits_train import (load_digits_net, save_digits_net, train_clip_classifier,
                                          train_digit_classifier)
from nestgen.metrics.feature_nets import (I3D, INCEPTION, FeatureNetUnavailable, LoadedFeatureNet,
                                          load_feature_net, resolve_feature_net)
from nestgen.metrics.fid import fid_metric, inception_stats, is_metric
from nestgen.metrics.frame_error import frame_pred_metric
from nestgen.metrics.frechet import (FeatureStats, RunningStats, feature_stats, frechet_distance,
                                     load_stats, save_stats, stats_hash)
from nestgen.metrics.fvd import fvd_metric, i3d_stats
from nestgen.metrics.protocol import MetricResult
from nestgen.metrics.sums import Chunk, StreamedMetric, chunks_of

__all__ = [
    "MetricResult", "Chunk", "StreamedMetric", "chunks_of", "FeatureStats", "RunningStats", "feature_stats",
    "frechet_distance", "save_stats", "load_stats", "stats_hash",
    "FeatureNetUnavailable", "LoadedFeatureNet", "INCEPTION", "I3D", "load_feature_net",
    "resolve_feature_net",
    "fid_metric", "is_metric", "inception_stats", "fvd_metric", "i3d_stats",
    "DigitImageNet", "DigitClipNet", "net_hash", "train_digit_classifier", "train_clip_classifier",
    "save_digits_net", "load_digits_net",
    "digits_frechet_metric", "digits_accuracy_metric", "digits_stats", "frame_pred_metric",
]
