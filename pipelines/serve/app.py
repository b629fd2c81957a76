"""The Ray Serve application of the generator: FastAPI ingress, @serve.batch, one Engine per replica.

    nestgen serve configs/serve_digits.yaml          # local, blocks, prints the URL
    serve deploy configs/serve_digits.yaml           # onto a running `ray start --head`
    serve run pipelines.serve:app_builder checkpoint=... max_batch_size=16   # Ray's CLI, key=value args

The replica loads the checkpoint and tokenizer once (GPU when it has one) and holds them in a
nestgen.serving.Engine; this module only wires HTTP and batching around it. With
serve.batching step (the default) the engine's step loop runs in a thread of its own: a request
joins the running set at the next decode step and is answered at its last (503 with Retry-After
when the replica's queue is full); its metrics are Serve custom metrics
(pipelines.serve.metrics). With serve.batching request, concurrent requests are collected by
@serve.batch (a request for n samples counts as n rows) and decoded as one batch per schedule,
cache policy and conditioning length. Bad requests are refused before they reach either, so
they never hold up or break anyone else's.

No `from __future__ import annotations` here: FastAPI reads the endpoint's annotations
(GenerateRequest) at runtime, and Serve's class-based view can't resolve them as strings;
Serve likewise reads app_builder's annotation (ServeArgs) to convert its arguments.
"""
import asyncio
import os
import resource
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from nestgen.configschema import to_dict
from nestgen.serving.job import Job, rows_of
from nestgen.serving.request import DecodeFailed, GenerateRequest, RequestError
from nestgen.serving.stream import MEDIA_TYPE, StepStream
from pipelines.config import RunConfig, ServeConfig
from pipelines.model_registry import checkpoint_resolver, pin_model_version
from pipelines.ray_runtime import bind_serve_replica_to_node_address, dashboard_url, init_ray
from pipelines.serve.deployment import ServeArgs, deployment_options, read_serve_file, serve_config_from_args
from pipelines.serve.metrics import ServeLoopMetrics
from pipelines.serve.middleware import BearerAuth, BodySizeLimit, read_api_keys
from pipelines.serve.responses import (GENERATE_503, STREAM_200, GenerateResponse, HealthResponse, ModelResponse,
                                       SchedulesResponse, error_responses)

api = FastAPI(
    title="nestgen",
    summary="Class-conditional image and video generation with MaGNeTS decode-time schedules",
    version="1",
)
api.add_middleware(BodySizeLimit)
api.add_middleware(BearerAuth)     # added last = outermost: no body is read without a key


@api.exception_handler(RequestValidationError)
async def _invalid_request(_request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field, without echoing the input: an echoed Infinity or NaN cannot be
    written as JSON (a 500), and a large input would be sent back whole."""
    return JSONResponse(status_code=422, content={"detail": [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]})


def rss_mb() -> float:
    """The replica's resident memory in MB, for /v1/health: a replica that a request made grow
    shows (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@serve.deployment(name="Generator")
@serve.ingress(api)
class Generator:
    def __init__(self, serve_cfg: dict):
        import torch

        from nestgen.serving.engine import Engine
        bind_serve_replica_to_node_address()      # before Serve starts this replica's gRPC server
        cfg = serve_config_from_args(serve_cfg)
        # One intra-op thread per reserved CPU: oversubscribed OpenMP threads were measured
        # to slow a small decode down 50x on a busy 2-core machine.
        torch.set_num_threads(max(1, int(cfg.cpus_per_replica)))
        api.state.api_keys = read_api_keys(cfg.api_keys_env)
        self.engine = Engine(cfg, resolve_uri=checkpoint_resolver(cfg.mlflow_tracking_uri),
                             metrics=ServeLoopMetrics() if cfg.batching == "step" else None)
        if self.engine.loop is not None:
            self.engine.start_loop()     # a daemon thread: it ends with the replica
        api.state.max_body_bytes = cfg.max_body_bytes
        self.deadline_s = cfg.decode_deadline_s
        # the Serve app's own limits, reported beside the engine's by /v1/model
        self.app_limits = {"batch_wait_timeout_s": cfg.batch_wait_timeout_s, "max_body_bytes": cfg.max_body_bytes}
        # Decoding has a thread of its own, and conditioning clips (PyAV decodes) their own
        # pool, so that slow clips never hold up decoding and neither blocks the event loop.
        self.decode_pool = ThreadPoolExecutor(1, thread_name_prefix="nestgen-decode")
        self.media_pool = ThreadPoolExecutor(max(1, int(cfg.cpus_per_replica)), thread_name_prefix="nestgen-media")
        self.generate_batch.set_max_batch_size(cfg.max_batch_size)
        self.generate_batch.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.02, batch_size_fn=rows_of)
    async def generate_batch(self, jobs: list[Job]) -> list:
        # Decoding runs in its thread so the replica keeps admitting (and counting) requests
        # for the next batch meanwhile.
        return await asyncio.get_running_loop().run_in_executor(self.decode_pool, self.engine.run, jobs)

    @api.post("/v1/generate", summary="Generate samples", response_model=GenerateResponse,
              response_model_exclude_unset=True, responses=error_responses(400, 401, 408, 413, 422, 500) | GENERATE_503 | STREAM_200)
    async def generate(self, req: GenerateRequest) -> dict:
        # Counted from arrival, conditioning work included; `finally` also runs when the
        # client disconnects (Serve cancels this coroutine), so the count never drifts.
        rows = min(req.num_samples, self.engine.spec.max_samples)
        admitted, job, streaming = self.engine.admit(rows), None, False
        try:
            if req.condition:
                job = await asyncio.get_running_loop().run_in_executor(self.media_pool, self.engine.resolve, req, rows)
            else:
                job = self.engine.resolve(req, rows)
            if req.stream:
                response = self._stream_steps(job, rows, admitted)
                streaming = True        # the stream's answer ends the count
                return response
            out = await (self.generate_batch(job) if self.engine.loop is None else self._generate_steps(job))
        except RequestError as e:
            headers = None if e.retry_after_s is None else {"Retry-After": str(e.retry_after_s)}
            raise HTTPException(e.status, e.reason, headers=headers) from None
        finally:
            if not streaming:
                self.engine.finish(rows, admitted, job)
        if isinstance(out, Exception):
            raise HTTPException(500, str(out))
        return out

    async def _generate_steps(self, job: Job, submitted: Future | None = None) -> dict | Exception:
        """batching step: the job's rows join the loop (`submitted`: they already did); the
        response is encoded off the event loop. A client that disconnects cancels this coroutine,
        and with it (wrap_future) the Future, so the loop drops its rows at the next step."""
        try:
            result = await asyncio.wrap_future(self.engine.submit(job) if submitted is None else submitted)
        except DecodeFailed as e:       # answered as in batching request: 500, the generic reason
            return e
        return await asyncio.get_running_loop().run_in_executor(self.media_pool, self.engine.respond, job, result)

    def _stream_steps(self, job: Job, rows: int, admitted: float) -> StreamingResponse:
        """`"stream": true`: per-step events, then the answer (nestgen.serving.stream). The job is
        submitted here, so that a full queue is still a 503; the request stays counted until its
        answer settles. A client that hangs up ends the stream, which cancels the answer and so
        drops the rows at the next step."""
        if self.engine.loop is None:
            raise RequestError("stream: per-step previews need serve.batching: step (this service decodes "
                               "whole batches of requests)")
        steps = StepStream()
        answer = asyncio.ensure_future(self._generate_steps(job, self.engine.submit(job, on_step=steps.on_step)))
        answer.add_done_callback(lambda _: self.engine.finish(rows, admitted, job))
        return StreamingResponse(steps.lines(answer, job.seeds), media_type=MEDIA_TYPE)

    @api.get("/v1/schedules", summary="Schedule presets with their GFLOPs per sample", response_model=SchedulesResponse,
             response_model_exclude_unset=True, responses=error_responses(401, 503))
    def schedules(self) -> dict:
        return self.engine.schedules()

    @api.get("/v1/health", summary="Liveness, the replica's queue depth and the age of its decode in flight",
             response_model=HealthResponse, responses=error_responses(503))
    def health(self) -> dict:
        age = self.engine.decode_age_s()
        loop = self.engine.loop
        return {"status": "ok" if age <= self.deadline_s else "stuck", "queue_rows": self.engine.queue_rows,
                **({"active_rows": loop.active_rows, "queued_rows": loop.queued_rows} if loop else {}),
                "decode_age_s": round(age, 3), "decode_deadline_s": self.deadline_s,
                "replica": serve.get_replica_context().replica_id.unique_id, "rss_mb": rss_mb()}

    def check_health(self):
        """Serve's own replica probe: a decode past its deadline marks the replica unhealthy,
        and Serve replaces it (the HTTP health endpoint above only reports)."""
        age = self.engine.decode_age_s()
        if age > self.deadline_s:
            raise RuntimeError(f"decode in flight for {age:.0f} s, past serve.decode_deadline_s={self.deadline_s:g}")

    @api.get("/v1/model", summary="Model config, tokenizer hash, checkpoint, request limits",
             response_model=ModelResponse, responses=error_responses(401, 503))
    def model(self) -> dict:
        info = self.engine.info()
        info["limits"] |= self.app_limits
        return info


def build(cfg: ServeConfig):
    """The Serve application for `cfg` (serve.run / serve deploy). A models:/<name>@<alias>
    checkpoint is resolved here, once, to the version it names now: replicas started later
    serve that version even after the alias moves (redeploy to follow it)."""
    cfg = replace(cfg, checkpoint=pin_model_version(cfg.checkpoint, cfg.mlflow_tracking_uri))
    return Generator.options(**deployment_options(cfg)).bind(to_dict(cfg))


def app_builder(args: ServeArgs):
    """Application builder: `serve run pipelines.serve:app_builder checkpoint=... max_batch_size=16`,
    or `import_path: pipelines.serve:app_builder` in a Serve config file with `args:` = the
    fields of ServeConfig. Serve converts the arguments to ServeArgs (the annotation), so
    strings become the fields' types; a wrong or unknown field is an error naming it."""
    return build(serve_config_from_args(args.model_dump()))


def run_local(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000, ray_address: str | None = None,
              block: bool = True) -> str:
    """Start the application on a local (loopback) Ray or `ray_address`; with `block`, serve
    until Ctrl-C or SIGTERM, then shut Serve down. Returns the base URL."""
    init_ray(ray_address)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build(cfg), name="nestgen", route_prefix="/")
    url = f"http://{host}:{port}"
    dashboard = f"; Ray dashboard: {dashboard_url()}" if dashboard_url() else ""
    print(f"nestgen serving {cfg.checkpoint} on {url}  (API docs: {url}/docs{dashboard}; Ctrl-C stops)", flush=True)
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


def cmd_serve(args):
    cfg, host, port = read_serve_file(args.config, args.overrides + (
        [f"checkpoint={args.checkpoint}"] if args.checkpoint else []), schema=RunConfig)
    run_local(cfg, args.host or host, args.port or port, args.ray_address)
    return 0
