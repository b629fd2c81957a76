"""nestgen's pipeline as DAG steps (see pipelines.dag for the runner's contract).

    data -> tokenizer -> tokenize -> train -> evaluate -> serve

`data` writes the embedded set (digits PNGs or moving-digit MP4s) or checks a raw folder
or index file;
`tokenizer` trains the VQ tokenizer with Ray Train (or takes pipeline.tokenizer);
`tokenize` writes token shards with Ray Data; `train` trains the nested transformer with
Ray Train; `evaluate` sweeps schedules on Ray actors; `serve` deploys the checkpoint on
Ray Serve on 127.0.0.1, asks for one sample over HTTP, writes it and stops the service.
Configs whose data.source is `digits` (raw 8x8 levels, no tokenizer) start at `train`.

With `pipeline.seeds` (N >= 2 training seeds) `train` and `evaluate` become one branch per
seed, `train-seed<s>` -> `evaluate-seed<s>` (the same config with `seed: s`, sharing the
steps before), joined by `seeds`: every metric as mean and 95% t interval over the seeds
(nestgen.evaluation.seeds). `serve` deploys the first seed's model.
"""
from __future__ import annotations

import base64
from dataclasses import replace

from nestgen.configschema import to_dict
from nestgen.data.index import is_index
from nestgen.data.raw_files import listing_digest
from nestgen.storage import join, read_bytes, url_to_fs, write_bytes_atomic
from pipelines.config import RunConfig
from pipelines.dag import Step, StepContext
from pipelines.dag_mlflow import DATASETS
from pipelines.ray_runtime import free_port


def data_step(cfg: RunConfig, ctx: StepContext) -> dict:
    p = cfg.pipeline
    if p.raw_data:
        fs, path = url_to_fs(p.raw_data)
        if not (fs.isfile(path) if is_index(p.raw_data) else fs.isdir(path)):
            raise FileNotFoundError(f"pipeline.raw_data {p.raw_data} is not a folder or an index file")
        return {"raw_url": p.raw_data, "written": False}
    out = join(ctx.folder, "raw")
    if p.dataset == "digits":
        from nestgen.data.image_files import write_digit_images
        info = write_digit_images(out, size=p.data_size, holdout_fraction=cfg.data.holdout_fraction,
                                  seed=cfg.data.seed)
    else:
        from nestgen.data.moving_digits import write_moving_digits
        info = write_moving_digits(out, num_clips_per_class=p.clips_per_class, frames=p.frames, size=p.data_size,
                                   seed=cfg.data.seed, holdout_fraction=max(cfg.data.holdout_fraction, 0.1))
    return {"raw_url": out, "written": True, "train": info["train"], "val": info["val"]}


def tokenizer_step(cfg: RunConfig, ctx: StepContext) -> dict:
    if cfg.pipeline.tokenizer:
        from nestgen.tokenizers import load_tokenizer, resolve_tokenizer_url
        from pipelines.model_registry import checkpoint_resolver
        url = resolve_tokenizer_url(cfg.pipeline.tokenizer, checkpoint_resolver(cfg.mlflow.tracking_uri))
        tok = load_tokenizer(url)
        return {"tokenizer_url": cfg.pipeline.tokenizer, "tokenizer_hash": tok.hash}
    from pipelines.train_tokenizer import fit_tokenizer
    res = fit_tokenizer(cfg, ctx.inputs["data"]["raw_url"], ctx.folder, "train", parent_run_id=ctx.parent_run_id,
                        run_key=ctx.fingerprint)
    return {"tokenizer_url": res.checkpoint_url, "tokenizer_hash": res.tokenizer_hash, "mlflow_run_id": res.run_id,
            **{k: v for k, v in res.metrics.items() if isinstance(v, (int, float))}}


def tokenize_step(cfg: RunConfig, ctx: StepContext) -> dict:
    from pipelines.tokenize import tokenize_to_shards
    m = tokenize_to_shards(ctx.inputs["data"]["raw_url"], ctx.folder, ctx.inputs["tokenizer"]["tokenizer_url"],
                           cfg.tokenize)
    raw = ctx.inputs["data"]["raw_url"]
    return {"shards_url": ctx.folder, "rows": {s: v["rows"] for s, v in m["splits"].items()},
            "failed": len(m["failed"]), "grid_shape": m["grid_shape"], "tokenizer_hash": m["tokenizer"]["hash"],
            DATASETS: [{"name": "raw", "url": raw, "digest": listing_digest(raw, cfg.tokenize.allow_external_urls)}]}


def train_config(cfg: RunConfig, inputs: dict) -> RunConfig:
    if "tokenize" in inputs:
        return replace(cfg, data=replace(cfg.data, source="shards", url=inputs["tokenize"]["shards_url"]))
    return cfg


def train_step(cfg: RunConfig, ctx: StepContext) -> dict:
    from pipelines.train import fit
    res = fit(train_config(cfg, ctx.inputs), ctx.folder, parent_run_id=ctx.parent_run_id, run_key=ctx.fingerprint)
    return {"checkpoint_url": res.checkpoint_url, "mlflow_run_id": res.run_id, "start_step": res.start_step,
            **{k: v for k, v in res.metrics.items() if isinstance(v, (int, float)) and k.startswith("loss")}}


def evaluate_step(cfg: RunConfig, ctx: StepContext, train: str = "train") -> dict:
    """Evaluate the checkpoint of the step named `train`."""
    from pipelines.evaluate import evaluate
    res = evaluate(cfg, ctx.folder, ctx.inputs[train]["checkpoint_url"], use_ray=True,
                   parent_run_id=ctx.parent_run_id, run_key=ctx.fingerprint)
    s = res.report.summary()
    base = s["baseline"]
    out = {"summary_url": res.files["summary"], "plot_url": res.files["plot"], "mlflow_run_id": res.run_id,
           "metric": s["metric"], "baseline_gflops": base["gflops_per_sample"], "baseline_quality": base[s["metric"]]}
    row = next((r for r in s["variants"] if r["searched"]), None)
    if row is not None:
        out.update(searched_schedule=row["schedule"], searched_cache=row["cache"],
                   searched_gflops_saving=row["gflops_saving"], searched_quality=row[s["metric"]])
        if "claim" in row:
            out.update(searched_quality_change=row["claim"]["change"], searched_claim=row["claim"]["line"])
    return out


def seeds_step(cfg: RunConfig, ctx: StepContext) -> dict:
    """Every evaluated metric over the training seeds (mean, 95% t interval, per-seed
    values) -> seeds_summary.json, seeds_table.md (the result tables of docs/evaluation.md) and
    quality_vs_gflops.png (error bars over the seeds), and one printed line per variant."""
    from nestgen.evaluation.seeds import aggregate_summaries, seed_claim_lines, seeds_plot_png, seeds_table_markdown
    from nestgen.storage import read_json, write_json_atomic
    urls = {s: ctx.inputs[f"evaluate-seed{s}"]["summary_url"] for s in cfg.pipeline.seeds}
    agg = aggregate_summaries({s: read_json(u) for s, u in urls.items()})
    agg["per_seed_summaries"] = urls
    agg["claims"] = seed_claim_lines(agg)
    for line in agg["claims"]:
        print(f"[seeds] {line}", flush=True)
    base = agg["baseline"][agg["metric"]]
    plot = write_bytes_atomic(join(ctx.folder, "quality_vs_gflops.png"), seeds_plot_png(agg, f"{cfg.name}: {agg['metric']} "
                                                                                       f"vs decode GFLOPs over seeds"))
    table = write_bytes_atomic(join(ctx.folder, "seeds_table.md"), seeds_table_markdown(agg).encode())
    return {"summary_url": write_json_atomic(join(ctx.folder, "seeds_summary.json"), agg), "plot_url": plot,
            "table_url": table, "seeds": agg["seeds"],
            "metric": agg["metric"], "baseline_quality": base["mean"], "baseline_quality_lo": base["lo"],
            "baseline_quality_hi": base["hi"], "claims": agg["claims"]}


def seed_branches(cfg: RunConfig) -> list[tuple[str, RunConfig]]:
    """(step-name suffix, config) per trained model: ("", cfg) for one model, else
    ("-seed<s>", cfg with seed s) for each of pipeline.seeds."""
    if not cfg.pipeline.seeds:
        return [("", cfg)]
    return [(f"-seed{s}", replace(cfg, seed=s)) for s in cfg.pipeline.seeds]


def served_train_step(cfg: RunConfig) -> str:
    """The train step whose model is served and named by LATEST: the first seed's."""
    return "train" + seed_branches(cfg)[0][0]


def _first_val_clip(cfg: RunConfig, ctx: StepContext) -> str:
    """A held-out raw clip (base64 MP4) to condition a frame-prediction request on."""
    from nestgen.data.raw_files import list_raw_files
    items, _, _ = list_raw_files(ctx.inputs["data"]["raw_url"], cfg.tokenize.allow_external_urls)
    clips = sorted((it for it in items if it["kind"] == "video"), key=lambda it: (it["split"] == "train", it["uri"]))
    if not clips:
        raise FileNotFoundError("frame prediction needs a raw video to condition on; none found")
    return base64.b64encode(read_bytes(clips[0]["uri"])).decode()


def serve_step(cfg: RunConfig, ctx: StepContext, train: str = "train") -> dict:
    """Deploy the checkpoint of the step named `train` on Serve (127.0.0.1, a free port), one
    sample per schedule preset asked over HTTP, then stop: proof that the checkpoint serves.
    `nestgen serve` keeps one running."""
    from ray import serve

    from pipelines.serve.client import generate, request_json
    from pipelines.serve import run_local
    scfg = replace(cfg.serve, checkpoint=ctx.inputs[train]["checkpoint_url"])
    url = run_local(scfg, "127.0.0.1", free_port(), block=False)
    try:
        video = cfg.model.is_video
        fmt = "mp4" if video else "png"
        out = {"health": request_json(f"{url}/v1/health")}
        extra = {"condition": {"mp4_base64": _first_val_clip(cfg, ctx)}} if cfg.train.cond_tokens else {}
        for schedule in ("baseline", "magnets"):
            resp = generate(url, {"class_label": 3 % max(1, cfg.model.num_classes), "num_samples": 1, "seed": 0,
                                  "schedule": schedule, "format": fmt, "cache": "on_switch", **extra})
            blob = base64.b64decode(resp["samples"][0][fmt])
            out[f"sample_{schedule}"] = write_bytes_atomic(join(ctx.folder, f"sample_{schedule}.{fmt}"), blob)
            out[f"gflops_{schedule}"] = resp.get("gflops_per_sample", resp.get("gflops"))
    finally:
        serve.shutdown()
    return out


def _sections(cfg: RunConfig, *names: str):
    return lambda: {n: to_dict(getattr(cfg, n)) for n in names}


def build_steps(cfg: RunConfig) -> list[Step]:
    """The DAG for cfg: each step with the config sections its outputs depend on."""
    p = cfg.pipeline
    steps: list[Step] = []
    raw = cfg.data.source != "digits"          # raw files -> tokenizer -> shards (else the 8x8 digits levels)
    if raw:
        steps += [
            Step("data", lambda ctx: data_step(cfg, ctx), [],
                 lambda: {k: v for k, v in to_dict(p).items() if k in ("raw_data", "dataset", "data_size",
                                                                       "clips_per_class", "frames")}
                 | {"holdout": cfg.data.holdout_fraction, "seed": cfg.data.seed},
                 (lambda: listing_digest(p.raw_data, cfg.tokenize.allow_external_urls)) if p.raw_data else (lambda: ""),
                 "write the embedded raw set (or check pipeline.raw_data)"),
            Step("tokenizer", lambda ctx: tokenizer_step(cfg, ctx), ["data"],
                 lambda: {"tokenizer": to_dict(cfg.tokenizer), "existing": p.tokenizer,
                          "clip": [cfg.tokenize.fps, cfg.tokenize.clips_per_video]},
                 about="train the VQ tokenizer on Ray Train (or load pipeline.tokenizer)"),
            Step("tokenize", lambda ctx: tokenize_step(cfg, ctx), ["data", "tokenizer"], _sections(cfg, "tokenize"),
                 about="raw files -> Parquet token shards with Ray Data"),
        ]
    for suffix, c in seed_branches(cfg):
        train, evaluate = "train" + suffix, "evaluate" + suffix
        steps.append(Step(train, lambda ctx, c=c: train_step(c, ctx), ["tokenize"] if raw else [],
                          lambda c=c: _sections(c, "model", "train", "scaling")()
                          | {"seed": c.seed, "data": None if raw else to_dict(c.data)},
                          about=f"nested transformer on Ray Train ({c.scaling.strategy.upper()}), seed {c.seed}"))
        steps.append(Step(evaluate, lambda ctx, c=c, t=train: evaluate_step(c, ctx, t), [train],
                          _sections(c, "evaluate", "decode"),
                          about="quality vs GFLOPs for every variant"
                                + (" + the schedule search" if c.evaluate.search.enabled else "") + ", on Ray actors"))
    if p.seeds:
        steps.append(Step("seeds", lambda ctx: seeds_step(cfg, ctx), [f"evaluate-seed{s}" for s in p.seeds],
                          about=f"every metric as mean and 95% t interval over seeds {p.seeds}"))
    if p.serve:
        served = served_train_step(cfg)
        steps.append(Step("serve", lambda ctx: serve_step(cfg, ctx, served), [served] + (["data"] if raw else []),
                          lambda: {k: v for k, v in to_dict(cfg.serve).items() if k != "checkpoint"},
                          about="deploy on Ray Serve (127.0.0.1), request samples over HTTP, stop"))
    return steps
