"""sweep.py: the grid and its validation, the safe base and DVC's real queue (fast); a real queued sweep into one
MLflow store (slow)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from support.cli import cli_in_process, run
from support.paths import BIN
from support.sweep import run_sweep, sweep_runs, without_venv_on_path
from mnist_mlp.experiments import sweep
from mnist_mlp.params import ParamsError


def _edit_params(repo: Path, **train) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"].update(train)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _head(repo: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def test_the_grid_is_one_set_of_dvc_overrides():
    planned = sweep.plan(["relu", "gelu"], [0.1, 0.3, 0.1], sets=["train.epochs=2"], sweep_id="s1")
    assert planned.names == ["s1-1", "s1-2", "s1-3", "s1-4"]
    assert planned.overrides("abc") == ["-S", "train.activation=relu,gelu", "-S", "train.dropout=0.1,0.3",
                                        "-S", 'tracking.sweep_id="s1"', "-S", 'tracking.sweep_base="abc"',
                                        "-S", "train.epochs=2"]  # fmt: skip
    assert sweep.plan(["relu"], [0.0], seeds=[0, 1, 2], sweep_id="s2").names == ["s2-1", "s2-2", "s2-3"]
    assert sweep.plan(["relu"], [0.0], sweep_id="s3").names == ["s3"]  # one point is no grid to DVC
    assert sweep.plan(["relu"], [0.0], sets=["tracking.experiment='my runs'"]).experiment == "my runs"
    assert sweep.plan(["relu"], [0.0]).sweep_id.replace("-", "").isdigit()
    nested = sweep.plan(["relu"], [0.0], sets=["train.augment.shift=2", "train.augment.elastic_alpha=20",
                                               "train.augment.elastic_sigma=4"], sweep_id="s4")  # fmt: skip
    assert nested.overrides("abc")[-2:] == ["-S", "train.augment.elastic_sigma=4"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"activations": ["relu", "swish"], "dropouts": [0.0]}, "--activations: invalid 'train.activation' \\(got 'swish'\\).*allowed: relu"),
        ({"activations": ["relu"], "dropouts": [1.0]}, "--dropouts: invalid 'train.dropout' \\(got 1.0\\)"),
        ({"activations": ["relu"], "dropouts": [0.0], "seeds": [-1]}, "--seeds: invalid 'train.seed'"),
        ({"activations": ["relu"], "dropouts": [0.0], "sets": ["train.epoch=2"]}, "unknown key 'train.epoch'; did you mean 'train.epochs'"),
        ({"activations": ["relu"], "dropouts": [0.0], "sets": ["train.augment.shfit=2"]}, "unknown key 'train.augment.shfit'; did you mean 'train.augment.shift'"),
        ({"activations": ["relu"], "dropouts": [0.0], "sets": ["train.augment.elastic_alpha=20"]}, "'train.augment.elastic_sigma'.*must be > 0"),
        ({"activations": ["relu"], "dropouts": [0.0], "sets": ["train.epochs"]}, "expected section.key=value"),
        ({"activations": ["relu"], "dropouts": [0.0], "sets": ["+train.epochs=2"]}, "expected section.key=value"),
        ({"activations": ["relu"], "dropouts": [0.0], "sets": ["train.dropout=0.1"]}, "set by the sweep itself"),
        ({"activations": ["relu"], "dropouts": [0.0], "sets": ["train.lr=0.1,0.2"]}, "one value per key"),
        ({"activations": ["relu"], "dropouts": [0.0], "sweep_id": "a b"}, "--sweep-id: invalid 'tracking.sweep_id'"),
    ],
)
def test_a_bad_grid_is_refused_before_anything_is_queued(kwargs, message):
    with pytest.raises((sweep.SweepError, ParamsError), match=message):
        sweep.plan(**kwargs)


def test_axes_left_out_take_the_default_grid():
    planned = sweep.plan([], [], sweep_id="s5")  # `mnist-mlp sweep` with neither --activations nor --dropouts
    assert planned.overrides("abc")[:4] == ["-S", "train.activation=relu,tanh,sigmoid", "-S", "train.dropout=0.0,0.2,0.5"]
    assert len(planned.names) == 9
    assert sweep.plan(["tanh"], [], sweep_id="s6").overrides("abc")[:4] == ["-S", "train.activation=tanh",
                                                                          "-S", "train.dropout=0.0,0.2,0.5"]


def test_shards_split_the_grid_into_disjoint_parts_under_the_whole_grids_names():
    whole = sweep.plan(["relu", "tanh", "sigmoid"], [0.0, 0.2, 0.5], sweep_id="s")
    shards = [sweep.plan(["relu", "tanh", "sigmoid"], [0.0, 0.2, 0.5], sweep_id="s", shard=(k, 2)) for k in (1, 2)]
    assert [shard.names for shard in shards] == [["s-1", "s-3", "s-5", "s-7", "s-9"], ["s-2", "s-4", "s-6", "s-8"]]
    assert sorted(shards[0].names + shards[1].names) == sorted(whole.names)
    # each point keeps the values DVC's own expansion of the whole grid gives that name
    assert shards[1].points("abc")[0] == ("s-2", ["train.activation=relu", "train.dropout=0.2",
                                                  'tracking.sweep_id="s"', 'tracking.sweep_base="abc"'])  # fmt: skip
    assert shards[0].points("abc")[-1][1][:2] == ["train.activation=sigmoid", "train.dropout=0.5"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--shard", "1/2"], "--shard 1/2 needs --sweep-id: every machine's shard must log under the same id"),
        (["--shard", "3/3", "--sweep-id", "s", "--activations", "relu", "--dropouts", "0.0", "0.5"],
         "--shard 3/3: the grid has 2 point(s), fewer than 3 parts"),
    ],
)  # fmt: skip
def test_a_shard_that_cannot_be_one_of_a_sweeps_parts_is_one_line(argv, message, capsys):
    code, out, err = cli_in_process(["sweep", *argv], capsys)
    assert (code, out, err) == (1, "", f"mnist-mlp sweep: error: {message}\n")
    assert cli_in_process(["sweep", "--shard", "3/2"], capsys)[0] == 2  # argparse: K/N with 1 <= K <= N


@pytest.mark.integration
def test_a_shard_queues_only_its_points_on_dvcs_queue(project):
    planned = sweep.plan(["relu", "tanh"], [0.0, 0.5], sets=["train.epochs=1"], sweep_id="sh", shard=(2, 2))
    base = sweep.sweep_base(project, planned)
    sweep._queue_points(project, planned.points(base))
    assert sweep.queue_status(project) == {"sh-2": "Queued", "sh-4": "Queued"}
    shown = json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], project).stdout)
    queued = {exp["name"]: exp["data"]["params"]["params.yaml"]["data"] for commit in shown
              for exp in commit.get("experiments") or [] for exp in exp["revs"]}  # fmt: skip
    assert {name: (params["train"]["activation"], params["train"]["dropout"], params["tracking"]["sweep_id"])
            for name, params in queued.items()} == {"sh-2": ("relu", 0.5, "sh"), "sh-4": ("tanh", 0.5, "sh")}  # fmt: skip


def test_workers_share_the_cores():
    assert sweep.threads_per_worker(2, cores=2) == 1
    assert sweep.threads_per_worker(4, cores=2) == 1
    assert sweep.threads_per_worker(2, cores=8) == 4


def test_dvc_and_its_stages_python_come_from_this_venv_whatever_path_holds(monkeypatch):
    monkeypatch.setenv("PATH", f"/usr/bin{os.pathsep}/bin")
    assert sweep.with_own_scripts()["PATH"].split(os.pathsep) == [str(BIN), "/usr/bin", "/bin"]
    assert sweep.with_own_scripts({"OMP_NUM_THREADS": "1"}) == {"OMP_NUM_THREADS": "1", "PATH": str(BIN)}


def test_the_cli_reports_a_bad_grid_in_one_line(tmp_path):
    result = run([str(BIN / "mnist-mlp"), "sweep", "--activations", "swish"], tmp_path, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("mnist-mlp sweep: error: --activations: invalid 'train.activation'")
    assert len(result.stderr.splitlines()) == 1


def test_a_params_yaml_that_differs_from_head_is_refused_naming_each_key(project, monkeypatch, capsys):
    # leftovers of a `dvc exp run` in the workspace; dropout is a grid axis, so its leftover reaches no run
    _edit_params(project, lr=0.02, epochs=3, dropout=0.5)
    monkeypatch.chdir(project)
    code, out, err = cli_in_process(["sweep", "--activations", "relu", "--dropouts", "0.0"], capsys)
    assert code == 1 and out == ""
    assert err == (f"mnist-mlp sweep: error: params.yaml differs from HEAD ({_head(project)[:7]}) in "
                   "train.epochs (2 -> 3), train.lr (0.01 -> 0.02); every queued experiment would start from it: "
                   "commit it, restore it (`git checkout params.yaml`), or pass --from-workspace to sweep from it "
                   "on purpose\n")  # fmt: skip
    assert sweep.queue_status(project) == {}  # nothing queued
    assert not Path(project.parent / "store" / "mlflow.db").exists()  # nor a store made


def test_from_workspace_records_the_keys_taken_from_it(project, capsys):
    _edit_params(project, lr=0.02, epochs=3)
    planned = sweep.plan(["relu"], [0.0], sets=["train.epochs=1"], sweep_id="w1")
    # --set overrides epochs: only lr comes from the workspace
    assert sweep.sweep_base(project, planned, from_workspace=True) == f"{_head(project)}+train.lr"
    assert capsys.readouterr().out == f"note: sweeping from the workspace: params.yaml differs from HEAD ({_head(project)[:7]}) in train.lr (0.01 -> 0.02)\n"
    run(["git", "checkout", "params.yaml"], project)
    assert sweep.sweep_base(project, planned) == _head(project)


@pytest.mark.integration
def test_dvc_queues_the_planned_grid_and_a_stalled_queue_does_not_hang(project):
    planned = sweep.plan(["relu", "tanh"], [0.0, 0.5], sets=["train.epochs=1"], sweep_id="123")
    base = sweep.sweep_base(project, planned)
    sweep._dvc(project, "exp", "run", "--queue", "-n", planned.sweep_id, *planned.overrides(base))
    assert sweep.queue_status(project) == dict.fromkeys(planned.names, "Queued")
    shown = json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], project).stdout)
    queued = [exp["data"]["params"]["params.yaml"]["data"] for commit in shown
              for exp in commit.get("experiments") or [] for exp in exp["revs"] if exp["name"] in planned.names]  # fmt: skip
    assert sorted((params["train"]["activation"], params["train"]["dropout"]) for params in queued) == [
        ("relu", 0.0), ("relu", 0.5), ("tanh", 0.0), ("tanh", 0.5)]
    # a numeric id stays a string, or the params schema would refuse it in every run
    assert {(params["tracking"]["sweep_id"], params["tracking"]["sweep_base"], params["train"]["epochs"]) for params in queued} == {
        ("123", base, 1)}
    # the same id again would wait on these experiments, not its own: refused before anything is queued or made
    with pytest.raises(sweep.SweepError, match=r"--sweep-id 123: DVC already has experiments named 123-1, 123-2, 123-3, 123-4; "
                                               r"choose another --sweep-id, or remove them first: dvc exp remove 123-1 "):
        sweep.run_sweep(project, planned, "mnist-mlp")
    assert not Path(project.parent / "store" / "mlflow.db").exists()

    # no worker runs them (as when workers exit early): the sweep restarts them, then gives up with their names
    restarts = []
    with pytest.raises(sweep.SweepError, match=r"4 experiment\(s\) still queued, and no worker ran them after 2 restarts: 123-1, "):
        sweep.wait(project, planned.names, lambda: restarts.append(1), poll_s=0.1, stall_s=0, patience=2)
    assert restarts == [1, 1]


@pytest.mark.slow
def test_a_queued_sweep_logs_every_run_once_to_the_workspace_store(project: Path, tmp_path: Path):
    _edit_params(project, lr=0.02)  # taken from the workspace on purpose
    # called as `.venv/bin/mnist-mlp` from a shell without the venv on PATH (CI): its dvc and its stages' python run
    output = run_sweep(project, ["relu", "tanh"], ["0.0"], "--set", "train.epochs=1", "--sweep-id", "t1", "--from-workspace",
                       env=without_venv_on_path())
    names, base = ["t1-1", "t1-2"], f"{_head(project)}+train.lr"
    assert "note: sweeping from the workspace" in output and "2/2 done" in output
    assert "note: no worker" not in output and "already running" not in output

    runs = {found.data.tags["dvc_exp_name"]: found for found in sweep_runs("t1")}
    assert sorted(runs) == names
    assert {(r.data.params["activation"], r.data.params["lr"]) for r in runs.values()} == {("relu", "0.02"), ("tanh", "0.02")}
    for name, logged in runs.items():
        assert logged.info.status == "FINISHED"
        tags = logged.data.tags
        assert logged.info.run_name == f"{logged.data.params['activation']}-do0-s0"  # the setting names the run
        assert tags["dvc_exp_name"] == name and tags["torch_threads"] == "1"
        assert tags["sweep_id"] == "t1" and tags["sweep_base"] == base and tags["dvc_exp_baseline_rev"] == _head(project)
        assert {"best_val_accuracy", "test_accuracy", "val_accuracy"} <= set(logged.data.metrics)
        # artifacts live in the workspace, not in the deleted .dvc/tmp/exps copy
        artifacts = Path(logged.info.artifact_uri.removeprefix("file://"))
        assert artifacts.is_dir() and project / "mlartifacts" in artifacts.parents

    # the summary is `dvc exp show`, which agrees with MLflow run by run
    shown = json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], project).stdout)
    experiments = {
        exp["name"]: exp["data"]["metrics"]["reports/metrics.json"]["data"]
        for commit in shown for exp in (commit.get("experiments") or []) for exp in exp["revs"] if exp.get("name") in names
    }  # fmt: skip
    assert sorted(experiments) == names
    for name, metrics in experiments.items():
        assert metrics["mlflow_run_id"] == runs[name].info.run_id and metrics["mlflow_run_id"] in output
        assert metrics["test"]["accuracy"] == pytest.approx(runs[name].data.metrics["test_accuracy"])

    compared = run([str(BIN / "mnist-mlp"), "compare"], project).stdout
    report = (project / "reports" / "compare.md").read_text()
    assert "sweep `t1`" in report and (project / "reports" / "figures" / "compare.png").stat().st_size > 10_000
    assert f"tracking.sweep_base={base}" in compared and "WARNING" not in compared
    for name in names:
        assert f"| {name} " in report

    # `dvc plots diff` draws the sweep's training curves together
    run([str(BIN / "dvc"), "plots", "diff", *names, "-o", str(tmp_path / "plots")], project)
    page = (tmp_path / "plots" / "index.html").read_text()
    assert all(name in page for name in names) and "val_accuracy" in page


@pytest.mark.integration
def test_a_preset_sweep_queues_every_key_of_the_preset_and_set_keys_win(project, monkeypatch):
    from mnist_mlp import cli

    monkeypatch.chdir(project)
    shortened = ["sweep", "--preset", "best", "--seeds", "0", "1", "--set", "train.epochs=2", "--sweep-id", "pb"]
    with pytest.raises(ParamsError, match=r"train\.augment\.last_clean_epochs \(10\) must be below train\.epochs \(2\)"):
        cli.sweep_plan(cli.build_parser().parse_args(shortened))  # the preset's 10 clean epochs would be all of them
    planned = cli.sweep_plan(cli.build_parser().parse_args([*shortened, "--set", "train.augment.last_clean_epochs=1"]))
    assert planned.grid == {"train.activation": ["relu"], "train.dropout": [0.2], "train.seed": [0, 1]}
    sweep._dvc(project, "exp", "run", "--queue", "-n", planned.sweep_id, *planned.overrides(sweep.sweep_base(project, planned)))
    shown = json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], project).stdout)
    queued = [exp["data"]["params"]["params.yaml"]["data"]["train"] for commit in shown
              for exp in commit.get("experiments") or [] for exp in exp["revs"] if exp["name"] in planned.names]  # fmt: skip
    best = yaml.safe_load((project / "params" / "best.yaml").read_text())["train"]
    assert sorted(train["seed"] for train in queued) == [0, 1]
    for train in queued:  # the preset's nested keys reach params.yaml; the tiny project's own values do not stay
        assert train["hidden_sizes"] == best["hidden_sizes"] and train["epochs"] == 2
        assert {key: train["augment"][key] for key in best["augment"]} == {**best["augment"], "last_clean_epochs": 1}
    with pytest.raises(ParamsError, match="no such preset; available: best, fast, tutorial"):
        cli.sweep_plan(cli.build_parser().parse_args(["sweep", "--preset", "nope"]))
