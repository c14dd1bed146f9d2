"""checkpoint.py: models/model.pt round-trips, loads with weights_only, refuses what does not fit."""

from __future__ import annotations

import pytest
import torch

from mnist_mlp.core.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_training_record,
    save_checkpoint,
    write_training_record,
)
from mnist_mlp.core.model import MLP
from mnist_mlp.data.mnist import Normalization
from mnist_mlp.errors import UserError
from mnist_mlp.files import md5_of

PARAMS = {"train": {"hidden_sizes": [24, 12], "activation": "tanh", "dropout": 0.3}}
INFO = {"best_val_accuracy": 0.97, "best_epoch": 2, "epochs": 3, "device": "cpu"}


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = MLP([24, 12], "tanh", 0.3)
    path = tmp_path / "models" / "model.pt"
    save_checkpoint(path, model, Normalization(0.13, 0.31), PARAMS, INFO)
    return path, model


def test_round_trip(saved):
    path, model = saved
    loaded = load_checkpoint(path)
    assert (loaded.model.hidden_sizes, loaded.model.activation, loaded.model.dropout) == ([24, 12], "tanh", 0.3)
    assert not loaded.model.training
    original, restored = model.state_dict(), loaded.model.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    assert loaded.normalization == Normalization(0.13, 0.31)
    assert loaded.params == PARAMS and loaded.info == INFO

    pixels = torch.rand(3, 784)
    model.eval()
    expected = torch.softmax(model((pixels - 0.13) / 0.31), dim=1)
    torch.testing.assert_close(loaded.classifier()(pixels), expected)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]  # no temp file left


def test_the_file_loads_with_weights_only(saved):
    path, _ = saved
    blob = torch.load(path, weights_only=True)
    assert blob["format_version"] == 1
    assert blob["architecture"] == {"hidden_sizes": [24, 12], "activation": "tanh", "dropout": 0.3}
    assert all(tensor.device.type == "cpu" for tensor in blob["state_dict"].values())


class Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_a_file_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match=f"{path}: refused to load: not a plain-tensor checkpoint"):
        load_checkpoint(path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(garbage)


def test_a_wrong_shape_state_dict_is_a_checkpoint_error(saved):
    path, _ = saved
    blob = torch.load(path, weights_only=True)
    blob["state_dict"]["layers.0.weight"] = torch.zeros(5, 784)
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="weights do not fit the recorded architecture") as caught:
        load_checkpoint(path)
    assert isinstance(caught.value, UserError)
    assert "size mismatch for layers.0.weight" in str(caught.value)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="model file not found; run `dvc repro`"):
        load_checkpoint(tmp_path / "model.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match=r"not a mnist-mlp checkpoint \(format_version 1 expected\)"):
        load_checkpoint(foreign)


def test_the_same_model_gives_the_same_bytes_under_any_name(saved, tmp_path):
    path, model = saved
    elsewhere = tmp_path / "another folder" / "renamed-model.pt"
    save_checkpoint(elsewhere, model, Normalization(0.13, 0.31), PARAMS, INFO)
    assert md5_of(elsewhere) == md5_of(path)
    save_checkpoint(elsewhere, model, Normalization(0.13, 0.31), PARAMS, {**INFO, "best_epoch": 3})
    assert md5_of(elsewhere) != md5_of(path)  # the bytes do follow the content


@pytest.mark.bad_input
def test_the_training_record_round_trips_and_refuses_what_is_not_one(tmp_path):
    record = tmp_path / "training_run.json"
    maker = {"cpu_kind": "Intel AVX512", "torch": "2.14.1"}
    write_training_record(record, "0123abcd", 12.34567, maker)
    assert read_training_record(record) == {"mlflow_run_id": "0123abcd", "train_seconds": 12.346, "made_by": maker}
    expected = "expected the train stage's record ({mlflow_run_id, train_seconds, made_by}); run `dvc repro train`"
    for text, problem in (
        ('{"mlflow_run_id": 5, "train_seconds": 1, "made_by": {}}', ""),
        ("[1]", ""),
        ("{", "not readable JSON (JSONDecodeError); "),
        ('{"mlflow_run_id": "x", "train_seconds": true, "made_by": {}}', ""),
        ('{"mlflow_run_id": "x", "train_seconds": 1}', ""),
    ):
        record.write_text(text)
        with pytest.raises(CheckpointError) as refused:
            read_training_record(record)
        assert str(refused.value) == f"{record}: {problem}{expected}"
    with pytest.raises(CheckpointError, match="training_run.json: not found; expected"):
        read_training_record(tmp_path / "absent" / "training_run.json")
