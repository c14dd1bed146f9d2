"""A local MLflow store that is locked or damaged, and values that go into MLflow's filter strings:
one line naming the store or the value, never SQLAlchemy's traceback."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from mnist_mlp.tracking import registry, store
from support.cli import cli_in_process
from support.faults import Outcome, assert_one_clear_error, stage_in_process
from support.params import tiny_params
from support.paths import ROOT

COMMANDS = {
    "predict": ["predict", "--model", "runs:/0123456789abcdef/model", "x.png"],
    "compare": ["compare", "--sweep-id", "s1"],
    "promote": ["promote", "--run-id", "0123456789abcdef", "--model", "digits"],
    "close-stale-runs": ["close-stale-runs", "--dry-run"],
}


@pytest.fixture
def damaged_store(mlflow_store: str) -> str:
    path = Path(mlflow_store.removeprefix("sqlite:///"))
    with open(path, "r+b") as handle:
        handle.write(b"not an sqlite header" * 5)
    return mlflow_store


@pytest.fixture
def locked_store(mlflow_store: str):
    """Another process (here: this test's own connection) holds the store's write lock."""
    holder = sqlite3.connect(mlflow_store.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    yield mlflow_store
    holder.execute("ROLLBACK")
    holder.close()


def _cli(argv: list[str], tmp_path: Path, capsys, monkeypatch) -> Outcome:
    monkeypatch.chdir(tmp_path)
    tiny_params(tmp_path / "params.yaml")
    shutil.copy(ROOT / "metrics_rules.yaml", tmp_path)
    return Outcome(*cli_in_process(argv, capsys))


@pytest.mark.bad_input
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_damaged_store_is_one_line_naming_it(damaged_store, command, tmp_path, capsys, monkeypatch):
    outcome = _cli(COMMANDS[command], tmp_path, capsys, monkeypatch)
    assert_one_clear_error(
        outcome,
        f"mnist-mlp {command}",
        f"{damaged_store}: the MLflow store is damaged (SQLITE_NOTADB",
        "move it aside to start a new store",
    )


@pytest.mark.bad_input
@pytest.mark.parametrize("command", ["compare", "close-stale-runs"])
def test_a_locked_store_is_one_line_naming_it(locked_store, command, tmp_path, capsys, monkeypatch):
    outcome = _cli(COMMANDS[command], tmp_path, capsys, monkeypatch)
    assert_one_clear_error(
        outcome, f"mnist-mlp {command}", f"{locked_store}: the MLflow store is locked by another process (SQLITE_BUSY)"
    )


@pytest.mark.bad_input
@pytest.mark.parametrize("store", ["damaged_store", "locked_store"])
def test_training_on_a_broken_store_is_one_line(trained_before, store, request, capsys, monkeypatch):
    uri = request.getfixturevalue(store)
    outcome = stage_in_process("train", [], trained_before, capsys, monkeypatch)
    assert_one_clear_error(outcome, "train", f"{uri}: the MLflow store is")


@pytest.mark.bad_input
@pytest.mark.parametrize("name", ["bad'name", "a' or name != '", "x\\y"])
def test_promote_refuses_a_model_name_it_could_not_have_registered(mlflow_store, name, tmp_path, capsys, monkeypatch):
    outcome = _cli(["promote", "--run-id", "0123456789abcdef", "--model", name], tmp_path, capsys, monkeypatch)
    assert_one_clear_error(outcome, "mnist-mlp promote", "--model: invalid 'tracking.registered_model'")


@pytest.mark.bad_input
def test_a_quote_never_reaches_a_filter_string():
    assert store.literal("relu-0.2", "sweep id") == "'relu-0.2'"
    for value in ("it's", "a\\b"):
        with pytest.raises(store.FilterValueError, match="cannot be searched for"):
            store.literal(value, "sweep id")
    with pytest.raises(store.FilterValueError):
        registry.version_of_run("bad'name", "0123456789abcdef")


@pytest.mark.bad_input
def test_serve_bounds_its_port_and_warns_on_a_public_host(tmp_path, capsys, monkeypatch):
    outcome = _cli(["serve", "--port", "99999"], tmp_path, capsys, monkeypatch)
    assert outcome.code == 2 and "expected a port number from 1 to 65535" in outcome.err
    outcome = _cli(["serve", "--host", "0.0.0.0", "--model-uri", str(tmp_path / "none")], tmp_path, capsys, monkeypatch)
    assert "warning: --host 0.0.0.0 accepts requests from other machines" in outcome.err and outcome.code == 1
