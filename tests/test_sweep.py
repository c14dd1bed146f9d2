"""sweep.py: the grid and its validation (fast), and a real queued sweep into one MLflow store (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import BIN, run
from mnist_mlp import sweep
from mnist_mlp.params import ParamsError
from sweep_support import run_sweep, sweep_runs


def test_the_grid_is_every_combination_named_by_sweep_and_setting():
    planned = sweep.plan(["relu", "gelu"], [0.1, 0.3, 0.1], sets=["train.epochs=2"], sweep_id="s1")
    assert planned.names() == ["s1-relu-do0.1", "s1-relu-do0.3", "s1-gelu-do0.1", "s1-gelu-do0.3"]
    assert planned.settings[1].overrides() == ["train.activation=relu", "train.dropout=0.3"]
    assert planned.extra == ["train.epochs=2"]
    seeded = sweep.plan(["relu"], [0.0], seeds=[0, 1], sweep_id="s2")
    assert seeded.names() == ["s2-relu-do0-s0", "s2-relu-do0-s1"]
    assert seeded.settings[1].overrides()[-1] == "train.seed=1"
    assert sweep.new_sweep_id().replace("-", "").isdigit()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"activations": ["relu", "swish"], "dropouts": [0.0]}, "invalid 'train.activation' \\(got 'swish'\\).*allowed: relu"),
        ({"activations": ["relu"], "dropouts": [1.0]}, "invalid 'train.dropout' \\(got 1.0\\)"),
        ({"activations": ["relu"], "dropouts": [0.0], "sets": ["train.epoch=2"]}, "unknown key 'train.epoch'; did you mean 'train.epochs'"),
        ({"activations": ["relu"], "dropouts": [0.0], "sets": ["train.epochs"]}, "expected section.key=value"),
        ({"activations": ["relu"], "dropouts": [0.0], "sets": ["train.dropout=0.1"]}, "set by the sweep itself"),
        ({"activations": ["relu"], "dropouts": [0.0], "sweep_id": "a b"}, "invalid 'tracking.sweep_id'"),
        ({"activations": [], "dropouts": [0.0]}, "at least one activation"),
    ],
)
def test_a_bad_grid_is_refused_before_anything_is_queued(kwargs, message):
    with pytest.raises((sweep.SweepError, ParamsError), match=message):
        sweep.plan(**kwargs)


def test_workers_share_the_cores():
    assert sweep.threads_per_worker(2, cores=2) == 1
    assert sweep.threads_per_worker(4, cores=2) == 1
    assert sweep.threads_per_worker(2, cores=8) == 4


def test_the_cli_reports_a_bad_grid_in_one_line(tmp_path):
    result = run([str(BIN / "mnist-mlp"), "sweep", "--activations", "swish"], tmp_path, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("mnist-mlp sweep: error: sweep point swish/0.0: invalid 'train.activation'")


@pytest.mark.slow
def test_a_queued_sweep_logs_every_run_once_to_the_workspace_store(project: Path, tmp_path: Path):
    # The workspace run trains relu/dropout 0.2 first: the DVC run-cache then holds that
    # training, and the sweep's relu/0.2 point must still train and log its own run.
    run([str(BIN / "dvc"), "repro", "-q"], project)
    output = run_sweep(project, ["relu", "tanh"], ["0.0", "0.2"], "--sweep-id", "t1")
    names = [f"t1-{a}-do{d}" for a in ("relu", "tanh") for d in ("0", "0.2")]
    assert "4/4 done" in output and all(name in output for name in names)
    assert "note: " not in output  # the workers were fresh, with this sweep's environment

    runs = {found.info.run_name: found for found in sweep_runs("t1")}
    assert sorted(runs) == sorted(names)
    workspace_run = json.loads((project / "reports" / "metrics.json").read_text())["mlflow_run_id"]
    for name, logged in runs.items():
        assert logged.info.status == "FINISHED"
        assert logged.info.run_id != workspace_run
        assert logged.data.tags["dvc_exp_name"] == name and logged.data.tags["torch_threads"] == "1"
        assert {"best_val_accuracy", "test_accuracy", "val_accuracy"} <= set(logged.data.metrics)
        # artifacts live in the workspace, not in the deleted .dvc/tmp/exps copy
        artifacts = Path(logged.info.artifact_uri.removeprefix("file://"))
        assert artifacts.is_dir() and project / "mlartifacts" in artifacts.parents

    # the report agrees with `dvc exp show`, run by run
    shown = json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], project).stdout)
    experiments = {
        exp["name"]: exp["data"]["metrics"]["reports/metrics.json"]["data"]
        for commit in shown for exp in (commit.get("experiments") or []) for exp in exp["revs"]
        if exp.get("name") in names
    }  # fmt: skip
    assert sorted(experiments) == sorted(names)
    for name, metrics in experiments.items():
        assert metrics["mlflow_run_id"] == runs[name].info.run_id
        assert metrics["test"]["accuracy"] == pytest.approx(runs[name].data.metrics["test_accuracy"])

    run([str(BIN / "mnist-mlp"), "compare"], project)
    report = (project / "reports" / "compare.md").read_text()
    assert "sweep `t1`" in report and (project / "reports" / "figures" / "compare.png").stat().st_size > 10_000
    for name in names:
        assert f"| {name} |" in report

    # `dvc plots diff` draws the sweep's training curves together
    run([str(BIN / "dvc"), "plots", "diff", *names, "-o", str(tmp_path / "plots")], project)
    page = (tmp_path / "plots" / "index.html").read_text()
    assert all(name in page for name in names) and "val_accuracy" in page


def test_wait_starts_workers_again_when_they_exit_with_experiments_still_queued():
    from mnist_mlp.sweep import wait

    # what `dvc queue status` reported after a `dvc queue stop` had left its shutdown behind
    script = iter(
        [
            ({"a": "Success", "b": "Queued"}, (0, 0)),
            ({"a": "Success", "b": "Queued"}, (0, 0)),
            ({"a": "Success", "b": "Running"}, (1, 0)),
            ({"a": "Success", "b": "Success"}, (0, 1)),
        ]
    )
    restarts = []
    outcome = wait(Path("."), ["a", "b"], poll_s=0, status=lambda root: next(script),
                   restart_workers=lambda: restarts.append(1))
    assert outcome == {"a": "Success", "b": "Success"}
    assert restarts == [1]
