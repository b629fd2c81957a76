"""The `nestgen` command line.

Every subcommand is registered here (add_parsers), with the flags shared by several of them
from pipelines.cli_args. The commands that need no cluster (validate, flops, sample, data,
index, demo, generate) run here; the pipeline's commands run a step module's function: train,
tokenizer-train, tokenize, run, evaluate and serve. A config or value error ends a command
with one line, `nestgen <command>: error: ...`, and exit status 2.
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import traceback
import urllib.error
from pathlib import Path

import yaml

from nestgen.checkpoint import load_generator
from nestgen.config import config_to_dict
from nestgen.flops import decode_flops
from nestgen.local_run import run_demo, sample_grid
from pipelines import console, evaluate, pipeline, serve, tokenize, train, train_tokenizer
from pipelines.cli_args import (add_config_args, add_decode_args, add_ray_address, add_set_arg, decode_config,
                                decode_overrides, runnable)
from pipelines.config import load_run_config, placeholders
from pipelines.errors import SELF_EXPLAINED, explain
from pipelines.model_registry import resolve_model_uri
from pipelines.serve import client


def cmd_validate(args) -> int:
    cfg = load_run_config(args.config, args.overrides)
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
    found = placeholders(cfg)
    if not found:
        print(f"# {args.config}: valid", file=sys.stderr)
        return 0
    print(f"# {args.config}: valid, but {len(found)} value(s) are placeholders to replace before running "
          "(infra/README.md):", file=sys.stderr)
    for f in found:
        print(f"#   {f}", file=sys.stderr)
    return 1


def cmd_flops(args) -> int:
    cfg = load_run_config(args.config, args.overrides)
    d = decode_config(cfg.decode, args)
    print(f"schedule {d.schedule} steps {d.steps} cache {d.cache} guidance {d.guidance_scale}")
    print(decode_flops(cfg.model, d, cfg.train.cond_tokens).table())
    return 0


def cmd_sample(args) -> int:
    model, cfg, tok = load_generator(resolve_model_uri(args.checkpoint), args.device)
    d = decode_config(cfg.decode, args)
    info = sample_grid(model, cfg, d, args.out, num=args.num, class_label=args.class_label, seed=args.seed,
                       tokenizer=tok)
    print(json.dumps(info, indent=1))
    return 0


def cmd_demo(args) -> int:
    cfg = load_run_config(args.config, args.overrides)
    t0 = time.perf_counter()
    summary = run_demo(cfg, cfg.evaluate, args.out)
    print(json.dumps(summary, indent=1))
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; sample grids under {args.out}")
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


def cmd_index(args) -> int:
    from nestgen.data import layouts
    options = {"imagenet": {"val_labels": args.val_labels, "synsets": args.synsets},
               "ucf101": {"split_number": args.split_number},
               "kinetics600": {"annotations": args.annotations, "full_videos": args.full_videos}}[args.layout]
    summary = layouts.CONVERTERS[args.layout](args.root, args.out, **options)
    print(json.dumps(summary | {"refused": len(summary["refused"])}, indent=1))
    for f in summary["refused"]:
        print(f"refused {f['source_uri']}: {f['reason']}", file=sys.stderr)
    if not summary["relative_paths"]:
        print(f"nestgen index: {args.root} is not under the folder of {args.out}, so the index names its files by "
              "absolute path / URL: reading it needs tokenize.allow_external_urls: true (or write the index "
              "inside the data set's folder)", file=sys.stderr)
    return 0


def _show_step(progress, event: dict) -> None:
    """A streamed answer's step event on the progress bar: steps done of K, tokens chosen."""
    progress.total = event["steps"]
    progress.update(event["step"] - progress.n)
    chosen, tokens = sum(event["unmasked"]), sum(len(t) for t in event["tokens"])
    progress.set_postfix_str(f"{event['schedule']}, {chosen}/{tokens} tokens chosen")


def cmd_generate(args) -> int:
    fmt = client.FORMAT_OF_SUFFIX.get(Path(args.out).suffix.lower())
    if fmt is None:
        raise ValueError(f"--out {args.out}: the suffix picks the format: .png, .mp4 or .json (tokens)")
    payload = {"class_label": args.class_label, "num_samples": args.num, "seed": args.seed, "format": fmt,
               **decode_overrides(args)}
    if args.condition:
        payload["condition"] = {"mp4_base64": base64.b64encode(Path(args.condition).read_bytes()).decode()}
    try:
        if args.stream:
            with console.bar("decoding", unit="step") as progress:
                resp = client.generate_stream(args.url, payload, lambda ev: _show_step(progress, ev), timeout=args.timeout)
        else:
            resp = client.generate(args.url, payload, timeout=args.timeout)
    except client.ServiceError as e:
        print(f"nestgen generate: the service refused: {e}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        if isinstance(e, urllib.error.HTTPError):
            raise
        why = getattr(e, "reason", None) or e
        print(f"nestgen generate: error: no service answers at {args.url} ({why}). Fix: start one with "
              f"`{runnable('nestgen')} serve configs/serve_digits.yaml` (or `make serve`), or pass its --url",
              file=sys.stderr)
        return 1
    written = client.save_samples(resp, args.out)
    print(json.dumps({k: v for k, v in resp.items() if k != "samples"} | {"written": written}, indent=1))
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("validate", help="load a config strictly and print it resolved")
    add_config_args(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("flops", help="analytic GFLOPs per sample of a decode, step by step")
    add_config_args(p)
    add_decode_args(p)
    p.set_defaults(func=cmd_flops)

    p = sub.add_parser("sample", help="generate a PNG grid from a checkpoint")
    p.add_argument("checkpoint")
    add_decode_args(p)
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

    p = sub.add_parser("index", help="write the index (CSV/JSONL) of a data set in its published layout")
    p.add_argument("layout", choices=["imagenet", "ucf101", "kinetics600"])
    p.add_argument("root", help="the data set's folder or fsspec URL")
    p.add_argument("--out", required=True, help="index file: .csv or .jsonl (paths relative to its folder)")
    p.add_argument("--val-labels", help="imagenet: LOC_val_solution.csv (default: found near ROOT)")
    p.add_argument("--synsets", help="imagenet: LOC_synset_mapping.txt, the class list (default: found near ROOT)")
    p.add_argument("--split-number", type=int, default=1, choices=[1, 2, 3], help="ucf101: which train/test split")
    p.add_argument("--annotations", action="append",
                   help="kinetics600: annotation CSV (repeatable; default: *.csv in ROOT and ROOT/annotations)")
    p.add_argument("--full-videos", action="store_true",
                   help="kinetics600: files are whole videos <youtube_id>.<ext>; rows carry the clip's start/end")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("demo", help="train on digits, then sample with every preset")
    p.add_argument("config", nargs="?", default=None, help="YAML config (default: the built-in digits config)")
    add_set_arg(p)
    p.add_argument("--out", default="runs/demo")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("generate", help="ask a running service for samples; the --out suffix picks the format")
    p.add_argument("--url", required=True, help="the service, e.g. http://127.0.0.1:8000")
    p.add_argument("--class", dest="class_label", type=int, default=None, help="class id (default: unconditional)")
    p.add_argument("--num", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    add_decode_args(p)
    p.add_argument("--condition", help="MP4 whose first frames to continue (frame prediction models)")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--stream", action="store_true",
                   help="ask for the per-step previews and show the decode's progress as a bar (stderr)")
    p.add_argument("--out", required=True, help=".png (a grid when --num > 1), .mp4 (video models) or .json (tokens)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("train", help="train a nested transformer with Ray Train (or --local)")
    add_config_args(p)
    p.add_argument("--out", required=True, help="output folder or URL (checkpoints; same URL resumes)")
    add_ray_address(p)
    p.add_argument("--local", action="store_true", help="single process, no Ray")
    p.set_defaults(func=train.cmd_train)

    p = sub.add_parser("tokenizer-train",
                       help="train the VQ tokenizer of CONFIG on a raw media folder (Ray Train or --local)")
    add_config_args(p)
    p.add_argument("--data", required=True,
                   help="raw files: a folder (<split>/<class>/<file>) or an index file (*.csv, *.jsonl)")
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True,
                   help="with --local: the checkpoint URL; with Ray: the output folder (same folder resumes)")
    add_ray_address(p)
    p.add_argument("--local", action="store_true", help="single process, no Ray")
    p.set_defaults(func=train_tokenizer.cmd_tokenizer_train)

    p = sub.add_parser("tokenize", help="Ray step: raw files -> Parquet token shards + manifest")
    p.add_argument("--input", required=True,
                   help="raw files: a folder URL (local, file://, gs://, ...) or an index file (*.csv, *.jsonl)")
    p.add_argument("--output", required=True, help="shard folder URL")
    p.add_argument("--tokenizer", required=True, help="tokenizer URL: a nestgen checkpoint or a diffusers VQModel folder")
    p.add_argument("--config", default=None, help="YAML config (its `tokenize` section)")
    add_set_arg(p)
    add_ray_address(p)
    p.add_argument("--force", action="store_true", help="re-tokenize even if the output is up to date")
    p.set_defaults(func=tokenize.cmd_tokenize)

    p = sub.add_parser("run", help="the whole pipeline as a durable DAG: data -> tokenizer -> tokenize -> "
                                    "train -> evaluate -> serve; unchanged complete steps are skipped")
    add_config_args(p)
    p.add_argument("--from", dest="from_step", help="re-run this step and everything after it")
    p.add_argument("--only", help="run just this step (its upstream steps must be complete)")
    p.add_argument("--dry-run", action="store_true", help="print the DAG and what would run or be skipped")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's logs and progress bars here instead of only in the run's log file")
    p.add_argument("--seeds", type=int, metavar="N",
                   help="train and evaluate N >= 2 models, seeds `seed`..`seed`+N-1 (sets pipeline.seeds), "
                        "and report every metric over them")
    add_ray_address(p, "$RAY_ADDRESS or a local Ray")
    p.set_defaults(func=pipeline.cmd_run)

    p = sub.add_parser("evaluate", help="quality vs GFLOPs of every schedule x cache x guidance variant "
                                         "(+ schedule search) on Ray, logged to MLflow")
    add_config_args(p)
    p.add_argument("--checkpoint", help="checkpoint file, output folder, fsspec URL or runs:/<id> "
                                        "(default: the config's evaluate.checkpoint)")
    p.add_argument("--out", required=True, help="output URL for sample grids, the plot and summary.json")
    p.add_argument("--local", action="store_true", help="sample in this process instead of Ray actors")
    p.add_argument("--no-mlflow", action="store_true", help="write files only")
    add_ray_address(p)
    p.set_defaults(func=evaluate.cmd_evaluate)

    p = sub.add_parser("serve", help="run the HTTP generation service on Ray Serve; blocks, prints the URL")
    p.add_argument("config", help="Serve config YAML (configs/serve_digits.yaml, as for `serve deploy`) "
                                  "or a nestgen config (its serve: section)")
    p.add_argument("--checkpoint", help="checkpoint file, output folder, fsspec URL, runs:/<id>, models:/<name>/<v>")
    add_set_arg(p, "override a serve field, e.g. --set max_batch_size=16 (repeatable)")
    p.add_argument("--host", help="bind address (default: the file's http_options, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: the file's http_options, else 8000)")
    add_ray_address(p)
    # app.py (Ray Serve, FastAPI) is imported only when `serve` runs (pipelines.serve)
    p.set_defaults(func=lambda args: serve.cmd_serve(args))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="nestgen", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    add_parsers(sub)
    for p in sub.choices.values():
        if not any("--verbose" in a.option_strings for a in p._actions):
            p.add_argument("--verbose", action="store_true", help="on an error, also print its traceback")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"nestgen {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:          # noqa: BLE001 - every failure ends as one line (errors.explain)
        if args.verbose:
            traceback.print_exc()
        print(f"nestgen {args.command}: error: {explain(e)}", file=sys.stderr)
        return 2 if isinstance(e, SELF_EXPLAINED) else 1


if __name__ == "__main__":
    sys.exit(main())
