"""The generator as an MLflow model, the model registry, and the URIs that name a checkpoint.

    model_id = log_generator(run, checkpoint_url, tokenizer_url)   # an MLflow pyfunc model of the run
    register_model(run, model_id, name, alias)                     # a version of registered model `name`
    pin_model_version("models:/<name>@<alias>")    # -> models:/<name>/<version> it names now
    resolve_model_uri("models:/<name>@<alias>")    # runs:/, models:/, a folder or a file -> the checkpoint file
    checkpoint_resolver(tracking_uri)              # runs:/ and models:/ -> a URL, for the library's loaders

MLflow's model logging and a SQL model registry look logged models up at the process-wide
tracking URI, whatever client is used: use_tracking_uri sets it around those calls and
restores it. mlflow is imported lazily: importing this module is cheap.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Callable, Iterator

from nestgen.checkpoint_files import checkpoint_file, read_verified
from pipelines.config import MlflowConfig
from pipelines.mlflow_runs import Run

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
    """For nestgen.checkpoint_files.checkpoint_file: a registered model version
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


def resolve_model_uri(uri: str, tracking_uri: str = "") -> str:
    """The checkpoint file that `uri` names, however a user names it: runs:/<id> and
    models:/... through MLflow at tracking_uri (checkpoint_resolver), then an output folder
    through its LATEST (nestgen.checkpoint_files.checkpoint_file); a file URL as given."""
    return checkpoint_file(uri, checkpoint_resolver(tracking_uri))
