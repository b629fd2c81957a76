"""Which metrics score an evaluation's samples: the metric registry, and the suite built
from it once per evaluation.

Every fact about a metric is in its `MetricSpec` in `METRICS`: the kind of samples it
scores, the values it reports and which way each is better, what it needs (standard
feature-net weights, digit classes, a frame-prediction model) and how it is built.
`auto` picks by model kind and data: FID + IS (image) or FVD (video), reported whenever the
standard feature networks are present locally; the digits metrics when the classes are the
digits; frame-prediction error when the model is conditioned on leading frames. A metric
that cannot be computed is listed under `unavailable` with the reason and never reported
under its name. The *primary* metric (plots, search) is the available headline value of
lowest `primary_rank` (FID/FVD, else the digits Fréchet distances, else frame-prediction
MSE), else the first metric's.

Metrics stream (nestgen.evaluation.stream): each is a `StreamedMetric`
(nestgen.metrics.sums), built by its own module beside the metric (fid.fid_metric,
fvd.fvd_metric, digits_metrics.digits_frechet_metric, ...), whose `features` reduce a chunk
of samples to summed statistics where the samples are (a Ray worker, on its device) and
whose `results` turn the sums of any set of chunks into values with their protocol records
(on the driver). What the registry adds is the evaluation's side: the reference (the
training split, rendered, or evaluate.reference_stats), the feature nets it loads once, and
which metrics `auto` picks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from nestgen.config import NestgenConfig
from nestgen.evaluation.config import EvaluateConfig
from nestgen.evaluation.data import EvalData, cond_frames
from nestgen.metrics.sums import Chunk, FeatureFn, StreamedMetric, Sums


@dataclass(frozen=True)
class _RenderedBatches:
    """Rendered batches of a split, made again on every pass and never all at once: each
    reference statistic (nestgen.metrics' streaming feature statistics, the clip classifier's
    validation accuracy) reduces a batch as it comes, so the driver holds one batch of pixels,
    not the split (tens of GB at ImageNet's 50k reference images). The price is one decode of
    the split per statistic: at most three (a standard net's reference, a digits net's and
    the clip classifier's validation), and one for FID or FVD alone."""
    render: Callable
    tokens: torch.Tensor           # (n, L)
    batch_size: int

    def __iter__(self):
        for i in range(0, len(self.tokens), self.batch_size):
            yield np.asarray(self.render(self.tokens[i:i + self.batch_size]))


@dataclass
class _Context:
    cfg: NestgenConfig
    e: EvaluateConfig
    data: EvalData
    render: Callable
    device: str
    memo: dict = field(default_factory=dict)

    def reference_batches(self) -> _RenderedBatches | None:
        """The reference rows (the training split, nestgen.evaluation.data) through the
        renderer, `evaluate.batch_size` rows at a time (None for raw digits: 8x8 levels)."""
        return self._batches(self.data.reference_tokens)

    def holdout_batches(self) -> _RenderedBatches | None:
        """The held-out split, likewise."""
        return self._batches(self.data.holdout_tokens)

    def _batches(self, tokens) -> _RenderedBatches | None:
        if self.cfg.data.source == "digits":
            return None
        return _RenderedBatches(self.render, tokens, self.e.batch_size)

    def once(self, key: str, make):
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]


@dataclass(frozen=True)
class MetricSpec:
    """One metric that `evaluate.metrics` can name."""
    name: str                               # as written in evaluate.metrics
    kind: str                               # image | video: the samples it scores (what `auto` picks it for)
    values: dict[str, bool]                 # reported value -> higher is better; the first is the headline
    build: Callable[[_Context, object], StreamedMetric]   # (context, loaded feature net or None) -> metric
    feature_net: str | None = None          # the standard network it needs, inception | i3d (local files only)
    needs_digits: bool = False              # the classes must be the digits 0..9 (a digits classifier judges)
    count_biased: bool = False              # a Fréchet distance: grows as samples get fewer (nestgen.evaluation.real)
    needs_frame_prediction: bool = False    # train.cond_tokens > 0: there are true frames to compare with
    auto_if_class_conditional: bool = False  # `auto` picks it only when samples are asked for by class
    primary_rank: int | None = None         # preference as the primary metric (lowest first)

    @property
    def headline(self) -> str:
        return next(iter(self.values))

    def unavailable_reason(self, ctx: _Context) -> str | None:
        """Why the data or model rules this metric out (None when they do not)."""
        if self.needs_digits and not ctx.data.is_digits:
            return f"the classes {ctx.data.label_names[:12]} are not the digits 0..9"
        if self.needs_frame_prediction and not ctx.cfg.train.cond_tokens:
            return "train.cond_tokens is 0: the model is not a frame predictor"
        return None


def lower_is_better(value: str) -> bool:
    """Direction of a reported value (fid, inception_score, frame_pred_psnr, ...) from the registry."""
    return not any(spec.values.get(value, False) for spec in METRICS.values())


@dataclass
class QualitySuite:
    scorers: dict[str, StreamedMetric]         # requested name -> metric
    primary: str
    unavailable: dict[str, str] = field(default_factory=dict)
    reference: str = ""
    protocols: dict[str, dict] = field(default_factory=dict)
    render: Callable | None = None              # tokens -> pixels on the driver (the real-data row)
    device: str = "cpu"

    def features(self) -> dict[str, FeatureFn]:
        """What a worker needs to reduce its samples (picklable)."""
        return {name: m.features for name, m in self.scorers.items()}

    def count_biased(self) -> list[str]:
        """The reported values that grow as samples get fewer (the Fréchet distances)."""
        return [v for name in self.scorers if METRICS[name].count_biased for v in METRICS[name].values]

    def features_without_targets(self) -> dict[str, FeatureFn]:
        """The metrics that do not compare with true clips (real data has nothing to predict)."""
        return {name: fn for name, fn in self.features().items() if not METRICS[name].needs_frame_prediction}

    def finish(self, sums: dict[str, Sums], sample_shape: tuple, record: bool = True) -> dict[str, float]:
        """Values from the summed statistics of each metric in `sums`; `record` keeps their protocols."""
        out: dict[str, float] = {}
        for name, s in sums.items():
            for r in self.scorers[name].results(s, sample_shape):
                out[r.name] = r.value
                if record:
                    self.protocols[r.name] = r.protocol
        return out

    def score(self, pixels: np.ndarray, labels: np.ndarray, targets: np.ndarray | None = None,
              device: str = "cpu") -> dict[str, float]:
        """All metrics of one set of samples at once (one chunk)."""
        chunk = Chunk(pixels, np.asarray(labels), targets, np.arange(len(pixels)), len(pixels))
        return self.finish({name: fn(chunk, device) for name, fn in self.features().items()},
                           tuple(pixels.shape[1:]))

    @property
    def lower_is_better(self) -> bool:
        return lower_is_better(self.primary)


def requested_metrics(e: EvaluateConfig, cfg: NestgenConfig, data: EvalData) -> list[str]:
    if e.metrics != ["auto"]:
        bad = [m for m in e.metrics if m not in METRICS]
        if bad:
            raise ValueError(f"evaluate.metrics: unknown {bad}; known: auto or {list(METRICS)}")
        return list(e.metrics)
    by_class = cfg.model.num_classes > 0 and not cfg.train.cond_tokens
    return [m.name for m in METRICS.values() if m.kind == data.kind
            and (data.is_digits or not m.needs_digits)
            and (cfg.train.cond_tokens or not m.needs_frame_prediction)
            and (by_class or not m.auto_if_class_conditional)]


def build_quality_suite(cfg: NestgenConfig, e: EvaluateConfig, data: EvalData, render,
                        device: str = "cpu") -> QualitySuite:
    """`render(tokens) -> uint8 pixels` (the tokenizer's decoder, or the raw digits levels)."""
    names = requested_metrics(e, cfg, data)
    ctx = _Context(cfg, e, data, render, device)
    suite = QualitySuite({}, "", reference=data.reference_source, render=render, device=device)
    for name in names:
        spec = METRICS[name]
        try:
            why = spec.unavailable_reason(ctx)
            if why:
                raise _Unavailable(why)
            suite.scorers[name] = spec.build(ctx, spec.feature_net and _feature_net(ctx, spec.feature_net))
        except _Unavailable as err:
            suite.unavailable[name] = str(err)
    computed = [METRICS[n] for n in suite.scorers]
    have = [m.headline for m in computed]
    if not have:
        raise ValueError("no quality metric is available: " + "; ".join(f"{k}: {v}" for k, v in suite.unavailable.items()))
    if e.quality_metric != "auto":
        if e.quality_metric not in have:
            raise ValueError(f"evaluate.quality_metric {e.quality_metric!r} is not among the metrics computed {have}"
                             + (f" (unavailable: {suite.unavailable})" if suite.unavailable else ""))
        suite.primary = e.quality_metric
    else:
        ranked = sorted((m for m in computed if m.primary_rank is not None), key=lambda m: m.primary_rank)
        suite.primary = ranked[0].headline if ranked else have[0]
    return suite


class _Unavailable(Exception):
    pass


_DIGITS_NETS: dict = {}


def _image_net(ctx: _Context):
    """The digits classifier (trained on the generator's own training split) and the
    reference statistics in its features."""
    from nestgen.data.digits import digit_tokens_to_images
    from nestgen.metrics.digits_metrics import digits_stats
    from nestgen.metrics.digits_train import train_digit_classifier

    def make():
        cfg = ctx.cfg
        key = (cfg.data.seed, cfg.data.holdout_fraction)
        if key not in _DIGITS_NETS:      # deterministic given the split: train once per process
            _DIGITS_NETS[key] = train_digit_classifier(epochs=15, seed=cfg.data.seed,
                                                       holdout_fraction=cfg.data.holdout_fraction)
        net, info = _DIGITS_NETS[key]
        ref = ctx.reference_batches()
        return net, info, digits_stats(net, ref if ref is not None else digit_tokens_to_images(ctx.data.reference_tokens))
    return ctx.once("image_net", make)


def _clip_net(ctx: _Context):
    """A clip classifier trained on the training split's clips (as the tokenizer renders them)."""
    from nestgen.metrics.digits_metrics import digits_stats
    from nestgen.metrics.digits_train import train_clip_classifier

    def make():
        train = np.asarray(ctx.render(ctx.data.train_tokens))     # at most EvalData.max_train clips
        net, info = train_clip_classifier(train, ctx.data.train_labels.numpy(), seed=ctx.cfg.data.seed,
                                          val=(ctx.holdout_batches(), ctx.data.holdout_labels.numpy()))
        return net, info, digits_stats(net, ctx.reference_batches())
    return ctx.once("clip_net", make)


def _vs_reference(net_of: Callable, metric: str) -> Callable[[_Context, None], StreamedMetric]:
    """A digits-classifier Fréchet distance of the samples' features against the reference's."""
    def build(ctx: _Context, _: None) -> StreamedMetric:
        from nestgen.metrics.digits_metrics import digits_frechet_metric
        net, info, ref = net_of(ctx)
        return digits_frechet_metric(metric, net, info, ref, ctx.data.reference_source)
    return build


def _vs_labels(net_of: Callable, metric: str) -> Callable[[_Context, None], StreamedMetric]:
    """A digits-classifier accuracy of the samples' predicted classes against the classes asked for."""
    def build(ctx: _Context, _: None) -> StreamedMetric:
        from nestgen.metrics.digits_metrics import digits_accuracy_metric
        net, info, _ = net_of(ctx)
        return digits_accuracy_metric(metric, net, info)
    return build


def _feature_net(ctx: _Context, which: str):
    """The standard network `which` (inception | i3d), loaded once per evaluation."""
    from nestgen.metrics.feature_nets import I3D, INCEPTION, FeatureNetUnavailable, load_feature_net
    spec = {"inception": INCEPTION, "i3d": I3D}[which]
    try:
        return ctx.once(f"feature_net:{which}",
                        lambda: load_feature_net(spec, ctx.e.feature_net or None, ctx.device))
    except FeatureNetUnavailable as err:
        raise _Unavailable(str(err)) from None


def _reference(ctx: _Context, key: str, stats_fn):
    """Reference stats: evaluate.reference_stats (.npz) when set, else the reference rows'
    (`stats_fn` of the rendered batches of the training split)."""
    from nestgen.metrics.frechet import resolve_reference
    if ctx.e.reference_stats:
        return ctx.once(key, lambda: resolve_reference(ctx.e.reference_stats))
    ref = ctx.reference_batches()
    if ref is None:
        raise _Unavailable("raw 8x8 digit levels are not images for Inception/I3D; set evaluate.reference_stats")
    return ctx.once(key, lambda: (stats_fn(ref), ctx.data.reference_source))


def _fid(ctx: _Context, net) -> StreamedMetric:
    from nestgen.metrics.fid import fid_metric, inception_stats
    return fid_metric(net, *_reference(ctx, "inception_ref", lambda px: inception_stats(net, px)))


def _is(ctx: _Context, net) -> StreamedMetric:
    from nestgen.metrics.fid import is_metric
    return is_metric(net)


def _fvd(ctx: _Context, net) -> StreamedMetric:
    from nestgen.metrics.fvd import fvd_metric, i3d_stats
    # every frame of a clip counts (num_frames=None: any length): samples and held-out clips
    # come out of one tokenizer
    ref, source = _reference(ctx, "i3d_ref", lambda px: i3d_stats(net, px, num_frames=None))
    return fvd_metric(net, ref, source, num_frames=None)


def _frame_pred(ctx: _Context, _: None) -> StreamedMetric:
    from nestgen.metrics.frame_error import frame_pred_metric
    cfg = ctx.cfg
    return frame_pred_metric(lambda frames: cond_frames(cfg, frames))


METRICS: dict[str, MetricSpec] = {m.name: m for m in (
    MetricSpec("fid", "image", {"fid": False}, _fid, feature_net="inception", primary_rank=0,
               count_biased=True),
    MetricSpec("is", "image", {"inception_score": True}, _is, feature_net="inception"),
    MetricSpec("fvd", "video", {"fvd": False}, _fvd, feature_net="i3d", primary_rank=1, count_biased=True),
    MetricSpec("fd_digits", "image", {"fd_digits": False}, _vs_reference(_image_net, "fd_digits"),
               needs_digits=True, primary_rank=2, count_biased=True),
    MetricSpec("digits_accuracy", "image", {"digits_accuracy": True}, _vs_labels(_image_net, "digits_accuracy"),
               needs_digits=True, auto_if_class_conditional=True),
    MetricSpec("fvd_digits", "video", {"fvd_digits": False}, _vs_reference(_clip_net, "fvd_digits"),
               needs_digits=True, primary_rank=3, count_biased=True),
    MetricSpec("digit_clip_accuracy", "video", {"digit_clip_accuracy": True},
               _vs_labels(_clip_net, "digit_clip_accuracy"), needs_digits=True, auto_if_class_conditional=True),
    MetricSpec("frame_pred", "video", {"frame_pred_mse": False, "frame_pred_psnr": True}, _frame_pred,
               needs_frame_prediction=True, primary_rank=4),
)}
