"""Ray Serve deployment of the generator: FastAPI ingress, @serve.batch, one Engine per replica.

    nestgen serve configs/serve_digits.yaml          # local, blocks, prints the URL
    serve deploy configs/serve_digits.yaml           # onto a running `ray start --head`

The replica loads the checkpoint and tokenizer once (GPU when it has one) and holds them in a
nestgen.serving.Engine; this module only wires HTTP and batching around it. Concurrent
requests are collected by @serve.batch (a request for n samples counts as n rows) and decoded
as one batch per distinct decode setting. Bad requests are refused before they reach the
batch, so they never hold up or break anyone else's.

No `from __future__ import annotations` here: FastAPI reads the endpoint's annotations
(GenerateRequest) at runtime, and Serve's class-based view can't resolve them as strings.
"""
import asyncio
import signal
import time

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from ray import serve

from nestgen.config import ServeConfig
from nestgen.configschema import to_dict
from nestgen.serving.body_limit import BodySizeLimit
from nestgen.serving.deployment import deployment_options, serve_config_from_args
from nestgen.serving.errors import RequestError
from nestgen.serving.job import Job, rows_of
from nestgen.serving.request import GenerateRequest

api = FastAPI(
    title="nestgen",
    summary="Class-conditional image and video generation with MaGNeTS decode-time schedules",
    version="1",
)
api.add_middleware(BodySizeLimit)


@serve.deployment(name="Generator")
@serve.ingress(api)
class Generator:
    def __init__(self, serve_cfg: dict):
        import torch

        from nestgen.serving.engine import Engine
        cfg = serve_config_from_args(serve_cfg)
        # One intra-op thread per reserved CPU: oversubscribed OpenMP threads were measured
        # to slow a small decode down 50x on a busy 2-core machine.
        torch.set_num_threads(max(1, int(cfg.cpus_per_replica)))
        self.engine = Engine(cfg)
        api.state.max_body_bytes = cfg.max_body_bytes
        self.generate_batch.set_max_batch_size(cfg.max_batch_size)
        self.generate_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.02, batch_size_fn=rows_of)
    async def generate_batch(self, jobs: list[Job]) -> list:
        # Decoding runs in a thread so the replica keeps admitting (and counting) requests
        # for the next batch meanwhile.
        return await asyncio.to_thread(self.engine.run, jobs)

    @api.post("/v1/generate", summary="Generate samples")
    async def generate(self, req: GenerateRequest) -> JSONResponse:
        try:
            job = await asyncio.to_thread(self.engine.resolve, req) if req.condition else self.engine.resolve(req)
        except RequestError as e:
            raise HTTPException(e.status, e.reason) from None
        admitted = self.engine.admit(job)
        try:
            out = await self.generate_batch(job)
        finally:
            self.engine.finish(job, admitted)
        if isinstance(out, Exception):
            raise HTTPException(500, f"generation failed: {type(out).__name__}: {out}")
        return JSONResponse(out)

    @api.get("/v1/schedules", summary="Schedule presets with their GFLOPs per sample")
    def schedules(self) -> dict:
        return self.engine.schedules()

    @api.get("/v1/health", summary="Liveness and the replica's queue depth")
    def health(self) -> dict:
        return {"status": "ok", "queue_rows": self.engine.queue_rows}

    @api.get("/v1/model", summary="Model config, tokenizer hash, checkpoint")
    def model(self) -> dict:
        return self.engine.info()


def build(cfg: ServeConfig):
    """The Serve application for `cfg` (serve.run / serve deploy)."""
    return Generator.options(**deployment_options(cfg)).bind(to_dict(cfg))


def app_builder(args: dict):
    """Application builder for Serve config files: `import_path: pipelines.serve:app_builder`,
    `args:` = the fields of ServeConfig (checked strictly; errors name the field)."""
    return build(serve_config_from_args(args))


def run_local(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000, ray_address: str | None = None,
              block: bool = True) -> str:
    """Start the application on a local (loopback) Ray or `ray_address`; with `block`, serve
    until Ctrl-C or SIGTERM, then shut Serve down. Returns the base URL."""
    from pipelines.ray_runtime import init_ray
    init_ray(ray_address)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build(cfg), name="nestgen", route_prefix="/")
    url = f"http://{host}:{port}"
    print(f"nestgen serving {cfg.checkpoint} on {url}  (API docs: {url}/docs; Ctrl-C stops)", flush=True)
    if block:
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            serve.shutdown()
    return url
