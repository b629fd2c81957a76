"""Everything nestgen tells MLflow (and asks it), in one place.

    with start_run(cfg, "train", output_url, params, parent_run_id) as run:
        ...                                        # FINISHED on exit, FAILED (and re-raised) on error
        run.set_tags(...); run.log_metrics(...); run.log_bytes(...); run.log_image(...)
        run.log_dataset(url, digest, name)         # a dataset input of the run
        with run.system_metrics(every_s): ...      # CPU, memory, GPU as system/* metrics
        model_id = log_generator(run, checkpoint_url, tokenizer_url)   # an MLflow pyfunc model
        register_model(run, model_id, name, alias)
    Run.attach(tracking_uri, run_id)               # the same run from a Ray Train worker
    resolve_checkpoint("models:/<name>@<alias>")   # runs:/ and models:/ -> the checkpoint's URL
    pin_model_version("models:/<name>@<alias>")    # -> models:/<name>/<version> it names now
    runs_page_url(cfg, experiment_id)              # the UI's runs table of the experiment

A run's params are every config value (flattened) plus the step's own; runs of one pipeline
run are its children (the `mlflow.parentRunId` tag); every run records the code that ran
(user, entry point, git commit). Experiments are created as model-development experiments;
MLflow 3.17's UI still opens them as GenAI until its mode switch is set (UI_MODE_HINT). The
tracking server is cfg.mlflow.resolved_uri(). mlflow is imported lazily: importing this module is cheap.
"""
from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import time
import warnings
from typing import Callable, Iterator

from nestgen.config import config_to_dict
from nestgen.configschema import flatten
from nestgen.storage import read_bytes, read_verified
from nestgen.storage import resolve_checkpoint as resolve_storage_checkpoint
from pipelines.config import MlflowConfig, RunConfig

PARAMS_PER_BATCH = 100                   # MLflow's cap on params in one log_batch
RUN_KEY_TAG = "nestgen.run_key"
# Earlier MLflow 3 UIs open an experiment without this tag in their GenAI mode (traces) and one
# of this kind on its runs table.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# MLflow 3.17's UI ignores that tag: every experiment opens in the mode of the GenAI / Model
# training switch at the top left of its pages, GenAI until a person clicks it; the choice is
# kept in the browser (localStorage `mlflow.workflowType_v1`). Neither the server nor an
# experiment setting picks it, and a link's `workflowType=machine_learning` holds for that page
# only (runs_page_url), so the closing summary and the README say which switch to click.
UI_MODE_SWITCH = ("GenAI", "Model training")
UI_MODE_HINT = (f"clicking from the UI's home page: set the switch at its top left from {UI_MODE_SWITCH[0]} to "
                f"{UI_MODE_SWITCH[1]} first (MLflow opens experiments as GenAI traces until then; the browser "
                "keeps the choice)")
DIGEST_CHARS = 36                        # MLflow's column width for a dataset digest


class Run:
    """One MLflow run. As a context manager it ends FINISHED, or FAILED when the block raises
    (the exception propagates)."""

    def __init__(self, client, run_id: str, experiment_id: str):
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id

    @classmethod
    def attach(cls, tracking_uri: str, run_id: str) -> Run:
        from mlflow.tracking import MlflowClient
        client = MlflowClient(tracking_uri)
        return cls(client, run_id, client.get_run(run_id).info.experiment_id)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.end("FAILED" if exc_type else "FINISHED")
        return False

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)

    def child(self, name: str, step: str) -> Run:
        """A new run under this one (same experiment), tagged with its pipeline step."""
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={"mlflow.parentRunId": self.run_id, "nestgen.step": step})
        return Run(self.client, run.info.run_id, self.experiment_id)

    def set_tags(self, tags: dict) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + PARAMS_PER_BATCH])

    def log_metrics(self, metrics: dict, step: int = 0) -> None:
        from mlflow.entities import Metric
        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()])

    def log_bytes(self, name: str, data: bytes, artifact_path: str | None = None) -> None:
        """An artifact called `name` holding `data` (MLflow logs files: it goes through a temp dir)."""
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, name)
            with open(path, "wb") as f:
                f.write(data)
            self.client.log_artifact(self.run_id, path, artifact_path)

    def log_files(self, urls: list[str], artifact_path: str | None = None) -> None:
        """Copies of (maybe remote) files as artifacts, under their base names."""
        for url in urls:
            self.log_bytes(os.path.basename(url), read_bytes(url), artifact_path)

    def log_image(self, key: str, image, step: int = 0) -> None:
        """An image (uint8 array, or PNG bytes) under `key` at `step`: the UI shows a key's
        images with a step slider."""
        import io

        import numpy as np
        from PIL import Image
        img = Image.open(io.BytesIO(image)) if isinstance(image, bytes) else np.asarray(image)
        self.client.log_image(self.run_id, img, key=key, step=step, synchronous=True)

    def log_dataset(self, url: str, digest: str, name: str, context: str = "training") -> None:
        """The data at `url` (a folder, index or shard set, read by this run) as a dataset
        input with its digest; the runs table shows it. Storage MLflow cannot name (memory://)
        is not logged."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.exceptions import MlflowException
        if "://" not in url:
            url = os.path.abspath(url)
        try:
            with warnings.catch_warnings():     # local paths match two equivalent source kinds
                warnings.simplefilter("ignore", UserWarning)
                source = resolve_dataset_source(url)
        except MlflowException:
            return
        ds = MetaDataset(source, name=name, digest=digest[:DIGEST_CHARS])._to_mlflow_entity()
        self.client.log_inputs(self.run_id, [DatasetInput(ds, [InputTag("mlflow.data.context", context)])])

    @contextlib.contextmanager
    def system_metrics(self, every_s: float, node_id: str | None = None) -> Iterator[None]:
        """CPU, memory, disk, network and (with nvidia-ml-py) GPU use of this machine, sampled
        every `every_s` seconds as system/* metrics of the run by MLflow's own monitor, while
        the block runs. Off when every_s is 0 or psutil is missing (MLflow's own behaviour)."""
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError as e:
            if every_s > 0:
                print(f"[mlflow] no system metrics: {e} (pip install psutil)", flush=True)
            every_s = 0
        if every_s <= 0:
            yield
            return
        monitor = SystemMetricsMonitor(self.run_id, sampling_interval=every_s, node_id=node_id,
                                       resume_logging=True, tracking_uri=self.client.tracking_uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()


def start_run(cfg: RunConfig, step: str, output_url: str, params: dict | None = None,
              parent_run_id: str | None = None, run_key: str = "") -> Run:
    """A new run `<step>-<cfg.name>` in cfg.mlflow.experiment with every config value and
    `params` as params (a child of parent_run_id when given, e.g. a step of a pipeline run).
    With run_key (a DAG step's fingerprint) the run tagged with that key is reused when there
    is one: a retried or resumed step continues its run instead of adding another."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(cfg.mlflow.resolved_uri())
    exp_id = experiment_id(client, cfg.mlflow.experiment)
    if run_key:
        found = client.search_runs([exp_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'", max_results=1)
        if found:
            run = Run(client, found[0].info.run_id, exp_id)
            client.update_run(run.run_id, status="RUNNING")
            if parent_run_id:                  # shown under the pipeline run that resumed it
                run.set_tags({"mlflow.parentRunId": parent_run_id})
            return run                         # its params: logged at creation (same key, same config)
    tags = {"nestgen.step": step, "output_url": output_url, **source_tags(),
            **({RUN_KEY_TAG: run_key} if run_key else {}),
            **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
    run = Run(client, client.create_run(exp_id, run_name=f"{step}-{cfg.name}", tags=tags).info.run_id, exp_id)
    run.log_params({**{k: str(v)[:6000] for k, v in flatten(config_to_dict(cfg)).items()}, **(params or {})})
    return run


def experiment_id(client, name: str) -> str:
    """The id of experiment `name`, created if missing. An experiment without a kind gets
    EXPERIMENT_KIND (one a user chose in the UI is kept)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, tags=dict([EXPERIMENT_KIND]))
    if EXPERIMENT_KIND[0] not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
    return exp.experiment_id


@functools.cache
def _code_tags() -> dict:
    """MLflow's own source tags of this process (user, entry point), and the git commit of the
    checkout this package runs from (none when it is not a git checkout, e.g. an image)."""
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils.git_utils import get_git_commit
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT
    tags = {k: v for k, v in resolve_tags().items() if k.startswith(("mlflow.source.", "mlflow.user"))}
    tags.pop(MLFLOW_GIT_COMMIT, None)          # found from the entry point, which may be another checkout
    commit = get_git_commit(os.path.dirname(os.path.abspath(__file__)))
    return tags | ({MLFLOW_GIT_COMMIT: commit} if commit else {})


def source_tags() -> dict:
    return dict(_code_tags())


def runs_page_url(cfg: RunConfig, experiment: str) -> str:
    """Where the MLflow UI lists the runs of experiment id `experiment`: on the tracking
    server itself, or on `mlflow ui` (127.0.0.1:5000) for a database or folder store."""
    uri = cfg.mlflow.resolved_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment}/runs?workflowType=machine_learning"


GENERATOR = "generator"                 # the logged model's name in its run
CHECKPOINT_TAG = "nestgen.checkpoint_uri"


@contextlib.contextmanager
def use_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's model logging and model registry look logged models up at the process-wide
    tracking URI: `uri` while the block runs, then exactly what was there (set or not, and
    $MLFLOW_TRACKING_URI, which set_tracking_uri also sets)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils
    before, env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        utils._tracking_uri = before
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def _fetch(url: str, local: str) -> str:
    """A copy of the file or folder at `url` (any fsspec URL) at the local path `local`."""
    from nestgen.storage import url_to_fs
    fs, path = url_to_fs(url)
    if fs.isdir(path):
        fs.get(path.rstrip("/") + "/", local, recursive=True)
    else:
        with open(local, "wb") as f:
            f.write(read_verified(url))
    return local


def _requirements() -> list[str]:
    """What the model needs installed: nestgen's own requirements (as this install declares
    them); listing them saves MLflow inferring them by loading the model in a subprocess."""
    from importlib.metadata import PackageNotFoundError, requires
    try:
        return [r for r in requires("nestgen") or [] if "extra ==" not in r]
    except PackageNotFoundError:
        return []


def log_generator(run: Run, checkpoint_url: str, tokenizer_url: str = "", step: int = 0) -> str:
    """The id of the MLflow model (pipelines.mlflow_model, a pyfunc model from code) of this
    run holding the checkpoint and its tokenizer (if any) as artifacts, with a signature and
    an input example; `step`: the training step it was logged at. The model already logged
    for this checkpoint by this run (a retried or resumed step) is reused."""
    import mlflow
    from mlflow.models import Model

    from pipelines import mlflow_model
    for out in run.client.get_run(run.run_id).outputs.model_outputs:
        if run.client.get_logged_model(out.model_id).tags.get(CHECKPOINT_TAG) == checkpoint_url:
            return out.model_id
    with tempfile.TemporaryDirectory() as d:
        artifacts = {mlflow_model.CHECKPOINT: _fetch(checkpoint_url, os.path.join(d, "checkpoint.pt"))}
        if tokenizer_url:
            name = os.path.basename(tokenizer_url.rstrip("/")) or "tokenizer"
            artifacts[mlflow_model.TOKENIZER] = _fetch(tokenizer_url, os.path.join(d, name))
        engine = mlflow_model.generator_engine(artifacts[mlflow_model.CHECKPOINT],
                                              artifacts.get(mlflow_model.TOKENIZER, ""))
        signature, example = mlflow_model.signature_and_example(engine)
        # created here, in the run's experiment (MLflow's logging would take the process's current one)
        model_id = run.client.create_logged_model(run.experiment_id, GENERATOR, run.run_id,
                                                  tags={CHECKPOINT_TAG: checkpoint_url}).model_id
        with use_tracking_uri(run.client.tracking_uri):
            Model.log(None, mlflow.pyfunc, name=GENERATOR, run_id=run.run_id, model_id=model_id, step=step,
                      python_model=mlflow_model.__file__, artifacts=artifacts, signature=signature,
                      input_example=example, pip_requirements=_requirements())
    return model_id


def register_model(run: Run, model_id: str, name: str, alias: str = "") -> str:
    """The version of registered model `name` made from the run's logged model `model_id`
    (log_generator), served as models:/<name>/<v> or models:/<name>@<alias>. A model
    already registered (a retried or resumed step) keeps its version: one version per
    trained checkpoint."""
    from mlflow.exceptions import MlflowException
    client = run.client
    try:
        client.create_registered_model(name)
    except MlflowException:
        pass                                   # it exists: add a version
    same = [v for v in client.search_model_versions(f"name = '{name}' and run_id = '{run.run_id}'")
            if _logged_model_of(v) == model_id]
    if same:
        version = same[0].version
    else:
        with use_tracking_uri(client.tracking_uri):     # where a SQL registry looks the logged model up
            version = client.create_model_version(name, source=f"models:/{model_id}", run_id=run.run_id,
                                                  model_id=model_id).version
    if alias:
        client.set_registered_model_alias(name, alias, version)
    run.set_tags({"registered_model": f"models:/{name}/{version}"})
    return str(version)


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient
    return MlflowClient(MlflowConfig(tracking_uri=tracking_uri).resolved_uri())


def pin_model_version(uri: str, tracking_uri: str = "") -> str:
    """models:/<name>@<alias> -> models:/<name>/<version> the alias names now; any other URI
    as given."""
    if not (uri.startswith("models:/") and "@" in uri):
        return uri
    name, alias = uri[len("models:/"):].strip("/").split("@", 1)
    return f"models:/{name}/{_client(tracking_uri).get_model_version_by_alias(name, alias).version}"


RUN_SCHEMES = ("runs:/", "mlflow-run:")


def _logged_model_of(version) -> str:
    """The id of the logged model a registered version was made from ("" for none); stores
    that do not return the version's model_id still name it as its source."""
    source = version.source or ""
    return version.model_id or (source[len("models:/"):] if source.startswith("models:/m-") else "")


def _model_id(client, uri: str) -> str:
    """models:/<name>/<version> and models:/<name>@<alias> name a registered model version,
    made from a logged model; models:/<model id> names a logged model."""
    ref = uri[len("models:/"):].strip("/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    elif "/" in ref:
        name, _, number = ref.rpartition("/")
        if not number.isdigit():
            raise ValueError(f"{uri}: expected models:/<name>/<version> or models:/<name>@<alias>")
        version = client.get_model_version(name, number)
    else:
        return ref
    model_id = _logged_model_of(version)
    if not model_id:
        raise FileNotFoundError(f"{uri} was not registered from a logged model (source {version.source}): "
                                "register a version of a training run's logged model")
    return model_id


def _inside(root: str, relative: str, what: str) -> str:
    """root/relative, refused (ValueError) unless it stays inside root: what a tracking
    server returns must not make this machine read or write elsewhere."""
    parts, real_root = relative.replace("\\", "/").split("/"), os.path.realpath(root)
    path = os.path.join(root, relative)
    real = os.path.realpath(path)
    if (os.path.isabs(relative) or ".." in parts or real == real_root
            or os.path.commonpath([real, real_root]) != real_root):
        raise ValueError(f"refusing {what} {relative!r}: it leaves {root} (an absolute path, '..' or a link "
                         "out); a model logged by nestgen names files inside its own folder")
    return path


def _models_cache() -> str:
    """Downloaded models, one folder per logged model id (a logged model never changes)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "nestgen", "mlflow-models")


def download_model(client, uri: str) -> str:
    """The local folder of the logged model a models:/ URI names, downloaded by MLflow (once
    per model: a folder is complete before it gets its name)."""
    import mlflow.artifacts
    model_id = _model_id(client, uri)
    local = _inside(_models_cache(), model_id, f"{uri}: model id")
    if not os.path.isdir(local):
        os.makedirs(_models_cache(), exist_ok=True)
        part = tempfile.mkdtemp(prefix=f"{model_id}.part-", dir=_models_cache())
        with use_tracking_uri(client.tracking_uri):
            mlflow.artifacts.download_artifacts(f"models:/{model_id}", dst_path=part)
        try:
            os.rename(part, local)
        except OSError:                        # another process named its copy first
            import shutil
            shutil.rmtree(part, ignore_errors=True)
    return local


def checkpoint_resolver(tracking_uri: str = "") -> Callable[[str], str]:
    """For nestgen.storage.resolve_checkpoint: a registered model version
    (models:/<name>/<version>, models:/<name>@<alias>) or logged model (models:/<id>) -> the
    checkpoint in that model's artifacts, downloaded; a training run (runs:/<id>,
    mlflow-run:<id>) -> the `checkpoint_uri` it tagged; any other URL unchanged. MLflow at
    tracking_uri ("" -> MlflowConfig's default)."""
    def resolve(uri: str) -> str:
        if uri.startswith("models:/"):
            from mlflow.models import Model

            from pipelines.mlflow_model import CHECKPOINT
            local = download_model(_client(tracking_uri), uri)
            flavor = Model.load(local).flavors.get("python_function", {})
            if CHECKPOINT not in flavor.get("artifacts", {}):
                raise FileNotFoundError(f"{uri} is not a nestgen generator: its model has no {CHECKPOINT} artifact")
            return _inside(local, flavor["artifacts"][CHECKPOINT]["path"], f"{uri}: {CHECKPOINT} artifact path")
        if not uri.startswith(RUN_SCHEMES):
            return uri
        run_id = uri.split(":", 1)[1].lstrip("/").split("/", 1)[0]
        tags = _client(tracking_uri).get_run(run_id).data.tags
        if "checkpoint_uri" not in tags:
            raise FileNotFoundError(f"MLflow run {run_id} has no checkpoint_uri tag: it is not a finished training run")
        return tags["checkpoint_uri"]
    return resolve


def resolve_checkpoint(url: str, tracking_uri: str = "") -> str:
    """nestgen.storage.resolve_checkpoint that also follows runs:/ and models:/ URIs."""
    return resolve_storage_checkpoint(url, checkpoint_resolver(tracking_uri))
