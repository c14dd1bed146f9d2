"""Helpers shared by the sweep and browser tests: a real sweep (an Optuna study), the runs in a store."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow

from support.cli import run
from support.paths import BIN


def run_sweep(repo: Path, activations: list[str], dropouts: list[str], *extra: str, env: dict | None = None) -> str:
    """`mnist-mlp sweep` for real (a study on two workers, each trial a `dvc exp run --temp`); return its output."""
    command = [
        str(BIN / "mnist-mlp"),
        "sweep",
        "--activations",
        *activations,
        "--dropouts",
        *dropouts,
        "--jobs",
        "2",
        *extra,
    ]
    return run(command, repo, env=env).stdout


def without_venv_on_path() -> dict:
    """os.environ with the venv's bin folder off PATH, as for `.venv/bin/mnist-mlp` called from a plain shell."""
    return {
        **os.environ,
        "PATH": os.pathsep.join(
            part for part in os.environ["PATH"].split(os.pathsep) if Path(part).resolve() != BIN.resolve()
        ),
    }


def sweep_runs(sweep_id: str) -> list:
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("mnist-mlp")
    return client.search_runs([experiment.experiment_id], f"tags.sweep_id = '{sweep_id}'", max_results=1000)
