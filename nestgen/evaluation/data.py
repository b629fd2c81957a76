"""The real data an evaluation compares against, and the requests it sends.

The reference statistics come from the largest real split, the training split (as ImageNet
FID uses ImageNet train), its first REFERENCE_ROWS rows: fixed per dataset, so numbers from
different evaluations of the same data are comparable. The held-out split (`val`, else
`test`, else another non-train split) is the `real data` row: real rows that are not in the
reference, scored like samples, give the metric's *floor*. It is the honest floor because
held-out rows stand where the samples stand: the reference does not contain them, and
neither the generator nor the digits feature nets (trained on the training split) saw them;
training rows disjoint from the reference would still be rows the feature net was fitted to,
and score lower than any new image can (measured: docs/method.md, section 10). The held-out
split also supplies frame prediction's conditioning clips.

Digits (data.source digits): the generator's own split of the sklearn digits, raw 8x8
levels. Shards: the shard set's splits decoded to pixels by the tokenizer that made them:
the reference is then what the generator could at best reproduce through that tokenizer,
the real-data row is `real data (tokenizer)`, and the protocol says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import torch

from nestgen.config import NestgenConfig
from nestgen.evaluation.variants import Requests, class_requests

HOLDOUT_SPLITS = ("val", "validation", "test")
REFERENCE_ROWS = 50_000     # rows of the training split in the reference at most (FID's usual 50k)


@dataclass
class EvalData:
    kind: str                          # image | video
    holdout_tokens: torch.Tensor       # (n, L)
    holdout_labels: torch.Tensor       # (n,)
    load_train: Callable[[], tuple[torch.Tensor, torch.Tensor]]   # the training split; read when first needed
    label_names: list[str]
    source: str                        # where the held-out split came from (for protocols)
    reference_source: str = "the training split"   # where the reference came from (for protocols)
    real_name: str = "real data"       # the held-out row's name: "real data (tokenizer)" when decoded by one
    max_train: int = 2000              # training rows a metric's own classifier learns from

    @cached_property
    def _train(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.load_train()

    @property
    def train_tokens(self) -> torch.Tensor:
        return self._train[0][:self.max_train]

    @property
    def train_labels(self) -> torch.Tensor:
        return self._train[1][:self.max_train]

    @property
    def reference_tokens(self) -> torch.Tensor:
        """The rows the reference statistics are computed from."""
        return self._train[0][:REFERENCE_ROWS]

    @property
    def has_real_rows(self) -> bool:
        """Held-out rows exist that the reference does not contain (not when a shard set has
        no training split and its held-out split is the reference)."""
        return self.reference_source != self.source

    @property
    def is_digits(self) -> bool:
        """Classes are the digits 0..9 in order, so digit classifiers can judge samples."""
        return self.label_names == [str(i) for i in range(10)]


def load_eval_data(cfg: NestgenConfig, max_train: int = 2000) -> EvalData:
    kind = "video" if cfg.model.is_video else "image"
    if cfg.data.source == "digits":
        from nestgen.data.digits import load_digit_tokens
        (tr_t, tr_y), (ho_t, ho_y) = load_digit_tokens(cfg.data.holdout_fraction, cfg.data.seed)
        split = f"(fraction {cfg.data.holdout_fraction}, seed {cfg.data.seed})"
        return EvalData(kind, ho_t, ho_y, lambda: (tr_t, tr_y), [str(i) for i in range(10)],
                        f"sklearn digits held-out split {split}", f"sklearn digits training split {split}",
                        max_train=max_train)
    from nestgen.data.shards import load_split_tokens, read_manifest
    m = read_manifest(cfg.data.url)
    splits = list(m["splits"])
    holdout = next((s for s in HOLDOUT_SPLITS if s in splits), None) or \
        next((s for s in splits if s != "train"), "train")
    ho_t, ho_y, _ = load_split_tokens(cfg.data.url, holdout)

    train = "train" if "train" in splits else holdout

    def load_train():
        tr_t, tr_y, _ = load_split_tokens(cfg.data.url, train) if train != holdout else (ho_t, ho_y, m)
        return tr_t, tr_y
    if len(ho_t) == 0:
        raise ValueError(f"split {holdout!r} of {cfg.data.url} is empty: nothing to compare samples against")
    names = m.get("label_map") or {}
    label_names = [n for n, _ in sorted(names.items(), key=lambda kv: kv[1])] if isinstance(names, dict) else list(names)
    source = f"split {holdout!r} of {cfg.data.url} decoded by its tokenizer"
    # no other split: the held-out split is the reference too, and there is no real-data row
    return EvalData(kind, ho_t, ho_y, load_train, label_names, source,
                    f"split {train!r} of {cfg.data.url} decoded by its tokenizer" if train != holdout else source,
                    "real data (tokenizer)", max_train)


def eval_requests(cfg: NestgenConfig, data: EvalData, n: int, seed: int) -> Requests:
    """N requests. Frame prediction (train.cond_tokens > 0): each request is conditioned on
    the leading tokens of a held-out clip (cycled) with that clip's label, and carries the
    clip's tokens to score the predicted frames against; `groups` says how many clips."""
    c = cfg.train.cond_tokens
    if not c:
        return class_requests(cfg.model.num_classes, n, seed)
    idx = torch.arange(n) % len(data.holdout_tokens)
    tokens = data.holdout_tokens[idx]
    labels = data.holdout_labels[idx] if cfg.model.num_classes else torch.zeros(n, dtype=torch.long)
    return Requests(labels, range(seed, seed + n), tokens[:, :c].clone(), tokens, min(n, len(data.holdout_tokens)))


def cond_frames(cfg: NestgenConfig, pixel_frames: int) -> int:
    """Pixel frames fully given by the conditioning tokens (whole latent frames only). The
    rendered clip's length tells how its tokenizer groups frames: t latent frames are either
    t * s pixel frames, or 1 + (t - 1) * s for a causal tokenizer (frame 0 alone). s is a power
    of two, so only a causal clip has an odd length, except at s = 1 where both rules agree."""
    from nestgen.tokenizers import pixel_frames as frames_of
    if len(cfg.model.grid) != 3 or not cfg.train.cond_tokens:
        return 0
    t, h, w = cfg.model.grid
    causal = pixel_frames % 2 == 1
    return frames_of(cfg.train.cond_tokens // (h * w), (pixel_frames - causal) // (t - causal), causal)
