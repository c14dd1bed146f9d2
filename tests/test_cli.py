"""`mnist-mlp preset` and `mnist-mlp init-store`, run as a user runs them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest
import yaml

from conftest import BIN, ROOT
from mnist_mlp.cli import main
from mnist_mlp.params import validate_params

CLI = str(BIN / "mnist-mlp")


def cli(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    """A folder with .dvc/ and a params/ of presets."""
    monkeypatch.delenv("DVC_ROOT", raising=False)
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    (repo / "params").mkdir()
    return repo


def words_of_command_substitution(command: str, cwd: Path) -> list[str]:
    """The arguments `dvc exp run $(command)` would receive from bash."""
    out = subprocess.run(
        ["bash", "-c", f"printf '%s\\n' $({command})"], cwd=cwd, capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()


def test_preset_prints_set_overrides_that_survive_command_substitution(repo):
    (repo / "params" / "wide.yaml").write_text(
        "train:\n  hidden_sizes: [256, 128]\n  activation: tanh\n  lr: 0.003\n  dropout: 0\n"
        "preprocess:\n  normalization: max\n"
    )
    words = words_of_command_substitution(f"{CLI} preset wide", cwd=repo / "params")  # from a subfolder too
    assert words == [
        "-S", "train.hidden_sizes=[256,128]",
        "-S", "train.activation=tanh",
        "-S", "train.lr=0.003",
        "-S", "train.dropout=0",
        "-S", "preprocess.normalization=max",
    ]
    # DVC applies them to params.yaml as `dvc exp run -S` does, and gets what the preset says
    from dvc.utils.hydra import apply_overrides

    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    apply_overrides(repo / "params.yaml", words[1::2])
    applied = validate_params(yaml.safe_load((repo / "params.yaml").read_text()))
    assert applied.train.hidden_sizes == [256, 128] and applied.train.activation == "tanh"
    assert (applied.train.lr, applied.train.dropout) == (0.003, 0.0)
    assert applied.preprocess.normalization == "max"


def test_the_shipped_tutorial_preset(monkeypatch):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    words = cli(["preset", "tutorial"], cwd=ROOT).stdout.split()
    overrides = dict(word.split("=", 1) for word in words[1::2])
    assert set(words[0::2]) == {"-S"}
    assert overrides["preprocess.normalization"] == "max"
    assert overrides["train.optimizer"] == "rmsprop"
    assert overrides["train.schedule"] == "none"


def test_an_unknown_preset_lists_the_available_ones(repo):
    (repo / "params" / "fast.yaml").write_text("train:\n  epochs: 1\n")
    (repo / "params" / "tutorial.yaml").write_text("train:\n  epochs: 2\n")
    result = cli(["preset", "nope"], cwd=repo, check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == (
        f"mnist-mlp preset: error: {repo / 'params' / 'nope.yaml'}: no such preset; available: fast, tutorial"
    )


def test_an_invalid_preset_fails_naming_the_key(repo):
    (repo / "params" / "typo.yaml").write_text("train:\n  dropuot: 0.5\n")
    result = cli(["preset", "typo"], cwd=repo, check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("mnist-mlp preset: error: ")
    assert "unknown key 'train.dropuot'; did you mean 'train.dropout'?" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_value_that_cannot_pass_through_the_shell_is_refused(repo):
    (repo / "params" / "spaced.yaml").write_text("tracking:\n  experiment: my runs\n")
    result = cli(["preset", "spaced"], cwd=repo, check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert "'tracking.experiment'" in result.stderr and "spaces or quotes" in result.stderr


def test_init_store_creates_the_experiment_with_absolute_paths(repo, monkeypatch, capsys, mlflow_store, empty_mlflow_db):
    # in this process: a `mnist-mlp` process spends 10 s importing MLflow on these shared cores
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    shutil.copy(empty_mlflow_db, repo / "mlflow.db")  # a migrated empty store: a new one takes 10+ s
    sub = repo / "src"
    sub.mkdir()
    monkeypatch.chdir(sub)
    main(["init-store", "--experiment", "demo"])
    first = capsys.readouterr().out
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    assert first.startswith(f"MLflow store {uri}, experiment 'demo' (id ")
    assert not (sub / "mlflow.db").exists() and not (sub / "mlruns").exists()

    experiment = mlflow.MlflowClient(uri).get_experiment_by_name("demo")
    assert experiment.artifact_location == (repo / "mlartifacts").as_uri()
    # idempotent: the same experiment, not a second one
    main(["init-store", "--experiment", "demo"])
    assert capsys.readouterr().out == first
    assert [e.name for e in mlflow.MlflowClient(uri).search_experiments()].count("demo") == 1


def test_init_store_honours_mlflow_tracking_uri(tmp_path, monkeypatch, capsys, mlflow_store):
    monkeypatch.chdir(tmp_path)
    main(["init-store"])
    assert capsys.readouterr().out.startswith(f"MLflow store {mlflow_store}, experiment 'mnist-mlp'")
    assert mlflow.MlflowClient(mlflow_store).get_experiment_by_name("mnist-mlp") is not None
