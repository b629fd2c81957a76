"""The held-out data an evaluation compares against, and the requests it sends.

Digits (data.source digits): the generator's own held-out split of the sklearn digits.
Shards: the held-out split of the shard set (`val`, else `test`, else another non-train
split), decoded to pixels by the tokenizer that made them: the reference is then what the
generator could at best reproduce through that tokenizer, and the protocol says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Callable

import torch

from nestgen.evaluation.variants import Requests, class_requests

if TYPE_CHECKING:  # annotations only: nestgen.config imports this package (its evaluate section)
    from nestgen.config import NestgenConfig

HOLDOUT_SPLITS = ("val", "validation", "test")


@dataclass
class EvalData:
    kind: str                          # image | video
    holdout_tokens: torch.Tensor       # (n, L)
    holdout_labels: torch.Tensor       # (n,)
    load_train: Callable[[], tuple[torch.Tensor, torch.Tensor]]   # read only if a metric needs it
    label_names: list[str]
    source: str                        # where the held-out split came from (for protocols)

    @cached_property
    def _train(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.load_train()

    @property
    def train_tokens(self) -> torch.Tensor:
        return self._train[0]

    @property
    def train_labels(self) -> torch.Tensor:
        return self._train[1]

    @property
    def is_digits(self) -> bool:
        """Classes are the digits 0..9 in order, so digit classifiers can judge samples."""
        return self.label_names == [str(i) for i in range(10)]


def load_eval_data(cfg: NestgenConfig, max_train: int = 2000) -> EvalData:
    kind = "video" if cfg.model.is_video else "image"
    if cfg.data.source == "digits":
        from nestgen.data.digits import load_digit_tokens
        (tr_t, tr_y), (ho_t, ho_y) = load_digit_tokens(cfg.data.holdout_fraction, cfg.data.seed)
        return EvalData(kind, ho_t, ho_y, lambda: (tr_t[:max_train], tr_y[:max_train]), [str(i) for i in range(10)],
                        f"sklearn digits held-out split (fraction {cfg.data.holdout_fraction}, seed {cfg.data.seed})")
    from nestgen.data.shards import load_split_tokens, read_manifest
    m = read_manifest(cfg.data.url)
    splits = list(m["splits"])
    holdout = next((s for s in HOLDOUT_SPLITS if s in splits), None) or \
        next((s for s in splits if s != "train"), "train")
    ho_t, ho_y, _ = load_split_tokens(cfg.data.url, holdout)

    def load_train():
        tr_t, tr_y, _ = load_split_tokens(cfg.data.url, "train") if "train" in splits else (ho_t, ho_y, m)
        return tr_t[:max_train], tr_y[:max_train]
    if len(ho_t) == 0:
        raise ValueError(f"split {holdout!r} of {cfg.data.url} is empty: nothing to compare samples against")
    names = m.get("label_map") or {}
    label_names = [n for n, _ in sorted(names.items(), key=lambda kv: kv[1])] if isinstance(names, dict) else list(names)
    note = "" if holdout != "train" else " (no held-out split: the TRAINING split is the reference)"
    return EvalData(kind, ho_t, ho_y, load_train, label_names,
                    f"split {holdout!r} of {cfg.data.url} decoded by its tokenizer{note}")


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
