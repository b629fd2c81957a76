"""The `nestgen` command line. Subcommands import their heavy dependencies lazily."""
from __future__ import annotations

import argparse
import json
import sys
import time


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("config", nargs=None if required else "?", help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.steps=200 (repeatable)")


def _decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--schedule", help="preset name or e.g. 8x3,4x3,2x3,1x3 (default: config's)")
    p.add_argument("--steps", type=int, help="decoding steps K (default: config's)")
    p.add_argument("--cache", help="none | on_switch | every:R (default: config's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    p.add_argument("--temperature", type=float)


def _decode_cfg(base, args):
    from nestgen.configschema import from_dict, to_dict
    from nestgen.config import DecodeConfig
    d = to_dict(base)
    for key, val in (("schedule", args.schedule), ("steps", args.steps), ("cache", args.cache),
                     ("guidance_scale", args.guidance), ("temperature", args.temperature)):
        if val is not None:
            d[key] = val
    if args.schedule is not None and args.steps is None:
        from nestgen.decoding.schedule import resolve_schedule
        d["steps"] = resolve_schedule(args.schedule).steps
    return from_dict(DecodeConfig, d, "decode")


def cmd_validate(args) -> int:
    from nestgen.config import config_to_dict, load_config
    import yaml
    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
    print(f"# {args.config}: valid", file=sys.stderr)
    return 0


def cmd_flops(args) -> int:
    from nestgen.config import load_config
    from nestgen.flops import decode_flops
    cfg = load_config(args.config, args.overrides)
    d = _decode_cfg(cfg.decode, args)
    print(f"schedule {d.schedule} steps {d.steps} cache {d.cache} guidance {d.guidance_scale}")
    print(decode_flops(cfg.model, d, cfg.train.cond_tokens).table())
    return 0


def cmd_train(args) -> int:
    from nestgen.config import load_config
    cfg = load_config(args.config, args.overrides)
    if args.local:
        from nestgen.local_run import train_local
        ckpt, history = train_local(cfg, args.out)
        print(json.dumps(history[-1], indent=1))
        print(f"checkpoint: {ckpt}")
        return 0
    from pipelines.ray_runtime import init_ray
    from pipelines.train import fit
    init_ray(args.ray_address)
    res = fit(cfg, args.out)
    print(json.dumps({"checkpoint": res.checkpoint_url, "mlflow_run_id": res.run_id,
                      "start_step": res.start_step, **res.metrics}, indent=1, default=str))
    return 0


def cmd_sample(args) -> int:
    from nestgen.local_run import sample_grid
    from nestgen.checkpoint import load_generator
    model, cfg, tok = load_generator(args.checkpoint, args.device)
    d = _decode_cfg(cfg.decode, args)
    info = sample_grid(model, cfg, d, args.out, num=args.num, class_label=args.class_label, seed=args.seed,
                       tokenizer=tok)
    print(json.dumps(info, indent=1))
    return 0


def cmd_demo(args) -> int:
    from nestgen.local_run import run_demo
    from nestgen.config import load_config
    cfg = load_config(args.config, args.overrides)
    t0 = time.perf_counter()
    summary = run_demo(cfg, args.out)
    print(json.dumps(summary, indent=1))
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; sample grids under {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    from nestgen.config import load_config
    from pipelines.evaluate import evaluate
    cfg = load_config(args.config, args.overrides)
    if not args.local:
        from pipelines.ray_runtime import init_ray
        init_ray(args.ray_address)
    res = evaluate(cfg, args.out, args.checkpoint or "", use_ray=not args.local, log_mlflow=not args.no_mlflow)
    s = res.report.summary()
    print(json.dumps({"summary": res.files["summary"], "plot": res.files["plot"], "mlflow_run_id": res.run_id,
                      "metric": s["metric"], "baseline": s["baseline"],
                      "searched": s["search"]["chosen"] if s["search"] else None,
                      "seconds": round(res.seconds, 1)}, indent=1))
    return 0


def cmd_run(args) -> int:
    from nestgen.config import load_config
    from pipelines.pipeline import run_pipeline
    cfg = load_config(args.config, args.overrides)
    run_pipeline(cfg, args.from_step, args.only, args.dry_run, args.ray_address)
    return 0


def cmd_data(args) -> int:
    if args.dataset == "digits":
        from nestgen.data.image_files import write_digit_images
        info = write_digit_images(args.out, size=args.size or 32, holdout_fraction=args.holdout, seed=args.seed)
    else:
        from nestgen.data.moving_digits import write_moving_digits
        info = write_moving_digits(args.out, num_clips_per_class=args.clips_per_class, frames=args.frames,
                                   size=args.size or 64, fps=args.fps, digits_per_clip=args.digits_per_clip,
                                   seed=args.seed, holdout_fraction=args.holdout)
    print(json.dumps(info, indent=1))
    return 0


def cmd_tokenizer_train(args) -> int:
    from nestgen.config import load_config
    cfg = load_config(args.config, args.overrides)
    if not args.local:
        from pipelines.ray_runtime import init_ray
        from pipelines.train_tokenizer import fit_tokenizer
        init_ray(args.ray_address)
        res = fit_tokenizer(cfg, args.data, args.out, args.split)
        print(json.dumps({"checkpoint": res.checkpoint_url, "tokenizer_hash": res.tokenizer_hash,
                          "mlflow_run_id": res.run_id, **res.metrics}, indent=1, default=str))
        return 0
    from nestgen.data.media import ClipSpec
    from nestgen.data.raw_files import load_raw_split
    from nestgen.tokenizers import (clips_to_pixels, evaluate_tokenizer, images_to_pixels, save_tokenizer,
                                    train_tokenizer)
    t = cfg.tokenizer
    clip = ClipSpec(frames=t.frames, fps=cfg.tokenize.fps, size=t.image_size, channels=t.channels)
    arrays, _, failed = load_raw_split(args.data, args.split, t.kind, t.image_size, t.channels, clip)
    for f in failed:
        print(f"skipped {f['source_uri']}: {f['reason']}", file=sys.stderr)
    pixels = (clips_to_pixels if t.kind == "video" else images_to_pixels)(arrays)
    model, history = train_tokenizer(t, pixels)
    metrics = evaluate_tokenizer(model, pixels)
    save_tokenizer(args.out, model, history=history, metrics=metrics)
    print(json.dumps({"checkpoint": args.out, "samples": len(arrays), **metrics}, indent=1))
    return 0


def cmd_tokenize(args) -> int:
    from nestgen.config import load_config
    from pipelines.ray_runtime import init_ray
    from pipelines.tokenize import tokenize_to_shards
    cfg = load_config(args.config, args.overrides)
    init_ray(args.ray_address)
    m = tokenize_to_shards(args.input, args.output, args.tokenizer, cfg.tokenize, force=args.force)
    print(json.dumps({k: m[k] for k in ("splits", "grid_shape", "vocab_size", "shards_dir")} |
                     {"failed": len(m["failed"]), "tokenizer_hash": m["tokenizer"]["hash"]}, indent=1))
    for f in m["failed"]:
        print(f"failed {f['source_uri']}: {f['reason']}", file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    from nestgen.serving.deployment import read_serve_file
    cfg, host, port = read_serve_file(args.config, args.overrides + (
        [f"checkpoint={args.checkpoint}"] if args.checkpoint else []))
    from pipelines.serve import run_local
    run_local(cfg, args.host or host, args.port or port, args.ray_address)
    return 0


def cmd_generate(args) -> int:
    import base64
    from pathlib import Path

    from nestgen.serving import client
    fmt = client.FORMAT_OF_SUFFIX.get(Path(args.out).suffix.lower())
    if fmt is None:
        raise ValueError(f"--out {args.out}: the suffix picks the format: .png, .mp4 or .json (tokens)")
    payload = {"class_label": args.class_label, "num_samples": args.num, "seed": args.seed, "format": fmt}
    for key, val in (("schedule", args.schedule), ("steps", args.steps), ("cache", args.cache),
                     ("guidance_scale", args.guidance), ("temperature", args.temperature)):
        if val is not None:
            payload[key] = val
    if args.condition:
        payload["condition"] = {"mp4_base64": base64.b64encode(Path(args.condition).read_bytes()).decode()}
    try:
        resp = client.generate(args.url, payload, timeout=args.timeout)
    except client.ServiceError as e:
        print(f"nestgen generate: the service refused: {e}", file=sys.stderr)
        return 1
    written = client.save_samples(resp, args.out)
    print(json.dumps({k: v for k, v in resp.items() if k != "samples"} | {"written": written}, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="nestgen", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="load a config strictly and print it resolved")
    _add_config_args(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("flops", help="analytic GFLOPs per sample of a decode, step by step")
    _add_config_args(p)
    _decode_args(p)
    p.set_defaults(func=cmd_flops)

    p = sub.add_parser("train", help="train a nested transformer with Ray Train (or --local)")
    _add_config_args(p)
    p.add_argument("--out", required=True, help="output folder or URL (checkpoints; same URL resumes)")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: a local Ray)")
    p.add_argument("--local", action="store_true", help="single process, no Ray")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="generate a PNG grid from a checkpoint")
    p.add_argument("checkpoint")
    _decode_args(p)
    p.add_argument("--num", type=int, default=40)
    p.add_argument("--class", dest="class_label", type=int, default=None,
                   help="class id (default: cycle through all classes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="PNG path or URL")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("data", help="write the embedded data sets as real files")
    p.add_argument("dataset", choices=["digits", "moving-digits"])
    p.add_argument("out", help="output folder or fsspec URL")
    p.add_argument("--size", type=int, help="frame side in pixels (digits 32, moving-digits 64)")
    p.add_argument("--holdout", type=float, default=0.1, help="share written to the val split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clips-per-class", type=int, default=20)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--digits-per-clip", type=int, default=1, choices=[1, 2])
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("tokenizer-train", help="train the VQ tokenizer of CONFIG on a raw media folder (Ray Train or --local)")
    _add_config_args(p)
    p.add_argument("--data", required=True, help="raw files (ImageNet-/UCF101-like folders)")
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True,
                   help="with --local: the checkpoint URL; with Ray: the output folder (same folder resumes)")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: a local Ray)")
    p.add_argument("--local", action="store_true", help="single process, no Ray")
    p.set_defaults(func=cmd_tokenizer_train)

    p = sub.add_parser("tokenize", help="Ray step: raw files -> Parquet token shards + manifest")
    p.add_argument("--input", required=True, help="raw files URL (local, file://, gs://, ...)")
    p.add_argument("--output", required=True, help="shard folder URL")
    p.add_argument("--tokenizer", required=True, help="tokenizer checkpoint URL")
    p.add_argument("--config", default=None, help="YAML config (its `tokenize` section)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: a local Ray)")
    p.add_argument("--force", action="store_true", help="re-tokenize even if the output is up to date")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("demo", help="train on digits, then sample with every preset")
    p.add_argument("config", nargs="?", default=None, help="YAML config (default: the built-in digits config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="runs/demo")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="the whole pipeline as a durable DAG: data -> tokenizer -> tokenize -> "
                                    "train -> evaluate -> serve; unchanged complete steps are skipped")
    _add_config_args(p)
    p.add_argument("--from", dest="from_step", help="re-run this step and everything after it")
    p.add_argument("--only", help="run just this step (its upstream steps must be complete)")
    p.add_argument("--dry-run", action="store_true", help="print the DAG and what would run or be skipped")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("evaluate", help="quality vs GFLOPs of every schedule x cache x guidance variant "
                                         "(+ schedule search) on Ray, logged to MLflow")
    _add_config_args(p)
    p.add_argument("--checkpoint", help="checkpoint file, output folder, fsspec URL or runs:/<id> "
                                        "(default: the config's evaluate.checkpoint)")
    p.add_argument("--out", required=True, help="output URL for sample grids, the plot and summary.json")
    p.add_argument("--local", action="store_true", help="sample in this process instead of Ray actors")
    p.add_argument("--no-mlflow", action="store_true", help="write files only")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: a local Ray)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("serve", help="run the HTTP generation service on Ray Serve; blocks, prints the URL")
    p.add_argument("config", help="Serve config YAML (configs/serve_digits.yaml, as for `serve deploy`) "
                                  "or a nestgen config (its serve: section)")
    p.add_argument("--checkpoint", help="checkpoint file, output folder, fsspec URL, runs:/<id>, models:/<name>/<v>")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a serve field, e.g. --set max_batch_size=16 (repeatable)")
    p.add_argument("--host", help="bind address (default: the file's http_options, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: the file's http_options, else 8000)")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: a local Ray)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("generate", help="ask a running service for samples; the --out suffix picks the format")
    p.add_argument("--url", required=True, help="the service, e.g. http://127.0.0.1:8000")
    p.add_argument("--class", dest="class_label", type=int, default=None, help="class id (default: unconditional)")
    p.add_argument("--num", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    _decode_args(p)
    p.add_argument("--condition", help="MP4 whose first frames to continue (frame prediction models)")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--out", required=True, help=".png (a grid when --num > 1), .mp4 (video models) or .json (tokens)")
    p.set_defaults(func=cmd_generate)
    return ap


def main(argv: list[str] | None = None) -> int:
    from nestgen.configschema import ConfigError
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"nestgen {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
