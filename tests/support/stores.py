"""Experiments made by hand in a test's MLflow store, their artifacts beside it (MLflow's own default is
./mlruns in the current directory: the checkout)."""

from __future__ import annotations

from mnist_mlp.tracking.location import artifact_root


def new_experiment(client, name: str) -> str:
    """`client.create_experiment(name)` with its artifacts in the store's folder (MLFLOW_TRACKING_URI's)."""
    return client.create_experiment(name, artifact_location=artifact_root())
