"""Kept for MLflow models logged before the errors moved beside the request they describe
(nestgen.serving.request): such a model runs its own logged copy of pipelines/mlflow_model.py,
which imports RequestError from here, and it must still predict."""
from nestgen.serving.request import RequestError  # noqa: F401
