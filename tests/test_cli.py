"""`mnist-mlp preset` and `mnist-mlp init-store`, run as a user runs them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest
import yaml

from mnist_mlp.cli import main
from mnist_mlp.params import Params, apply_preset, validate_params
from support.paths import BIN, ROOT

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
    assert set(words[0::2]) == {"-S"}
    overrides = dict(word.split("=", 1) for word in words[1::2])
    assert {
        key: overrides[key]
        for key in ("train.hidden_sizes", "train.activation", "train.lr", "train.dropout", "preprocess.normalization")
    } == {
        "train.hidden_sizes": "[256,128]",
        "train.activation": "tanh",
        "train.lr": "0.003",
        "train.dropout": "0.0",
        "preprocess.normalization": "max",
    }
    # DVC applies them to a params.yaml with leftovers of an earlier experiment, and gets what the
    # preset says plus the defaults: nothing is inherited
    from dvc.utils.hydra import apply_overrides

    leftovers = Params().model_dump()
    leftovers["train"].update(optimizer="rmsprop", epochs=2, seed=5)
    leftovers["preprocess"]["val_size"] = 100
    (repo / "params.yaml").write_text(yaml.safe_dump(leftovers))
    apply_overrides(repo / "params.yaml", words[1::2])
    applied = validate_params(yaml.safe_load((repo / "params.yaml").read_text()))
    expected = apply_preset(Params(), repo / "params" / "wide.yaml")
    assert applied == expected
    assert (applied.train.optimizer, applied.train.epochs, applied.train.seed) == ("adamw", 20, 0)
    assert applied.preprocess.val_size == 5000


def test_a_preset_sets_every_key_a_run_depends_on(repo):
    (repo / "params" / "one.yaml").write_text("train:\n  epochs: 3\ntracking:\n  experiment: other\n")
    keys = {word.split("=", 1)[0] for word in cli(["preset", "one"], cwd=repo).stdout.split()[1::2]}
    defaults = Params().model_dump()
    leaves = {f"{s}.{k}" for s in ("preprocess", "train", "evaluate") for k in defaults[s] if k != "augment"}
    leaves |= {f"train.augment.{k}" for k in defaults["train"]["augment"]}  # a nested section: one -S per key
    assert keys == leaves | {"tracking.experiment"}


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


def test_init_store_creates_the_experiment_with_absolute_paths(
    repo, monkeypatch, capsys, mlflow_store, empty_mlflow_db
):
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


def test_the_command_starts_without_loading_mlflow_or_torch():
    """`mnist-mlp --help` and `$(mnist-mlp preset NAME)` answer at once: each command imports what it runs."""
    import sys

    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, mnist_mlp.cli; print(sorted({'mlflow', 'torch'} & set(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    assert loaded == "[]"
