"""Same params and seed on CPU give the same weights and test accuracy, bit for bit."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from mnist_mlp.cli import main
from mnist_mlp.core.checkpoint import read_training_record
from mnist_mlp.core.reproducible import check_reproducible, differences, train_and_test
from mnist_mlp.core.train import seeded_model
from mnist_mlp.data.mnist import preprocess
from mnist_mlp.files import md5_of
from mnist_mlp.params import Params, PreprocessParams, TrainParams
from support.cli import run
from support.params import default_params, tiny_params
from support.paths import BIN, ROOT

# dropout on: its masks draw from the RNG too
SHORT = Params(
    preprocess=PreprocessParams(val_size=100),
    train=TrainParams(hidden_sizes=[16], epochs=1, batch_size=64, lr=0.01, dropout=0.2, device="cpu", threads=1),
)


def with_seed(seed: int) -> Params:
    return SHORT.model_copy(update={"train": SHORT.train.model_copy(update={"seed": seed})})


@pytest.fixture
def processed(tiny_raw: Path, tmp_path: Path) -> Path:
    preprocess(tiny_raw, tmp_path / "processed", "standardize", val_size=100, split_seed=0)
    return tmp_path / "processed"


def test_the_same_config_twice_gives_bit_identical_weights_accuracy_and_files(processed, tiny_raw, tmp_path):
    torch_threads = torch.get_num_threads()
    first, second = (
        train_and_test(str(processed), SHORT, str(tmp_path / name), str(tiny_raw)) for name in ("one", "run-2")
    )
    assert torch.get_num_threads() == torch_threads  # deterministic() puts the count back
    assert differences(first, second) == []
    assert sorted(first.file_md5s) == ["model.pt", "test.pt", "train.pt", "val.pt"]
    assert first.file_md5s["train.pt"] == md5_of(processed / "train.pt")  # rebuilt from raw: the same bytes


def test_a_file_that_differs_is_named_with_both_md5s(processed, tmp_path):
    first = train_and_test(str(processed), SHORT, str(tmp_path / "one"))
    second = replace(first, file_md5s={**first.file_md5s, "model.pt": "0" * 32})
    assert differences(first, second) == [f"model.pt: md5 {first.file_md5s['model.pt']} vs {'0' * 32}"]


@pytest.mark.slow
def test_two_runs_in_fresh_processes_are_bit_identical(processed, tiny_raw):
    outcome = check_reproducible(processed, SHORT, tiny_raw)
    assert 0.0 <= outcome.test_accuracy <= 1.0
    assert set(outcome.state) == {"layers.0.weight", "layers.0.bias", "layers.3.weight", "layers.3.bias"}
    assert sorted(outcome.file_md5s) == ["model.pt", "test.pt", "train.pt", "val.pt"]


def test_different_seeds_are_reported_as_different(processed, tmp_path):
    first = train_and_test(str(processed), SHORT, str(tmp_path / "one"))
    second = train_and_test(str(processed), with_seed(1), str(tmp_path / "two"))
    found = differences(first, second)
    assert any(line.startswith("weights layers.0.weight: ") for line in found)
    assert any(line.startswith("model.pt: md5 ") for line in found)
    assert differences(first, first) == []


def test_the_initial_weights_come_from_the_seed():
    first, second = (seeded_model(SHORT.train).state_dict() for _ in range(2))
    other = seeded_model(with_seed(1).train).state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not torch.equal(first["layers.0.weight"], other["layers.0.weight"])


def test_missing_data_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "check-reproducible",
                "--data",
                str(tmp_path / "nowhere"),
                "--params",
                str(tiny_params(tmp_path / "params.yaml")),
            ]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert err.splitlines() == [
        f"mnist-mlp check-reproducible: error: {tmp_path / 'nowhere' / 'train'}.pt: cached split not found; "
        "run `dvc repro preprocess` first"
    ]


@pytest.mark.slow
def test_the_train_stage_run_twice_writes_a_byte_identical_model(processed, tmp_path, monkeypatch):
    """The real stage script, MLflow included: the same bytes under another name, the run ids beside them."""
    params = default_params()
    params["train"].update(hidden_sizes=[32], epochs=2, batch_size=64, lr=0.01, dropout=0.2, device="cpu")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "src"))
    models, run_ids = [], []
    for name in ("first", "second-model"):
        model, record = tmp_path / f"{name}.pt", tmp_path / f"{name}.json"
        run(
            [
                str(BIN / "python"),
                str(ROOT / "stages" / "train.py"),
                "--params",
                str(tmp_path / "params.yaml"),
                "--data",
                str(processed),
                "--model",
                str(model),
                "--record",
                str(record),
                "--log",
                str(tmp_path / f"{name}.csv"),
            ],
            tmp_path,
        )
        models.append(model)
        run_ids.append(read_training_record(record)["mlflow_run_id"])
    assert md5_of(models[0]) == md5_of(models[1])
    assert run_ids[0] != run_ids[1] and run_ids[0].encode() not in models[0].read_bytes()
