"""verdicts/presets.py: each finished run counted under the preset whose every param it logged, ranked on validation."""

from __future__ import annotations

import time

import mlflow
import pytest

from mnist_mlp.params import Params, apply_preset, flatten
from mnist_mlp.verdicts.compare import CompareError
from mnist_mlp.verdicts.presets import presets_table
from support.cli import cli_in_process
from support.stores import new_experiment


def log_preset_run(client, experiment_id, params, seed, test_accuracy, status="FINISHED"):
    """A run with every param the train stage logs (params.flatten), as the stage logs them."""
    run_id = client.create_run(experiment_id).info.run_id
    for key, value in {**flatten(params), "train.seed": seed}.items():
        client.log_param(run_id, key, str(value))
    client.log_metric(run_id, "best_val_accuracy", test_accuracy - 0.001)
    client.log_metric(run_id, "test_accuracy", test_accuracy)
    client.log_metric(run_id, "train_seconds", 60.0)
    client.set_terminated(run_id, status)
    time.sleep(0.01)  # distinct start times: the newest run of a seed counts
    return run_id


def test_presets_side_by_side_count_each_run_under_the_preset_whose_params_it_logged(
    mlflow_store, tmp_path, monkeypatch, capsys
):
    presets = tmp_path / "project" / "params"
    presets.mkdir(parents=True)
    (presets / "wide.yaml").write_text("train:\n  hidden_sizes: [1024, 1024]\n  augment:\n    shift: 2\n")
    (presets / "short.yaml").write_text("train:\n  epochs: 2\n")
    wide = apply_preset(Params(), presets / "wide.yaml")
    client = mlflow.MlflowClient(mlflow_store)
    experiment_id = new_experiment(client, "mnist-mlp")
    log_preset_run(client, experiment_id, Params(), 0, 0.90)
    log_preset_run(client, experiment_id, wide, 0, 0.50)  # an older run of seed 0: replaced by the rerun below
    for seed, accuracy in ((0, 0.990), (1, 0.994), (2, 0.992)):
        log_preset_run(client, experiment_id, wide, seed, accuracy)
    log_preset_run(client, experiment_id, wide, 3, 0.2, status="FAILED")
    almost = wide.model_copy(update={"train": wide.train.model_copy(update={"dropout": 0.3})})
    log_preset_run(client, experiment_id, almost, 4, 0.1)  # one param off: no preset's run
    log_preset_run(client, experiment_id, Params(tracking={"sweep_id": "s1"}, train={"device": "cpu"}), 1, 0.92)

    table = presets_table("mnist-mlp", tmp_path / "project").set_index("preset")  # the project root
    assert list(table.index) == ["wide", "default"]  # ranked on validation; `short` has no run
    assert table.loc["default", "runs"] == 2 and table.loc["default", "seeds"] == "0, 1"
    assert str(table.loc["default", "test accuracy [95 %]"]).startswith("0.9100 [")
    assert table.loc["wide", "runs"] == 3 and table.loc["wide", "seeds"] == "0, 1, 2"
    assert table.loc["wide", "test accuracy [95 %]"].mean == pytest.approx(0.992)

    monkeypatch.chdir(tmp_path / "project")
    (tmp_path / "project" / "params.yaml").write_text("{}\n")
    code, out, err = cli_in_process(["compare", "--presets", "--reports", "reports"], capsys)
    assert code == 0, err
    assert str(table.loc["wide", "test accuracy [95 %]"]) in out and out.splitlines()[-1] == "wrote reports/presets.md"
    assert "| wide     |      3 | 0, 1, 2 |" in (tmp_path / "project" / "reports" / "presets.md").read_text()


def test_presets_without_runs_are_one_clear_line(mlflow_store, tmp_path):
    client = mlflow.MlflowClient(mlflow_store)
    experiment_id = new_experiment(client, "mnist-mlp")
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "fast.yaml").write_text("train:\n  epochs: 2\n")  # the presets of the project at tmp_path
    with pytest.raises(CompareError, match="no finished run with a test accuracy in experiment 'mnist-mlp'"):
        presets_table("mnist-mlp", tmp_path)
    log_preset_run(client, experiment_id, Params(train={"epochs": 3}), 0, 0.9)
    with pytest.raises(CompareError, match=r"has the params of default or a preset \(fast\)"):
        presets_table("mnist-mlp", tmp_path)
