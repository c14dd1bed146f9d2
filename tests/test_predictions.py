"""tracking/predictions.py: the per-digit predictions file, read back as untrusted input."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest

from mnist_mlp.tracking import predictions
from support.predictions import LABELS, log_predictions, predictions_text, right
from support.stores import new_experiment


def test_a_file_the_evaluate_stage_writes_reads_back_digit_for_digit(tmp_path):
    path = tmp_path / "predictions.csv"
    path.write_text("actual,predicted\r\n7,7\r\n2,1\r\n")  # csv's own line ends, as files.write_csv writes them
    found = predictions.read(path)
    assert list(found.actual) == [7, 2] and list(found.predicted) == [7, 1] and list(found.correct) == [True, False]


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "not a predictions file; expected 'actual,predicted'"),
        ("actual,predicted\n", "not a predictions file"),
        ("label,guess\n1,1\n", "not a predictions file"),
        ("actual,predicted\n1,1,1\n", ":2: '1,1,1' is not two digits"),
        ("actual,predicted\n1,10\n", ":2: '1,10' is not two digits"),
        ("actual,predicted\n1,-1\n", ":2: '1,-1' is not two digits"),
        ("actual,predicted\n1,1\n٣,1\n", ":3: '٣,1' is not two digits"),  # a digit to str.isdigit, not 0-9 to int()
    ],
)
def test_anything_but_two_digits_per_line_is_one_line_naming_the_place(text, expected):
    with pytest.raises(predictions.PredictionsError, match=expected.replace("(", r"\(")):
        predictions.parse(text, "somewhere")


@pytest.mark.bad_input
def test_an_oversized_or_binary_file_is_refused_before_it_is_parsed(tmp_path):
    big = tmp_path / "big.csv"
    big.write_text("actual,predicted\n" + "1,1\n" * 300_000)
    with pytest.raises(predictions.PredictionsError, match="1,200,017 bytes, more than a predictions file"):
        predictions.read(big)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"actual,predicted\n\xff\xfe\n")
    with pytest.raises(predictions.PredictionsError, match="not UTF-8 text"):
        predictions.read(binary)


def test_a_runs_logged_predictions_and_a_run_without_them(mlflow_store):
    client = mlflow.MlflowClient(mlflow_store)
    experiment_id = new_experiment(client, "unit")
    with_file, without = (client.create_run(experiment_id).info.run_id for _ in range(2))
    log_predictions(client, with_file, right(1_900))
    found = predictions.logged(with_file)
    assert (found.actual == LABELS).all() and found.correct.sum() == 1_900
    assert predictions.logged(without) is None  # a run from before predictions were logged


@pytest.mark.bad_input
def test_an_oversized_artifact_is_refused_before_it_is_downloaded(mlflow_store, monkeypatch):
    client = mlflow.MlflowClient(mlflow_store)
    run_id = client.create_run(new_experiment(client, "unit")).info.run_id
    text = predictions_text(np.ones(len(LABELS), bool)) * 160
    assert len(text) > predictions.MAX_BYTES
    log_predictions(client, run_id, text=text)
    monkeypatch.setattr(mlflow.MlflowClient, "download_artifacts", lambda *args: pytest.fail("downloaded"))
    with pytest.raises(
        predictions.PredictionsError,
        match=f"run {run_id}: evaluation/predictions.csv is .* bytes, not a predictions file",
    ):
        predictions.logged(run_id)
