"""The HTTP generation service on Ray Serve, and its client.

    app.py          the Serve deployment (one nestgen.serving.Engine per replica) and its FastAPI app
    middleware.py   the bearer-token check (401) and the body-size limit (413), before a body is parsed
    responses.py    the answers' pydantic models: the OpenAPI description
    deployment.py   ServeConfig -> Serve deployment options, the app's typed arguments, serve config files
    metrics.py      the step loop's metrics as Ray Serve custom metrics
    client.py       the stdlib HTTP client of `nestgen generate`

Only this package imports FastAPI / Starlette (tests/test_layering.py). `pipelines.serve:app_builder`
(the import path of Serve config files, `serve run`, KubeRay) and `from pipelines.serve import
build, run_local, ...` name the app's entry points here. They are looked up in app.py on first
use, so that importing the client or the config readers does not import Ray Serve and FastAPI.
"""
import importlib

_APP = frozenset({"Generator", "api", "app_builder", "build", "cmd_serve", "run_local"})


def __getattr__(name: str):
    if name in _APP:
        return getattr(importlib.import_module("pipelines.serve.app"), name)
    raise AttributeError(f"module 'pipelines.serve' has no attribute {name!r}")
