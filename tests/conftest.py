"""Fixtures only: tiny MNIST-format data, a throwaway git + DVC project, MLflow stores, servers, a browser.

Their building blocks, and every helper a test imports, are in tests/support/ (`from support.X import Y`).
No test touches the network or ../shared: the data is synthetic but in the real IDX format, so every
parser, stage and pipeline path runs for real.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Every MLflow store a test opens without naming its own goes to a session temp folder, never the project's
# mlflow.db or mlruns/: set before anything below imports MLflow, whose default is sqlite:///mlflow.db in the
# current folder. A study storage is each throwaway project's own optuna.db (support.project clears STUDY_STORAGE).
SESSION_STORE = f"sqlite:///{Path(tempfile.mkdtemp(prefix='mnist-mlp-test-stores-')) / 'mlflow.db'}"
os.environ["MLFLOW_TRACKING_URI"] = SESSION_STORE

import pytest  # noqa: E402

from support import browser as browser_support  # noqa: E402
from support.checkout import checkout_changes, snapshot  # noqa: E402
from support.faults import stage_in_process  # noqa: E402
from support.mnist_files import write_tiny_mnist  # noqa: E402
from support.params import tiny_params  # noqa: E402
from support.project import CLEARED_ENV, build_template, copy_project  # noqa: E402

# --- the checkout stays as the session found it ----------------------------------------------------

_CHECKOUT_BEFORE: dict = {}


def pytest_sessionstart(session) -> None:
    """Note the checkout's files, to compare them with what the session leaves."""
    _CHECKOUT_BEFORE.update(snapshot())


@pytest.fixture(autouse=True)
def _session_store_in_the_environment() -> None:
    """Before every test: MLflow's `set_tracking_uri(None)` (which fixtures call to reset MLflow) also unsets
    MLFLOW_TRACKING_URI, and the next MLflow call would then make sqlite:///mlflow.db in the checkout."""
    os.environ.setdefault("MLFLOW_TRACKING_URI", SESSION_STORE)


def pytest_sessionfinish(session, exitstatus) -> None:
    """Fail the session when the checkout gained, lost or changed a file while it ran."""
    changes = checkout_changes(_CHECKOUT_BEFORE, snapshot())
    if changes:
        shown = "\n  ".join(changes[:20]) + (f"\n  ... and {len(changes) - 20} more" if len(changes) > 20 else "")
        print(f"\nerror: the tests changed the checkout (every store belongs under a test's temp dir):\n  {shown}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --- data ------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_raw(tmp_path: Path) -> Path:
    """data/raw as the download stage leaves it: the four files uncompressed."""
    return write_tiny_mnist(tmp_path / "raw", compress=False)


@pytest.fixture
def tiny_processed(tiny_raw: Path, tmp_path: Path) -> Path:
    """data/processed as the preprocess stage leaves it, from the tiny raw files (val 100)."""
    from mnist_mlp.data.mnist import preprocess

    out = tmp_path / "processed"
    preprocess(tiny_raw, out, "standardize", val_size=100, split_seed=0)
    return out


@pytest.fixture
def trained_before(tmp_path: Path, capsys, monkeypatch) -> Path:
    """Cached splits, and the model and log of an earlier run that a failed run must not touch."""
    raw = write_tiny_mnist(tmp_path / "raw", train_count=300, test_count=60, compress=False)
    tiny_params(tmp_path / "params.yaml", preprocess={"val_size": 60})
    assert (
        stage_in_process(
            "preprocess", ["--raw", str(raw), "--out", "data/processed"], tmp_path, capsys, monkeypatch
        ).code
        == 0
    )
    (tmp_path / "models").mkdir()
    (tmp_path / "models/model.pt").write_bytes(b"the previous model")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/training_log.csv").write_text("epoch,train_loss\n1,0.5\n")
    return tmp_path


# --- the throwaway project -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def project_template(tmp_path_factory) -> Path:
    """The git + DVC project, built once a session (support.project.build_template); never changed by a test."""
    return build_template(tmp_path_factory.mktemp("project-template"))


@pytest.fixture
def project(project_template: Path, tmp_path: Path, monkeypatch) -> Path:
    """A fresh git+DVC copy of this project on tiny synthetic data, MLflow store in the temp folder.

    tmp_path holds project/ (returned), mirror/, checksums.yaml and store/, and the environment points
    there (support.project.project_env). The synthetic files' md5s differ from MNIST's, so
    MNIST_CHECKSUMS names theirs (the same hook that lets a user train on another MNIST-format data set).
    """
    repo, env = copy_project(project_template, tmp_path)
    for key in CLEARED_ENV:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return repo


# --- MLflow stores ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """A new MLflow SQLite store with its schema migrated, made once: a migration takes 10-15 s here.

    Copy it where a test's store goes (`shutil.copy(empty_mlflow_db, store / "mlflow.db")`, or
    support.faults.fresh_store).
    """
    import mlflow

    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch, empty_mlflow_db: Path) -> str:
    """MLFLOW_TRACKING_URI at a fresh SQLite store in the temp folder; this process's MLflow state reset after."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    shutil.copy(empty_mlflow_db, tmp_path / "store" / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for key in CLEARED_ENV:
        monkeypatch.delenv(key, raising=False)
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run("FAILED")
    mlflow.set_tracking_uri(None)


# --- servers and a browser (tiers browser and server) ----------------------------------------------


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """`mlflow server` on a free 127.0.0.1 port, against MLFLOW_TRACKING_URI; its URL. Stopped after."""
    yield from browser_support.mlflow_server(tmp_path)


@pytest.fixture
def browser(tmp_path: Path):
    """Headless Chromium (`make browser-deps`): a selenium WebDriver."""
    yield from browser_support.browser(tmp_path)


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory):
    """One tracking server on PostgreSQL for a test module (`make server-deps`); its URI is `pg_server.uri`."""
    from support.server import tracking_server

    with tracking_server(tmp_path_factory.mktemp("pg-server")) as started:
        yield started
