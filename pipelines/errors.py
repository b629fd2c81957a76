"""Errors at the command line: one line with the cause and the fix, never a traceback.

`explain` finds the cause inside whatever a command raised (a step failure wraps the error
of a Ray worker, which wraps the original) and says what to do about it."""
from __future__ import annotations

import urllib.error

from nestgen.configschema import ConfigError
from pipelines.dag import StepFailed, causes
from pipelines.lease import LeaseHeld

# the errors whose message already is the cause and the fix (a config field, a missing file, a lease)
SELF_EXPLAINED = (ConfigError, ValueError, FileNotFoundError, LeaseHeld)


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:400]


def _mlflow_error(e: BaseException) -> bool:
    return type(e).__module__.startswith("mlflow")


def _connection_error(e: BaseException) -> bool:
    """Refused, unresolved or timed-out connections of urllib, requests, aiohttp (gcsfs), sockets."""
    if isinstance(e, (ConnectionError, TimeoutError, urllib.error.URLError)) and \
            not isinstance(e, urllib.error.HTTPError):
        return True
    return any(c.__name__ in ("ConnectionError", "ClientConnectionError", "ConnectTimeout", "ServerTimeoutError")
               for c in type(e).__mro__)


def _credentials_error(e: BaseException) -> bool:
    return type(e).__name__ in ("DefaultCredentialsError", "RefreshError")


def _workers_not_placed(e: BaseException) -> bool:
    """Ray Train gave up starting its worker group: the cluster lacks the resources it asks for."""
    return type(e).__name__ == "WorkerGroupStartupTimeoutError"


def explain(e: BaseException) -> str:
    """One line for `e`: its cause, and the fix when a known kind of failure is inside."""
    chain = list(causes(e))
    step = f"{_first_line(e).split(' failed', 1)[0]} failed: " if isinstance(e, StepFailed) else ""
    where = ""
    if isinstance(e, StepFailed) and "; the traceback is in " in str(e):
        where = "; the traceback is in " + str(e).rsplit("; the traceback is in ", 1)[1]
    for c in chain:
        if _mlflow_error(c):
            import mlflow
            return (f"{step}MLflow at {mlflow.get_tracking_uri()} failed: {_first_line(c)}. Fix: point "
                    "mlflow.tracking_uri (or $MLFLOW_TRACKING_URI) at a running tracking server or a "
                    f"sqlite:/// file{where}")
        if _credentials_error(c):
            return (f"{step}no Google Cloud credentials for gs:// URLs ({_first_line(c)}). Fix: `gcloud auth "
                    f"application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS{where}")
        if _workers_not_placed(c):
            return (f"{step}Ray Train could not start its workers: {_first_line(c).split(' Potential causes', 1)[0]} "
                    "The cluster lacks the CPUs/GPUs they ask for (a node is gone?). Fix: bring the node back "
                    "(or add one with its resources), then run again: training resumes from its last "
                    f"checkpoint{where}")
        if _connection_error(c):
            return (f"{step}cannot connect: {_first_line(c)}. Fix: check that the storage or service this "
                    f"URL names is up and reachable from here, or correct the URL{where}")
    if isinstance(e, StepFailed):
        return _first_line(e).split("; the traceback is in ", 1)[0] + where
    if isinstance(e, SELF_EXPLAINED):
        return _first_line(e)
    if isinstance(e, OSError):
        return f"{_first_line(e)}. Fix: check the path or URL and its permissions"
    return f"{type(e).__name__}: {_first_line(e)} (--verbose shows the traceback)"
