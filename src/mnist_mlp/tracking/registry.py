"""The model registry (a version per evaluated model, the `champion` alias), and what the promotion gate sees of a run.

The evaluate stage logs the test metrics of reports/metrics.json as flat MLflow metrics
(`test_accuracy`, `test_recall_3`); `mnist-mlp promote` turns a run's metrics back into
metrics.json's shape, so the gate's rules (metrics_rules.yaml: `test.accuracy`,
`test.per_class.*.recall`) judge a registered version exactly as they judge the file.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import mlflow
from mlflow.exceptions import MlflowException

from mnist_mlp.errors import UserError
from mnist_mlp.tracking.location import tracking_uri
from mnist_mlp.tracking.store import absent, client, literal

CHAMPION = "champion"  # the alias `mnist-mlp promote` moves and `models:/<name>@champion` loads
PER_CLASS = ("precision", "recall", "f1")
_PER_CLASS_METRIC = re.compile(rf"^test_({'|'.join(PER_CLASS)})_(\d+)$")


def logged_metrics(test: dict) -> dict[str, float]:
    """metrics.json's `test` section as MLflow metric names: test_<name>, and test_<metric>_<class> per class."""
    flat = {f"test_{key}": float(value) for key, value in test.items() if key != "per_class"}
    flat |= {
        f"test_{metric}_{label}": float(value)
        for label, row in test["per_class"].items()
        for metric, value in row.items()
    }
    return flat


def metrics_tree(logged: dict[str, float]) -> dict:
    """The inverse of `logged_metrics`: {"test": {"accuracy": ..., "per_class": {"3": {"recall": ...}}}}; others dropped."""
    test: dict = {}
    for name, value in logged.items():
        per_class = _PER_CLASS_METRIC.match(name)
        if per_class:
            test.setdefault("per_class", {}).setdefault(per_class[2], {})[per_class[1]] = value
        elif name.startswith("test_"):
            test[name.removeprefix("test_")] = value
    return {"test": test} if test else {}


def evaluated_run_id(metrics_path: str | Path, otherwise: str) -> str:
    """The MLflow run id the evaluate stage wrote into reports/metrics.json; `otherwise` names the option to pass instead."""
    path = Path(metrics_path)
    try:
        run_id = json.loads(path.read_text())["mlflow_run_id"]
    except FileNotFoundError:
        raise UserError(f"{path}: not found; run `dvc repro` first, or pass {otherwise}") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{path}: no mlflow_run_id; expected the evaluate stage's metrics.json") from None
    return str(run_id)


class RegistryError(UserError, LookupError):
    """No such registered model, version or run; the message names it and what makes one."""


class ModelVersion(NamedTuple):
    name: str
    version: str
    run_id: str
    tags: dict[str, str]

    @property
    def label(self) -> str:
        return f"{self.name} version {self.version} (run {self.run_id})"


def _model_version(found) -> ModelVersion:
    return ModelVersion(found.name, str(found.version), found.run_id or "", dict(found.tags or {}))


def register_model(model_uri: str, name: str, tags: dict[str, str]) -> ModelVersion:
    """A new version of registered model `name` (created on first use) for a logged model, tagged."""
    mlflow.set_tracking_uri(tracking_uri())
    return _model_version(mlflow.register_model(model_uri, name, tags=tags))


def model_version(name: str, version: str) -> ModelVersion:
    try:
        return _model_version(client().get_model_version(name, version))
    except MlflowException as exc:
        if absent(exc):
            raise RegistryError(f"no version {version} of registered model '{name}' in {tracking_uri()}") from None
        raise


def version_of_run(name: str, run_id: str) -> ModelVersion:
    """The newest version of `name` registered from run `run_id`."""
    if not run_id.isalnum():
        raise RegistryError(f"run id {run_id!r}: expected the hex id MLflow gives a run")
    found = client().search_model_versions(
        f"name = {literal(name, 'registered model')} and run_id = {literal(run_id, 'run id')}",
        order_by=["version_number DESC"],
    )
    if not found:
        raise RegistryError(
            f"run {run_id} registered no version of '{name}' in {tracking_uri()}; "
            "the evaluate stage registers one (`dvc repro`)"
        )
    return _model_version(found[0])


def alias_version(name: str, alias: str) -> ModelVersion | None:
    """The version `name@alias` points at; None when the alias (or the model) does not exist yet."""
    try:
        version = client().get_registered_model(name).aliases.get(alias)
    except MlflowException as exc:
        if absent(exc):
            return None
        raise
    return model_version(name, str(version)) if version is not None else None


def set_alias(name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(name, alias, version)


@contextlib.contextmanager
def alias_lock(name: str, alias: str) -> Iterator[None]:
    """Held while a promote judges against `name@alias` and moves it: two promotes on this machine take turns, so
    the second is judged against the first's result. (MLflow's API has no compare-and-set; across machines the
    promote re-reads the alias just before moving it, which leaves a window of one request.)"""
    import hashlib
    import tempfile

    from filelock import FileLock

    key = hashlib.sha256(f"{tracking_uri()}|{name}|{alias}".encode()).hexdigest()[:16]
    with FileLock(str(Path(tempfile.gettempdir()) / f"mnist-mlp-alias-{key}.lock")):
        yield


def run_metrics(run_id: str) -> dict[str, float]:
    """The latest value of each metric of a run."""
    return dict(client().get_run(run_id).data.metrics)


def register_run_model(run_id: str, model_uri: str, name: str, tags: dict[str, str]) -> ModelVersion:
    """A new version of `name` for the model run `run_id` just logged, tagged with where it came from
    (the run's commit and DVC experiment) and `tags`."""
    run_tags = client().get_run(run_id).data.tags
    origin = {key: run_tags[key] for key in ("git_commit", "dvc_exp_name") if run_tags.get(key)}
    return register_model(model_uri, name, {**origin, **tags})
