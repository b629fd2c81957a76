"""Evaluation metrics, each returned with the protocol that produced it.

Standard (need local TorchScript feature nets, never downloaded):
  fid.compute_fid / compute_inception_score / compute_fid_and_is   (StyleGAN2-ADA Inception)
  fvd.compute_fvd                                                   (StyleGAN-V I3D)
Embedded, offline (feature nets trained here on the sklearn digits):
  digits_metrics.fd_digits / fvd_digits / digits_accuracy / digit_clip_accuracy
  frame_error.frame_prediction_error
Shared: frechet (stats, distance, .npz, the Fréchet metrics' record), feature_nets (loading), protocol (MetricResult).
"""
from nestgen.metrics.digits_metrics import digit_clip_accuracy, digits_accuracy, digits_stats, fd_digits, fvd_digits
from nestgen.metrics.digits_nets import DigitClipNet, DigitImageNet, net_hash
from nestgen.metrics.digits_train import (load_digits_net, save_digits_net, train_clip_classifier,
                                          train_digit_classifier)
from nestgen.metrics.feature_nets import (I3D, INCEPTION, FeatureNetUnavailable, LoadedFeatureNet,
                                          load_feature_net, resolve_feature_net)
from nestgen.metrics.fid import (compute_fid, compute_fid_and_is, compute_inception_score,
                                 compute_inception_stats)
from nestgen.metrics.frame_error import frame_prediction_error
from nestgen.metrics.frechet import (FeatureStats, RunningStats, feature_stats, frechet_distance,
                                     load_stats, save_stats, stats_hash)
from nestgen.metrics.fvd import compute_fvd, compute_video_stats
from nestgen.metrics.protocol import MetricResult

__all__ = [
    "MetricResult", "FeatureStats", "RunningStats", "feature_stats", "frechet_distance",
    "save_stats", "load_stats", "stats_hash",
    "FeatureNetUnavailable", "LoadedFeatureNet", "INCEPTION", "I3D", "load_feature_net",
    "resolve_feature_net",
    "compute_fid", "compute_inception_score", "compute_fid_and_is", "compute_inception_stats",
    "compute_fvd", "compute_video_stats",
    "DigitImageNet", "DigitClipNet", "net_hash", "train_digit_classifier", "train_clip_classifier",
    "save_digits_net", "load_digits_net",
    "fd_digits", "fvd_digits", "digits_accuracy", "digit_clip_accuracy",
    "digits_stats", "frame_prediction_error",
]
