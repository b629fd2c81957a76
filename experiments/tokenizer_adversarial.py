"""Does the tokenizer's adversarial loss help? The same image tokenizer trained on the
embedded digits (32x32 RGB) with MSE only and with the patch-discriminator loss, scored on
the held-out digits: reconstruction PSNR, and the digits Fréchet distance (fd_digits) of the
reconstructions to the real held-out images.

  python -m experiments.tokenizer_adversarial --json experiments/results/tokenizer_adversarial_cpu.json

Both runs share every setting (configs/digits_vq.yaml's tokenizer, narrowed and shortened
by the flags to fit a few minutes on 2 CPU cores; same seed and batches); the adversarial one
adds tokenizer.adversarial_weight from tokenizer.adversarial_start on. PSNR rewards the
blurry mean and is expected to drop a little with the adversarial term; the FD measures how
much the reconstructions look like digits to a digits classifier (fd_digits: not FID, and
comparable only with the same net). For scale, the FD between the real training images and
the held-out ones is printed too (reconstructions of the held-out images themselves can
come closer to them than other real digits do).
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from benchmarks.common import write_json
from nestgen.configschema import from_dict
from nestgen.data.digits import digit_split
from nestgen.data.image_files import digit_images
from nestgen.metrics.digits_metrics import digits_frechet_metric, digits_stats
from nestgen.metrics.digits_train import train_digit_classifier
from nestgen.metrics.sums import chunks_of
from nestgen.tokenizers import (TokenizerConfig, evaluate_tokenizer, images_to_pixels, pixels_to_uint8,
                                train_tokenizer)


def _tokenizer_cfg(args) -> TokenizerConfig:
    import yaml
    with open("configs/digits_vq.yaml") as f:
        t = yaml.safe_load(f)["tokenizer"]
    return from_dict(TokenizerConfig, t | {"steps": args.steps, "batch_size": args.batch_size,
                                           "base_width": args.base_width, "max_width": 2 * args.base_width,
                                           "device": "cpu", "log_every": max(1, args.steps // 4)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--base-width", type=int, default=16)
    ap.add_argument("--adversarial-weight", type=float, default=0.01)
    ap.add_argument("--adversarial-start", type=int, default=150)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    images, _ = digit_images(32)
    train_idx, val_idx = digit_split(len(images), 0.1, 0)        # the generator's own split
    train_px, val_px = images_to_pixels(images[train_idx]), images_to_pixels(images[val_idx])
    net, info = train_digit_classifier(epochs=15, seed=0)

    def fd_digits(x, reference):
        """x's fd_digits against the reference images (streamed in one chunk)."""
        metric = digits_frechet_metric("fd_digits", net, info, digits_stats(net, reference), "digit images")
        return metric.over(chunks_of(x))[0]
    floor = fd_digits(images[val_idx], images[train_idx]).value

    base = _tokenizer_cfg(args)
    runs = {"mse_only": base,
            "adversarial": dataclasses.replace(base, adversarial_weight=args.adversarial_weight,
                                               adversarial_start=args.adversarial_start)}
    rows = {}
    for name, cfg in runs.items():
        t0 = time.perf_counter()
        model, history = train_tokenizer(cfg, train_px, progress=False)
        seconds = time.perf_counter() - t0
        ev = evaluate_tokenizer(model, val_px)
        recon = pixels_to_uint8(model.decode(model.encode(val_px, 256), 256))
        fd = fd_digits(recon, images[val_idx])
        rows[name] = {"psnr": ev["psnr"], "fd_digits": fd.value, "usage": ev["usage"],
                      "perplexity": ev["perplexity"], "train_seconds": round(seconds, 1),
                      "adversarial_weight": cfg.adversarial_weight, "adversarial_start": cfg.adversarial_start,
                      "history": history}
        print(f"{name:12s} held-out PSNR {ev['psnr']:6.2f} dB   fd_digits {fd.value:8.3f}   "
              f"usage {ev['usage']:.2f}   {seconds:6.1f} s")
    print(f"{'real':12s} fd_digits of the real training images to the held-out ones: {floor:.3f}")
    write_json(args.json, {
        "benchmark": "tokenizer_adversarial", "data": "embedded digits 32x32 RGB, held-out split 0.1 seed 0",
        "num_train": len(train_idx), "num_heldout": len(val_idx), "threads": args.threads,
        "tokenizer": dataclasses.asdict(base), "fd_digits_real_train_vs_heldout": floor,
        "digits_net": {"net_hash": fd.protocol["feature_net"]["net_hash"],
                       "holdout_accuracy": info["holdout_accuracy"]},
        "runs": rows})


if __name__ == "__main__":
    main()
