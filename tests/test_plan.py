"""sweeps/plan.py: the grid and its validation, the safe base (fast). The study that runs it: tests/test_study.py."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from mnist_mlp.params import ParamsError
from mnist_mlp.sweeps import plan as sweep
from support.cli import cli_in_process, run
from support.paths import BIN


def _edit_params(repo: Path, **train) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"].update(train)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _head(repo: Path) -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_the_grid_is_the_product_of_its_axes_and_set_values_stay_as_typed():
    planned = sweep.plan(["relu", "gelu"], [0.1, 0.3, 0.1], sets=["train.epochs=2"], sweep_id="s1")
    assert planned.grid == {"train.activation": ["relu", "gelu"], "train.dropout": [0.1, 0.3]} and planned.size == 4
    assert planned.sets == {"train.epochs": "2"}
    assert sweep.plan(["relu"], [0.0], seeds=[0, 1, 2], sweep_id="s2").size == 3
    assert sweep.plan(["relu"], [0.0], sets=["tracking.experiment='my runs'"]).experiment == "my runs"
    assert sweep.plan(["relu"], [0.0]).sweep_id.replace("-", "").isdigit()
    nested = sweep.plan(
        ["relu"],
        [0.0],
        sets=["train.augment.shift=2", "train.augment.elastic_alpha=20", "train.augment.elastic_sigma=4"],
        sweep_id="s4",
    )
    assert nested.sets["train.augment.elastic_sigma"] == "4"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"activations": ["relu", "swish"], "dropouts": [0.0]},
            "--activations: invalid 'train.activation' \\(got 'swish'\\).*allowed: relu",
        ),
        ({"activations": ["relu"], "dropouts": [1.0]}, "--dropouts: invalid 'train.dropout' \\(got 1.0\\)"),
        ({"activations": ["relu"], "dropouts": [0.0], "seeds": [-1]}, "--seeds: invalid 'train.seed'"),
        (
            {"activations": ["relu"], "dropouts": [0.0], "sets": ["train.epoch=2"]},
            "unknown key 'train.epoch'; did you mean 'train.epochs'",
        ),
        (
            {"activations": ["relu"], "dropouts": [0.0], "sets": ["train.augment.shfit=2"]},
            "unknown key 'train.augment.shfit'; did you mean 'train.augment.shift'",
        ),
        (
            {"activations": ["relu"], "dropouts": [0.0], "sets": ["train.augment.elastic_alpha=20"]},
            "'train.augment.elastic_sigma'.*must be > 0",
        ),
        ({"activations": ["relu"], "dropouts": [0.0], "sets": ["train.epochs"]}, "expected section.key=value"),
        ({"activations": ["relu"], "dropouts": [0.0], "sets": ["+train.epochs=2"]}, "expected section.key=value"),
        ({"activations": ["relu"], "dropouts": [0.0], "sets": ["train.dropout=0.1"]}, "set by the sweep itself"),
        ({"activations": ["relu"], "dropouts": [0.0], "sets": ["train.lr=0.1,0.2"]}, "one value per key"),
        ({"activations": ["relu"], "dropouts": [0.0], "sweep_id": "a b"}, "--study: invalid 'tracking.sweep_id'"),
        ({"activations": ["relu"], "dropouts": [0.0], "sets": ["tracking.trial=3"]}, "set by the sweep itself"),
    ],
)
def test_a_bad_grid_is_refused_before_anything_is_queued(kwargs, message):
    with pytest.raises((sweep.SweepError, ParamsError), match=message):
        sweep.plan(**kwargs)


def test_axes_left_out_take_the_default_grid():
    planned = sweep.plan([], [], sweep_id="s5")  # `mnist-mlp sweep` with neither --activations nor --dropouts
    assert planned.grid == {"train.activation": ["relu", "tanh", "sigmoid"], "train.dropout": [0.0, 0.2, 0.5]}
    assert sweep.plan(["tanh"], [], sweep_id="s6").grid["train.dropout"] == [0.0, 0.2, 0.5]


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
    assert err == (
        f"mnist-mlp sweep: error: params.yaml differs from HEAD ({_head(project)[:7]}) in "
        "train.epochs (2 -> 3), train.lr (0.01 -> 0.02); every trial would start from it: "
        "commit it, restore it (`git checkout params.yaml`), or pass --from-workspace to sweep from it "
        "on purpose\n"
    )
    assert not (project / "optuna.db").exists()  # no study made
    assert not Path(project.parent / "store" / "mlflow.db").exists()  # nor a store made


def test_from_workspace_records_the_keys_taken_from_it(project, capsys):
    _edit_params(project, lr=0.02, epochs=3)
    planned = sweep.plan(["relu"], [0.0], sets=["train.epochs=1"], sweep_id="w1")
    # --set overrides epochs: only lr comes from the workspace
    assert (
        sweep.sweep_base(project, [*planned.sets, *planned.grid], from_workspace=True) == f"{_head(project)}+train.lr"
    )
    assert (
        capsys.readouterr().out
        == f"note: sweeping from the workspace: params.yaml differs from HEAD ({_head(project)[:7]}) in train.lr (0.01 -> 0.02)\n"
    )
    run(["git", "checkout", "params.yaml"], project)
    assert sweep.sweep_base(project, [*planned.sets, *planned.grid]) == _head(project)


def test_a_preset_sweep_sets_every_key_of_the_preset_and_set_keys_win(project):
    from mnist_mlp.params import preset_values
    from mnist_mlp.sweeps import study

    best_values = preset_values(project, "best")
    with pytest.raises(
        ParamsError, match=r"train\.augment\.last_clean_epochs \(10\) must be below train\.epochs \(2\)"
    ):  # the preset's 10 clean epochs would be all of them
        sweep.plan(seeds=[0, 1], sets=["train.epochs=2"], sweep_id="pb", preset=best_values)
    sets = ["train.epochs=2", "train.augment.last_clean_epochs=1"]
    planned = sweep.plan(seeds=[0, 1], sets=sets, sweep_id="pb", preset=best_values)
    definition = study.definition_from(project, planned, "mnist-mlp")
    assert planned.sweep_id == "pb" and definition.grid == {
        "train.activation": ["relu"],
        "train.dropout": [0.2],
        "train.seed": [0, 1],
    }
    best = yaml.safe_load((project / "params" / "best.yaml").read_text())["train"]
    assert definition.sets["train.hidden_sizes"] == json.dumps(best["hidden_sizes"], separators=(",", ":"))
    assert definition.sets["train.epochs"] == "2" and definition.sets["train.augment.last_clean_epochs"] == "1"
    with pytest.raises(ParamsError, match="no such preset; available: best, fast, tutorial"):
        preset_values(project, "nope")


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "item",
    [
        "tracking.experiment=leak-${oc.env:SECRET}",
        "download.mirror=http://host/${oc.env:SECRET}/",
        "train.lr=${oc.env:LR}",
    ],
)
def test_an_interpolation_in_a_set_value_is_refused_before_anything_runs(item, tmp_path, monkeypatch, capsys):
    """DVC's OmegaConf would expand `${oc.env:...}` with the environment of whoever runs the trial."""
    (tmp_path / ".dvc").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SECRET", "s3cr3t")
    code, out, err = cli_in_process(["sweep", "--activations", "relu", "--dropouts", "0.2", "--set", item], capsys)
    assert (code, out) == (1, "") and len(err.splitlines()) == 1
    assert (
        err.startswith(f"mnist-mlp sweep: error: --set {item!r}: '${{...}}' is interpolation syntax")
        and "s3cr3t" not in err
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == [".dvc"]  # no study storage, no run
