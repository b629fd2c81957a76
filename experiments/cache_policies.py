"""The price of the KV cache: quality against GFLOPs for each cache policy on trained digits.

  python -m experiments.cache_policies --json experiments/results/cache_policies_cpu.json
  python -m experiments.cache_policies --checkpoint runs/digits/checkpoint.pt    # a trained model

Trains a raw-digits model (configs/digits.yaml, fewer steps by default) in this process
with nestgen's training loop for each --train-seeds value, or loads --checkpoint. Every
policy decodes the same requests (labels cycled over the classes, sample i with seed i)
with the MaGNeTS schedule. Per policy: GFLOPs per sample (analytic), the share of output
tokens that differ from `none`, fd_digits and digits_accuracy, and a paired bootstrap 95%
interval over samples of the relative fd_digits change against `none` (every replicate
resamples the same sample indices for the policy and for `none`).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

from benchmarks.common import write_json
from nestgen.data.digits import digit_tokens_to_images, load_digit_tokens
from nestgen.decoding.maskgit import decode
from nestgen.flops import decode_flops
from nestgen.metrics.digits_metrics import digits_accuracy_metric, digits_frechet_metric, digits_stats
from nestgen.metrics.digits_train import train_digit_classifier
from nestgen.metrics.frechet import feature_stats, frechet_distance_stats
from nestgen.metrics.intervals import paired_bootstrap
from nestgen.metrics.sums import chunks_of

POLICIES = ["none", "every:2", "every:3", "on_switch", "every:2+cls", "on_switch+cls"]


def _train(args, seed: int):
    from nestgen.training.loop import train_on_tokens
    from pipelines.config import load_run_config
    cfg = load_run_config(args.config, [f"train.steps={args.steps}", f"seed={seed}",
                                        f"model.width={args.width}", f"model.depth={args.depth}",
                                        f"train.log_every={args.steps}"])
    (tokens, labels), _ = load_digit_tokens(cfg.data.holdout_fraction, cfg.data.seed)
    t0 = time.perf_counter()
    trainer, history = train_on_tokens(cfg, tokens, labels, progress=False)
    print(f"trained seed {seed}: {args.steps} steps in {time.perf_counter() - t0:.0f}s, "
          f"losses {({k: round(v, 3) for k, v in history[-1].items() if k.startswith('loss/')})}", flush=True)
    return trainer.eval_model().eval(), cfg


def _models(args):
    if args.checkpoint:
        from nestgen.checkpoint import load_model
        model, cfg = load_model(args.checkpoint)
        yield "checkpoint", model.eval(), cfg
        return
    for seed in args.train_seeds:
        yield (f"seed {seed}", *_train(args, seed))


@torch.no_grad()
def _features(net, images: np.ndarray) -> np.ndarray:
    return net.features(net.preprocess(images)).double().numpy()


def evaluate_model(model, cfg, net, info, ref, args) -> dict:
    n = args.samples
    labels = torch.arange(n) % cfg.model.num_classes
    rows, out = [], {}
    baseline = decode_flops(cfg.model, replace(cfg.decode, schedule="baseline", steps=12, cache="none")).gflops
    for policy in POLICIES:
        d = replace(cfg.decode, schedule=args.schedule, steps=12, cache=policy)
        t0 = time.perf_counter()
        tokens = torch.cat([decode(model, labels[i:i + args.batch], d, seeds=range(i, min(n, i + args.batch))).tokens
                            for i in range(0, n, args.batch)])
        seconds = time.perf_counter() - t0
        images = digit_tokens_to_images(tokens)
        out[policy] = (tokens, _features(net, images), images)
        gflops = decode_flops(cfg.model, d).gflops
        rows.append({"policy": policy, "gflops_per_sample": gflops, "saving_vs_baseline": baseline / gflops,
                     "decode_seconds": seconds,
                     "fd_digits": digits_frechet_metric("fd_digits", net, info, ref, "the held-out digits")
                     .over(chunks_of(images))[0].value,
                     "digits_accuracy": digits_accuracy_metric("digits_accuracy", net, info)
                     .over(chunks_of(images, labels.numpy()))[0].value})
    none_tokens, none_feat, _ = out["none"]
    fd_of = lambda feat: frechet_distance_stats(feature_stats(feat), ref)  # noqa: E731
    for row in rows:
        tokens, feat, _ = out[row["policy"]]
        row["tokens_changed"] = float((tokens != none_tokens).float().mean())
        row["samples_changed"] = float((tokens != none_tokens).any(1).float().mean())
        if row["policy"] != "none":
            iv = paired_bootstrap(lambda idx: fd_of(feat[idx]) / fd_of(none_feat[idx]) - 1, n,
                                  args.replicates, seed=args.bootstrap_seed)
            row["fd_change"] = iv.as_dict()
    return {"baseline_gflops_per_sample": baseline, "rows": rows}


def _fmt_table(result: dict) -> str:
    lines = [f"{'policy':15s} {'GFLOPs':>7s} {'saving':>6s} {'tok chg':>7s} {'fd_digits':>9s} "
             f"{'acc':>6s} {'fd change vs none [95% CI]':>28s}"]
    for r in result["rows"]:
        c = r.get("fd_change")
        ci = f"{100 * c['value']:+6.1f}% [{100 * c['lo']:+6.1f}, {100 * c['hi']:+6.1f}]" if c else "-"
        lines.append(f"{r['policy']:15s} {r['gflops_per_sample']:7.4f} {r['saving_vs_baseline']:5.2f}x "
                     f"{100 * r['tokens_changed']:6.2f}% {r['fd_digits']:9.2f} {r['digits_accuracy']:6.3f} {ci:>28s}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="evaluate this trained digits checkpoint instead of training")
    p.add_argument("--config", default="configs/digits.yaml")
    p.add_argument("--train-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=800, help="training steps per model")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--schedule", default="magnets")
    p.add_argument("--samples", type=int, default=1000, help="decoded samples per policy")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--replicates", type=int, default=500, help="bootstrap replicates")
    p.add_argument("--bootstrap-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="experiments/results/cache_policies_cpu.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = {"schedule": args.schedule, "samples": args.samples, "replicates": args.replicates,
              "policies": POLICIES, "models": []}
    for name, model, cfg in _models(args):     # evaluated (and the JSON written) as each one exists
        if not result["models"]:
            net, info = train_digit_classifier(epochs=15, seed=cfg.data.seed,
                                               holdout_fraction=cfg.data.holdout_fraction)
            _, (ho_tokens, _) = load_digit_tokens(cfg.data.holdout_fraction, cfg.data.seed)
            ref = digits_stats(net, digit_tokens_to_images(ho_tokens))
            result.update(digits_net={"net_hash": info["net_hash"], "holdout_accuracy": info["holdout_accuracy"]},
                          reference=f"{ref.n} held-out digits")
        res = evaluate_model(model, cfg, net, info, ref, args)
        res.update(model=name, width=cfg.model.width, depth=cfg.model.depth, train_steps=cfg.train.steps,
                   train_seed=cfg.seed)
        result["models"].append(res)
        print(f"\n{name} (width {cfg.model.width}, depth {cfg.model.depth}, {cfg.train.steps} steps), "
              f"{args.samples} samples, schedule {args.schedule}, baseline 1x12 "
              f"{res['baseline_gflops_per_sample']:.4f} GFLOPs/sample")
        print(_fmt_table(res), flush=True)
        result["wall_seconds"] = time.perf_counter() - t0
        write_json(args.json, result)
    print(f"\ntotal {result['wall_seconds']:.0f}s")


if __name__ == "__main__":
    main()
