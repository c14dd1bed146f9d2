"""The MLflow store: a client on it, a preflight of a tracking server, the experiment."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow.exceptions import MlflowException

from mnist_mlp.errors import UserError
from mnist_mlp.tracking.location import artifact_root, local_sqlite_path, tracking_uri


def client():
    """An MlflowClient on the project's store (a tracking server is checked first: see check_tracking_server)."""
    check_tracking_server()
    return mlflow.MlflowClient(tracking_uri())


class TrackingServerError(UserError, RuntimeError):
    """A tracking server that does not answer, or refuses us; the message names the URI and the fix."""


PREFLIGHT_TIMEOUT = 15  # seconds: a dead server refuses at once, only a hung one waits this; a busy CPU delays /health
LOGIN_TIMEOUT = 30  # seconds: the basic-auth app checks a password with PBKDF2, slow on a busy CPU
_answered: set[str] = set()


def network_reason(exc: BaseException) -> str:
    """Why a request failed, from the exception chain's OSError (not from MLflow's message text)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "unknown host"
        if isinstance(cause, (TimeoutError, socket.timeout)) or "Timeout" in type(cause).__name__:
            return "timed out"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower()
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__


def check_tracking_server(uri: str | None = None) -> None:
    """An http(s) store must answer within seconds, and take our credentials, before any work starts.

    Without this a dead URI costs MLflow's default retries (7, about 4 minutes) per call, and a
    training would run to its end before its first log call fails. Once per process and URI.
    """
    uri = uri or tracking_uri()
    if not uri.startswith(("http://", "https://")) or uri in _answered:
        return
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(uri)
    fix = "start it with `make server` or unset MLFLOW_TRACKING_URI"
    try:
        health = http_request(creds, "/health", "GET", max_retries=0, timeout=PREFLIGHT_TIMEOUT, raise_on_status=False)
        if health.status_code != 200:
            raise TrackingServerError(
                f"{uri}: not an MLflow tracking server (HTTP {health.status_code} at /health); {fix}"
            )
        # /health needs no login; this does
        probe = http_request(
            creds,
            "/api/2.0/mlflow/experiments/search",
            "POST",
            max_retries=0,
            timeout=LOGIN_TIMEOUT,
            raise_on_status=False,
            json={"max_results": 1},
        )
    except MlflowException as exc:
        raise TrackingServerError(
            f"{uri}: MLflow tracking server not answering ({network_reason(exc)}); {fix}"
        ) from None
    if probe.status_code == 401:
        who = f"user {creds.username!r}" if creds.username else "no MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD"
        raise TrackingServerError(
            f"{uri}: the tracking server refused the credentials (HTTP 401, {who}); "
            "export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD of an MLflow user"
        )
    if probe.status_code == 403:
        raise TrackingServerError(
            f"{uri}: user {creds.username!r} may not read experiments (HTTP 403); "
            "ask the server's admin for READ or EDIT permission"
        )
    if probe.status_code != 200:
        raise TrackingServerError(f"{uri}: the tracking server answered HTTP {probe.status_code} to a search; {fix}")
    _answered.add(uri)


def ensure_experiment(name: str, root: Path | None = None) -> str:
    """Create (once) the store and the experiment with an absolute artifact location; return its id.

    A file lock serializes the first creation: two queue workers migrating a new
    SQLite schema at once corrupt it.
    """

    uri = tracking_uri(root)
    check_tracking_server(uri)
    mlflow.set_tracking_uri(uri)
    db = local_sqlite_path(uri)
    lock = FileLock(str(db) + ".lock") if db else contextlib.nullcontext()
    with lock:
        client = mlflow.MlflowClient(uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        # a server decides its own artifact store; a local store gets an absolute folder
        location = artifact_root(root) if not uri.startswith(("http://", "https://")) else None
        # a model-training experiment: the UI opens on its runs table, not the GenAI traces overview
        return client.create_experiment(
            name, artifact_location=location, tags={"mlflow.experimentKind": "custom_model_development"}
        )


def failure_reason(exc: MlflowException) -> str:
    reason = network_reason(exc)
    return reason if reason != type(exc).__name__ else (str(exc).strip().splitlines() or [reason])[0]


def failure_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class FilterValueError(UserError, ValueError):
    """A value that cannot be written into an MLflow filter string."""


def literal(value: str, what: str) -> str:
    """`value` quoted for an MLflow filter string. MLflow's grammar has no escape for a quote,
    so a value holding one (or a backslash) is refused, never pasted in."""
    if "'" in value or "\\" in value:
        raise FilterValueError(f"{what} {value!r}: a quote or backslash cannot be searched for in MLflow")
    return f"'{value}'"


def absent(exc: MlflowException) -> bool:
    return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")
