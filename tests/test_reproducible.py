"""Same params and seed on CPU give the same weights and test accuracy, bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from conftest import BIN, ROOT, default_params, run
from faults_support import tiny_params
from mnist_mlp.cli import main
from mnist_mlp.data import preprocess
from mnist_mlp.params import TrainParams
from mnist_mlp.reproducible import check_reproducible, differences, train_and_test
from mnist_mlp.train import seeded_model

# dropout on: its masks draw from the RNG too
SHORT = TrainParams(hidden_sizes=[16], epochs=1, batch_size=64, lr=0.01, dropout=0.2, device="cpu")


@pytest.fixture
def processed(tiny_raw: Path, tmp_path: Path) -> Path:
    preprocess(tiny_raw, tmp_path / "processed", "standardize", val_size=100, split_seed=0)
    return tmp_path / "processed"


def test_the_same_config_twice_gives_bit_identical_weights_and_accuracy(processed):
    torch_threads = torch.get_num_threads()
    first, second = (train_and_test(str(processed), SHORT, threads=1) for _ in range(2))
    torch.set_num_threads(torch_threads)
    assert differences(first, second) == []
    assert first.test_accuracy == second.test_accuracy


@pytest.mark.slow
def test_two_runs_in_fresh_processes_are_bit_identical(processed):
    outcome = check_reproducible(processed, SHORT, threads=1)
    assert 0.0 <= outcome.test_accuracy <= 1.0
    assert set(outcome.state) == {"layers.0.weight", "layers.0.bias", "layers.3.weight", "layers.3.bias"}


def test_different_seeds_are_reported_as_different(processed):
    torch_threads = torch.get_num_threads()
    first = train_and_test(str(processed), SHORT, threads=1)
    second = train_and_test(str(processed), SHORT.model_copy(update={"seed": 1}), threads=1)
    torch.set_num_threads(torch_threads)
    found = differences(first, second)
    assert any(line.startswith("weights layers.0.weight: ") for line in found)
    assert differences(first, first) == []


def test_the_initial_weights_come_from_the_seed():
    first, second = (seeded_model(SHORT).state_dict() for _ in range(2))
    other = seeded_model(SHORT.model_copy(update={"seed": 1})).state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not torch.equal(first["layers.0.weight"], other["layers.0.weight"])


def test_missing_data_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["check-reproducible", "--data", str(tmp_path / "nowhere"), "--params", str(tiny_params(tmp_path / "params.yaml"))])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert err.splitlines() == [
        f"mnist-mlp check-reproducible: error: {tmp_path / 'nowhere' / 'train'}.pt: cached split not found; "
        "run `dvc repro preprocess` first"
    ]


@pytest.mark.slow
def test_the_train_stage_run_twice_writes_identical_weights(processed, tmp_path, monkeypatch):
    """The real stage script, MLflow included: its model must start from seeded weights too."""
    params = default_params()
    params["train"].update(hidden_sizes=[32], epochs=2, batch_size=64, lr=0.01, dropout=0.2, device="cpu")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "src"))
    states = []
    for name in ("first", "second"):
        model = tmp_path / f"{name}.pt"
        run([str(BIN / "python"), str(ROOT / "stages" / "train.py"), "--params", str(tmp_path / "params.yaml"),
             "--data", str(processed), "--model", str(model), "--log", str(tmp_path / f"{name}.csv")], tmp_path)  # fmt: skip
        states.append(torch.load(model, weights_only=True)["state_dict"])
    assert all(torch.equal(states[0][name], states[1][name]) for name in states[0])
