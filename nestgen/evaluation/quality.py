"""Which metrics score an evaluation's samples, built once per evaluation.

`auto` picks by model kind and data: FID + IS (image) or FVD (video) whenever the standard
feature networks are present locally; the digits metrics when the classes are the digits;
frame-prediction error when the model is conditioned on leading frames. A metric whose
weights are absent is listed under `unavailable` with the reason and never reported under
its name. The *primary* metric (plots, search) is FID/FVD when available, else the
digits Fréchet distance, else the first metric.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from nestgen.evaluation.config import EvaluateConfig
from nestgen.evaluation.data import EvalData, cond_frames
from nestgen.evaluation.variants import Requests, VariantResult
from nestgen.metrics.protocol import MetricResult

if TYPE_CHECKING:  # annotations only: nestgen.config imports this package (its evaluate section)
    from nestgen.config import NestgenConfig

KNOWN = ("fid", "is", "fvd", "fd_digits", "digits_accuracy", "fvd_digits", "digit_clip_accuracy",
         "frame_pred")
HIGHER_IS_BETTER = {"digits_accuracy", "digit_clip_accuracy", "inception_score", "frame_pred_psnr"}
PRIMARY_ORDER = ("fid", "fvd", "fd_digits", "fvd_digits", "frame_pred_mse")

Scorer = Callable[[np.ndarray, Requests], list[MetricResult]]


def lower_is_better(metric: str) -> bool:
    return metric not in HIGHER_IS_BETTER


@dataclass
class QualitySuite:
    scorers: dict[str, Scorer]                 # requested name -> scorer
    primary: str
    unavailable: dict[str, str] = field(default_factory=dict)
    reference: str = ""
    protocols: dict[str, dict] = field(default_factory=dict)

    def __call__(self, result: VariantResult, requests: Requests) -> dict[str, float]:
        out: dict[str, float] = {}
        for scorer in self.scorers.values():
            for m in scorer(result.pixels, requests):
                out[m.name] = m.value
                self.protocols[m.name] = m.protocol
        return out

    @property
    def lower_is_better(self) -> bool:
        return lower_is_better(self.primary)


def requested_metrics(e: EvaluateConfig, cfg: NestgenConfig, data: EvalData) -> list[str]:
    if e.metrics != ["auto"]:
        bad = [m for m in e.metrics if m not in KNOWN]
        if bad:
            raise ValueError(f"evaluate.metrics: unknown {bad}; known: auto or {list(KNOWN)}")
        return list(e.metrics)
    conditional = cfg.model.num_classes > 0 and not cfg.train.cond_tokens
    if data.kind == "image":
        names = ["fid", "is"] + (["fd_digits"] + (["digits_accuracy"] if conditional else [])
                                 if data.is_digits else [])
    else:
        names = ["fvd"] + (["fvd_digits"] + (["digit_clip_accuracy"] if conditional else [])
                           if data.is_digits else [])
        names += ["frame_pred"] if cfg.train.cond_tokens else []
    return names


@dataclass
class _Context:
    cfg: NestgenConfig
    data: EvalData
    render: Callable
    device: str
    memo: dict = field(default_factory=dict)

    @property
    def ref_pixels(self) -> np.ndarray | None:
        """Held-out pixels through the renderer, made on first use (None for raw digits: 8x8 levels)."""
        if self.cfg.data.source == "digits":
            return None
        return self.once("ref_pixels", lambda: np.asarray(self.render(self.data.holdout_tokens)))

    def once(self, key: str, make):
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]


def build_quality_suite(cfg: NestgenConfig, data: EvalData, render, device: str = "cpu") -> QualitySuite:
    """`render(tokens) -> uint8 pixels` (the tokenizer's decoder, or the raw digits levels)."""
    e = cfg.evaluate
    names = requested_metrics(e, cfg, data)
    ctx = _Context(cfg, data, render, device)
    suite = QualitySuite({}, "", reference=data.source)
    for name in names:
        try:
            suite.scorers[name] = _SCORERS[name](ctx)
        except _Unavailable as err:
            suite.unavailable[name] = str(err)
    produced = {"is": "inception_score", "frame_pred": "frame_pred_mse"}
    have = [produced.get(n, n) for n in suite.scorers]
    if not have:
        raise ValueError("no quality metric is available: " + "; ".join(f"{k}: {v}" for k, v in suite.unavailable.items()))
    if e.quality_metric != "auto":
        if e.quality_metric not in have:
            raise ValueError(f"evaluate.quality_metric {e.quality_metric!r} is not among the metrics computed {have}"
                             + (f" (unavailable: {suite.unavailable})" if suite.unavailable else ""))
        suite.primary = e.quality_metric
    else:
        suite.primary = next((m for m in PRIMARY_ORDER if m in have), have[0])
    return suite


class _Unavailable(Exception):
    pass


def _need_digits(ctx: _Context) -> None:
    if not ctx.data.is_digits:
        raise _Unavailable(f"the classes {ctx.data.label_names[:12]} are not the digits 0..9")


_DIGITS_NETS: dict = {}


def _image_net(ctx: _Context):
    """The digits classifier (trained on the generator's own training split) and the
    held-out reference statistics in its features."""
    from nestgen.data.digits import digit_tokens_to_images
    from nestgen.metrics.digits_metrics import digits_stats
    from nestgen.metrics.digits_train import train_digit_classifier
    _need_digits(ctx)

    def make():
        cfg = ctx.cfg
        key = (cfg.data.seed, cfg.data.holdout_fraction)
        if key not in _DIGITS_NETS:      # deterministic given the split: train once per process
            _DIGITS_NETS[key] = train_digit_classifier(epochs=15, seed=cfg.data.seed,
                                                       holdout_fraction=cfg.data.holdout_fraction)
        net, info = _DIGITS_NETS[key]
        ref = ctx.ref_pixels if ctx.ref_pixels is not None else digit_tokens_to_images(ctx.data.holdout_tokens)
        return net, info, digits_stats(net, ref)
    return ctx.once("image_net", make)


def _clip_net(ctx: _Context):
    """A clip classifier trained on the training split's clips (as the tokenizer renders them)."""
    from nestgen.metrics.digits_metrics import digits_stats
    from nestgen.metrics.digits_train import train_clip_classifier
    _need_digits(ctx)

    def make():
        train = np.asarray(ctx.render(ctx.data.train_tokens))
        net, info = train_clip_classifier(train, ctx.data.train_labels.numpy(), seed=ctx.cfg.data.seed,
                                          val=(ctx.ref_pixels, ctx.data.holdout_labels.numpy()))
        return net, info, digits_stats(net, ctx.ref_pixels)
    return ctx.once("clip_net", make)


def _fd_digits(ctx: _Context) -> Scorer:
    from nestgen.metrics.digits_metrics import fd_digits
    net, info, ref = _image_net(ctx)
    return lambda pixels, requests: [fd_digits(net, pixels, ref, info)]


def _digits_accuracy(ctx: _Context) -> Scorer:
    from nestgen.metrics.digits_metrics import digits_accuracy
    net, info, _ = _image_net(ctx)
    return lambda pixels, requests: [digits_accuracy(net, pixels, requests.labels.numpy(), info)]


def _fvd_digits(ctx: _Context) -> Scorer:
    from nestgen.metrics.digits_metrics import fvd_digits
    net, info, ref = _clip_net(ctx)
    return lambda pixels, requests: [fvd_digits(net, pixels, ref, info)]


def _digit_clip_accuracy(ctx: _Context) -> Scorer:
    from nestgen.metrics.digits_metrics import digit_clip_accuracy
    net, info, _ = _clip_net(ctx)
    return lambda pixels, requests: [digit_clip_accuracy(net, pixels, requests.labels.numpy(), info)]


def _feature_net(ctx: _Context, spec):
    from nestgen.metrics.feature_nets import FeatureNetUnavailable, load_feature_net
    try:
        return load_feature_net(spec, ctx.cfg.evaluate.feature_net or None, ctx.device)
    except FeatureNetUnavailable as err:
        raise _Unavailable(str(err)) from None


def _reference(ctx: _Context, key: str, stats_fn):
    """Reference stats: evaluate.reference_stats (.npz) when set, else the held-out pixels'."""
    if ctx.cfg.evaluate.reference_stats:
        return ctx.cfg.evaluate.reference_stats
    if ctx.ref_pixels is None:
        raise _Unavailable("raw 8x8 digit levels are not images for Inception/I3D; set evaluate.reference_stats")
    return ctx.once(key, lambda: stats_fn(ctx.ref_pixels))


def _fid(ctx: _Context) -> Scorer:
    from nestgen.metrics.feature_nets import INCEPTION
    from nestgen.metrics.fid import compute_fid, compute_inception_stats
    net = _feature_net(ctx, INCEPTION)
    ref = _reference(ctx, "inception_ref", lambda px: compute_inception_stats(net, px))
    return lambda pixels, requests: [compute_fid(net, pixels, ref)]


def _is(ctx: _Context) -> Scorer:
    from nestgen.metrics.feature_nets import INCEPTION
    from nestgen.metrics.fid import compute_inception_score
    net = _feature_net(ctx, INCEPTION)
    return lambda pixels, requests: [compute_inception_score(net, pixels)]


def _fvd(ctx: _Context) -> Scorer:
    from nestgen.metrics.feature_nets import I3D
    from nestgen.metrics.fvd import compute_fvd, compute_video_stats
    net = _feature_net(ctx, I3D)
    # every frame of a clip counts: samples and held-out clips come out of one tokenizer
    ref = _reference(ctx, "i3d_ref", lambda px: compute_video_stats(net, px, num_frames=int(px.shape[1])))
    return lambda pixels, requests: [compute_fvd(net, pixels, ref, num_frames=int(pixels.shape[1]))]


def _frame_pred(ctx: _Context) -> Scorer:
    from nestgen.metrics.frame_error import frame_prediction_error
    if not ctx.cfg.train.cond_tokens:
        raise _Unavailable("train.cond_tokens is 0: the model is not a frame predictor")
    cfg = ctx.cfg
    return lambda pixels, requests: list(frame_prediction_error(
        pixels, requests.targets, cond_frames(cfg, pixels.shape[1])).values())


_SCORERS = {"fid": _fid, "is": _is, "fvd": _fvd, "fd_digits": _fd_digits, "digits_accuracy": _digits_accuracy,
            "fvd_digits": _fvd_digits, "digit_clip_accuracy": _digit_clip_accuracy, "frame_pred": _frame_pred}
