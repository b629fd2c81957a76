"""Training, saving and loading the digits feature networks (seconds on a laptop CPU).

The image net trains on the *train* split of nestgen.data.digits (same holdout_fraction and
seed as the generator's data), so its held-out split is unseen by both the generator and
the feature net. The clip net trains on whatever clips it is given (e.g. from
nestgen.data.moving_digits). Training is seeded and leaves the global RNG untouched.
"""
from __future__ import annotations

import io
import time
from typing import Any, Callable

import fsspec
import numpy as np
import torch
import torch.nn.functional as F

from nestgen.metrics.digits_nets import DigitClipNet, DigitImageNet, build_digits_net, net_hash
from nestgen.metrics.inputs import iter_batches
from nestgen.metrics.protocol import bytes_sha256
from nestgen.storage import write_bytes_atomic
from nestgen.checkpoint_files import load_torch_bytes

__all__ = ["digits_image_splits", "train_digit_classifier", "train_clip_classifier",
           "save_digits_net", "load_digits_net", "predict"]


def digits_image_splits(holdout_fraction: float = 0.1, seed: int = 0):
    """((train uint8 (n,8,8), labels), (holdout uint8, labels)): the generator's own split."""
    from nestgen.data.digits import digit_tokens_to_images, load_digit_tokens

    (tr_t, tr_y), (ho_t, ho_y) = load_digit_tokens(holdout_fraction, seed)
    return ((digit_tokens_to_images(tr_t), tr_y.numpy()),
            (digit_tokens_to_images(ho_t), ho_y.numpy()))


def _augment(x: torch.Tensor, gen: torch.Generator, max_shift: float = 0.12,
             max_rot: float = 0.15, scale: float = 0.1) -> torch.Tensor:
    """Small random affine jitter per sample (images in [0,1], background 0), so the
    classifier does not depend on the exact alignment of the sklearn digits."""
    n = x.shape[0]
    u = lambda lo, hi: torch.rand(n, generator=gen) * (hi - lo) + lo  # noqa: E731
    ang, s = u(-max_rot, max_rot), u(1 - scale, 1 + scale)
    tx, ty = u(-max_shift, max_shift), u(-max_shift, max_shift)
    theta = torch.stack([torch.stack([s * torch.cos(ang), -s * torch.sin(ang), tx], 1),
                         torch.stack([s * torch.sin(ang), s * torch.cos(ang), ty], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@torch.no_grad()
def predict(net, data, batch_size: int = 256) -> np.ndarray:
    """Class predictions for uint8 images/clips, one array or an iterable of batches
    (preprocessed by the net itself)."""
    net.eval()
    out = [net(net.preprocess(b)).argmax(1).cpu() for b in iter_batches(data, batch_size)]
    return torch.cat(out).numpy()


def _fit(net, n: int, epochs: int, batch_size: int, lr: float, gen: torch.Generator,
         batch_loss: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """AdamW + one-cycle LR over `epochs` shuffled passes; `batch_loss(indices)` -> loss."""
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((n + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            loss = batch_loss(perm[i:i + batch_size])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()


def train_digit_classifier(epochs: int = 15, seed: int = 0, holdout_fraction: float = 0.1,
                           data_seed: int = 0, size: int = 16, batch_size: int = 64,
                           lr: float = 2e-3, augment: bool = True, device: str = "cpu"
                           ) -> tuple[DigitImageNet, dict[str, Any]]:
    """Train DigitImageNet on the digits train split; info has held-out accuracy and timing."""
    t0 = time.perf_counter()
    (tr_x, tr_y), (ho_x, ho_y) = digits_image_splits(holdout_fraction, data_seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DigitImageNet(size=size).to(device)
    gen = torch.Generator().manual_seed(seed)
    x = net.preprocess(tr_x).cpu()
    y = torch.from_numpy(tr_y).long()

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        xb = _augment(x[idx], gen) if augment else x[idx]
        return F.cross_entropy(net(xb.to(device)), y[idx].to(device))

    _fit(net, len(x), epochs, batch_size, lr, gen, batch_loss)
    info = {
        "kind": net.kind, "config": dict(net.config), "seed": seed, "epochs": epochs,
        "trained_on": f"sklearn digits train split (holdout_fraction={holdout_fraction}, seed={data_seed})",
        "num_train": int(len(tr_x)), "num_holdout": int(len(ho_x)),
        "holdout_accuracy": float((predict(net, ho_x) == ho_y).mean()) if len(ho_x) else float("nan"),
        "train_seconds": round(time.perf_counter() - t0, 2), "net_hash": net_hash(net),
    }
    return net, info


def _shuffle_frames(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Negatives for the frame-order task: each clip's frames in a random non-identity order."""
    t = x.shape[2]
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        p = torch.randperm(t, generator=gen)
        while t > 1 and bool((p == torch.arange(t)).all()):
            p = torch.randperm(t, generator=gen)
        out[i] = x[i][:, p]
    return out


def train_clip_classifier(clips: np.ndarray, labels: np.ndarray, epochs: int = 6, seed: int = 0,
                          size: int = 32, batch_size: int = 32, lr: float = 3e-3,
                          order_task: bool = True, val: tuple[np.ndarray, np.ndarray] | None = None,
                          device: str = "cpu") -> tuple[DigitClipNet, dict[str, Any]]:
    """Train DigitClipNet on uint8 clips (n, T, H, W[, C]) with digit labels (n,); `val`:
    (clips, or an iterable of batches of them, labels) for info['val_accuracy']."""
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DigitClipNet(size=size).to(device)
    gen = torch.Generator().manual_seed(seed)
    x = torch.cat([net.preprocess(clips[i:i + 256]).cpu() for i in range(0, len(clips), 256)])
    y = torch.as_tensor(np.asarray(labels)).long()

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        xb, yb = x[idx].to(device), y[idx].to(device)
        if not order_task:
            return F.cross_entropy(net(xb), yb)
        # negatives: frame-shuffled copies of half the batch (1.5x the cost, not 2x)
        neg = _shuffle_frames(x[idx[: (len(idx) + 1) // 2]], gen).to(device)
        feats = F.relu(net.features(torch.cat([xb, neg])))
        n = len(idx)
        order_y = torch.cat([torch.ones(n), torch.zeros(len(neg))]).long().to(device)
        return F.cross_entropy(net.head(feats[:n]), yb) + F.cross_entropy(net.order_head(feats), order_y)

    _fit(net, len(x), epochs, batch_size, lr, gen, batch_loss)
    info: dict[str, Any] = {
        "kind": net.kind, "config": dict(net.config), "seed": seed, "epochs": epochs,
        "order_task": order_task, "trained_on": f"{len(x)} clips of shape {tuple(clips.shape[1:])}",
        "num_train": int(len(x)), "train_seconds": round(time.perf_counter() - t0, 2),
        "net_hash": net_hash(net),
    }
    if val is not None:
        info["val_accuracy"] = float((predict(net, val[0], 128) == np.asarray(val[1])).mean())
    return net, info


def save_digits_net(url: str, net, info: dict[str, Any] | None = None) -> str:
    """Write {kind, config, state_dict, info} to any fsspec URL atomically; returns the
    file's sha256 (also what load_digits_net reports)."""
    payload = {"kind": net.kind, "config": dict(net.config),
               "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
               "info": dict(info or {})}
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    write_bytes_atomic(url, data)
    return bytes_sha256(data)


def load_digits_net(url: str, device: str | torch.device = "cpu"):
    """(net in eval mode, info) with info['file_sha256'] and info['net_hash'] filled in."""
    with fsspec.open(url, "rb") as f:
        data = f.read()
    payload = load_torch_bytes(data, url)
    net = build_digits_net(payload["kind"], payload["config"])
    net.load_state_dict(payload["state_dict"])
    net = net.to(device).eval()
    info = dict(payload.get("info") or {})
    info.update({"file_sha256": bytes_sha256(data), "net_hash": net_hash(net), "path": url})
    return net, info
