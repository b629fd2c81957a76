"""Ray orchestration over nestgen: tokenization, training, evaluation and serving steps."""
import os

# Nothing a nestgen command starts listens beyond loopback unless the user asks for it. Ray
# decides where a local head's GCS, raylet, agents and workers listen when `ray` is IMPORTED
# (ray_constants.ENABLE_RAY_CLUSTER): with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER unset they listen
# on the machine's network address, and anyone who reaches it can run code on that Ray. Every
# entry point (the `nestgen` command, `python -m pipelines`, Serve's `import_path`, a worker
# unpickling a step) imports this package before any of its modules imports ray, so this is the
# one place that sets it. Set the variable to 1 to make a local head reachable from the network;
# connecting to a cluster (--ray-address, RAY_ADDRESS) takes that cluster's addresses either way.
# pipelines.ray_runtime.init_ray refuses to start a local head that would listen elsewhere.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Nor does anything report usage beyond the machine unless the user opts in (set these to
# enable it): Ray's usage stats above, and MLflow 3's telemetry to its own servers, which every
# process importing mlflow sends by default (these processes' children inherit the setting).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Serve's HTTP proxy answers a request whose replica died under it (a lost node) 503 with
# Retry-After instead of a bare 500 (pipelines.serve.middleware.LostReplicaAs503): every Ray
# that a process importing this package starts runs its proxy with that middleware. Set the
# variable to "" to leave Serve's proxy as it comes.
PROXY_MIDDLEWARES = "pipelines.serve.middleware:proxy_middlewares"
os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", PROXY_MIDDLEWARES)
