"""Loading a logged model: a private copy, verified file by file (model_check), then loaded by MLflow with unpickling refused."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from mnist_mlp.errors import UserError
from mnist_mlp.tracking.location import tracking_uri
from mnist_mlp.tracking.model_check import verify_model_folder
from mnist_mlp.tracking.store import check_tracking_server, failure_line

# MLflow 3.17 unpickles by default: a pickled model, and the weights inside a pt2 archive.
# With this it refuses the first and loads the second only after checking it holds no pickle.
NO_PICKLE_ENV = {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class ModelURIError(UserError, ValueError):
    """An MLflow model that cannot be loaded; the message names the URI and why."""


@contextlib.contextmanager
def verified_model(model_uri: str) -> Iterator[Path]:
    """A private local copy of the MLflow model at `model_uri`, checked to be one this project logged.

    The copy is what gets loaded or served, so nothing can change between the check and the load.
    A crafted model (code paths, a loader or pickle module of its own, extra files, another
    flavor) raises model_check.ModelCheckError before any of it is imported or unpickled.
    """
    # a progress bar per download would bury predict's one-line-per-file output
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    check_tracking_server()
    mlflow.set_tracking_uri(tracking_uri())
    if Path(model_uri).is_dir():  # a local folder: checked as it is (a link would be followed by the copy)
        verify_model_folder(model_uri, model_uri)
    with tempfile.TemporaryDirectory(prefix="mnist-mlp-model-") as scratch:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=scratch))
        except (MlflowException, OSError, ValueError) as exc:
            raise ModelURIError(
                f"{model_uri}: cannot download the MLflow model from {tracking_uri()} ({failure_line(exc)})"
            ) from None
        verify_model_folder(local, model_uri)
        yield local


def load_pixel_classifier(model_uri: str):
    """The logged pixels -> probabilities module of `model_uri` (runs:/..., models:/..., a folder).

    Verified first (`verified_model`), then loaded by MLflow with unpickling refused whatever
    MLFLOW_ALLOW_PICKLE_DESERIALIZATION says: the pt2 archive loads once MLflow finds it pickle-free.
    """
    with verified_model(model_uri) as local:
        try:
            with _environment(NO_PICKLE_ENV):
                return mlflow.pytorch.load_model(str(local))
        except (MlflowException, OSError, RuntimeError, ValueError) as exc:
            raise ModelURIError(
                f"{model_uri}: cannot load the MLflow model from {tracking_uri()} ({failure_line(exc)})"
            ) from None


def predicted_digits(model_uri: str, pixels):
    """The verified model's answer (its most probable digit) for each row of `pixels`, (N, 784) in [0, 1]:
    what a verdict rests on, instead of a predictions file anyone who can log a run could have written."""
    import numpy as np
    import torch

    classifier = load_pixel_classifier(model_uri)
    with torch.inference_mode():
        return classifier(torch.as_tensor(np.asarray(pixels, dtype=np.float32))).argmax(dim=1).numpy()
