"""Where the project's MLflow store is, decided in one place (and without importing MLflow, for `make`).

The store is `MLFLOW_TRACKING_URI` when set, else `sqlite:///<repo>/mlflow.db`; a SQLite store's
artifacts are in `mlartifacts` beside its file, both absolute. `<repo>` is `DVC_ROOT` when DVC sets
it: queued and temp experiments run in a throwaway copy under `.dvc/tmp/exps/`, and a
store relative to that copy would be deleted with it.
"""

from __future__ import annotations

import os
from pathlib import Path

from mnist_mlp.project import repo_root


def tracking_uri(root: Path | None = None) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(root or repo_root()) / 'mlflow.db'}"


def artifact_root(root: Path | None = None) -> str:
    """Where a local store's artifacts go: `mlartifacts` beside its SQLite file (the repo's, or
    MLFLOW_TRACKING_URI's), never a folder relative to the current directory."""
    db = local_sqlite_path(tracking_uri(root))
    return ((db.parent if db else (root or repo_root())) / "mlartifacts").as_uri()


def local_sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


if __name__ == "__main__":  # `make ui`: the URI, without importing MLflow or torch
    print(tracking_uri())
