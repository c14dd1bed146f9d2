"""sweeps/ (definition, storage, worker, study, space) and verdicts/search.py: a sweep as an Optuna study. Fast: the definition, the grid's WAITING trials, a dead
worker's trial retried and its MLflow run KILLED, racing workers, the search space file, joining. Integration:
real studies of `dvc exp run --temp` trials (a grid on two workers, a TPE search), then `compare`."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from mnist_mlp.sweeps import definition as definitions
from mnist_mlp.sweeps import space, worker
from mnist_mlp.sweeps import storage as studies
from mnist_mlp.sweeps import study as sweep_study
from mnist_mlp.verdicts import search
from support.cli import cli_in_process, run
from support.paths import BIN
from support.stores import new_experiment
from support.sweep import run_sweep, sweep_runs, without_venv_on_path

GRID = {"train.activation": ["relu", "tanh", "sigmoid"], "train.dropout": [0.0, 0.5], "train.seed": [0, 1]}


def _grid(name: str = "g", grid: dict = GRID, experiment: str = "mnist-mlp") -> definitions.Definition:
    return definitions.Definition("grid", "a" * 40, experiment, {"train.epochs": "1"}, grid=grid)


@pytest.fixture
def storage(tmp_path: Path):
    """A fresh SQLite study storage with 1 s heartbeats and a 1 s grace period."""
    return studies.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_s=1, grace_s=1)


def test_a_grid_study_holds_its_definition_and_one_waiting_trial_per_point(storage):
    made = studies.create("g", _grid(), storage)
    trials = made.get_trials()
    assert [t.state for t in trials] == [TrialState.WAITING] * 12
    points = {tuple(t.params[key] for key in GRID) for t in trials}
    assert points == {
        (a, d, s) for a in GRID["train.activation"] for d in GRID["train.dropout"] for s in GRID["train.seed"]
    }
    loaded, definition = studies.load("g", storage)
    assert definition == _grid() and definition.size == 12 and definition.commit == "a" * 40
    # GridSampler hands each popped trial its own point; the objective reads it with suggest
    trial = loaded.ask()
    assert definition.suggest(trial) == trials[0].params
    assert definitions.has_work(definition, loaded.get_trials()) and definitions.progress(
        definition, loaded.get_trials()
    ) == (
        0,
        12,
    )


@pytest.mark.bad_input
def test_a_study_that_exists_or_is_missing_is_one_line(storage):
    studies.create("g", _grid(), storage)
    with pytest.raises(
        definitions.StudyError,
        match=r"^study g already exists in sqlite:///.*optuna.db: `--join` works on it; or choose another --study$",
    ):
        studies.create("g", _grid(), storage)
    with pytest.raises(
        definitions.StudyError,
        match=r"^no study h in sqlite:///.*; start it with `mnist-mlp sweep --study h` \(without --join\)",
    ):
        studies.load("h", storage)
    optuna.create_study(study_name="foreign", storage=storage)
    with pytest.raises(definitions.StudyError, match="study foreign: no mnist-mlp definition in it"):
        studies.load("foreign", storage)


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sets": {"dvc.yaml:stages.train.cmd": "touch pwned"}}, r"expected section.key=value"),
        ({"sets": {"train.epochs": "-1"}}, r"invalid 'train.epochs'"),
        ({"sets": {"tracking.trial": "3"}}, r"set by the sweep itself"),
        ({"grid": {"train.lr": [0.1]}}, r"grid keys \['train.lr'\]"),
        ({"grid": {"train.activation": ["relu", "swish"]}}, r"invalid 'train.activation' \(got 'swish'\)"),
        ({"base": "not-a-commit"}, r"invalid 'tracking.sweep_base'"),
        ({"kind": "shell"}, r"kind 'shell': expected grid or search"),
        # an expression DVC's OmegaConf would expand with a joining worker's environment: a secret into a name
        ({"sets": {"tracking.experiment": "leak-${oc.env:SECRET}"}}, r"'\$\{\.\.\.\}' is interpolation syntax"),
        ({"sets": {"download.mirror": "http://host/${oc.env:SECRET}/"}}, r"'\$\{\.\.\.\}' is interpolation syntax"),
        ({"experiment": "leak-${oc.env:SECRET}"}, r"'\$\{\.\.\.\}' is interpolation syntax"),
        # sizes: no traceback, no storage or machine filled
        ({"grid": {**GRID, "train.seed": list(range(200))}}, r"a grid of 1,200 points; at most 1,000"),
        ({"sets": {"train.epochs": "1" * 200_000}}, r"200,013 characters; at most 1,000"),
        ({"sets": {"train.epochs": "1000000000"}}, r"invalid 'train.epochs'"),
        ({"grid": ["relu"]}, r"sets, grid and space must be mappings"),
        ({"grid": {"train.activation": "relu"}}, r"each grid key must hold a list of values"),
        (
            {"kind": "search", "space": {"trials": 2, "space": {"train.seed": {"int": [0, 9]}}}},
            r"a search cannot draw train.seed",
        ),
    ],
)
def test_a_tampered_definition_in_a_shared_storage_is_refused_before_any_trial_runs(storage, change, message):
    """Anyone who can write the team's study database can write a study's definition: it is checked on load."""
    made = studies.create("g", _grid(), storage)
    made.set_user_attr(definitions.DEFINITION, {**made.user_attrs[definitions.DEFINITION], **change})
    with pytest.raises(definitions.StudyError, match=rf"^study g's definition is refused: .*{message}"):
        studies.load("g", storage)


def test_a_definitions_sets_are_checked_together_as_a_command_lines_are(storage):
    """One key's range can depend on another's: the best preset's elastic_alpha needs its elastic_sigma."""
    deformed = {"train.epochs": "2", "train.augment.elastic_alpha": "20", "train.augment.elastic_sigma": "4"}
    studies.create("g", definitions.Definition("grid", "a" * 40, "mnist-mlp", deformed, grid=GRID), storage)
    assert studies.load("g", storage)[1].sets == deformed
    unsmoothed = {**deformed, "train.augment.elastic_sigma": "0"}
    made = studies.create("h", definitions.Definition("grid", "a" * 40, "mnist-mlp", deformed, grid=GRID), storage)
    made.set_user_attr(definitions.DEFINITION, {**made.user_attrs[definitions.DEFINITION], "sets": unsmoothed})
    with pytest.raises(
        definitions.StudyError, match=r"^study h's definition is refused: .*'train.augment.elastic_sigma' \(got 0\)"
    ):
        studies.load("h", storage)


@pytest.mark.bad_input
def test_an_unreachable_storage_is_one_line_without_its_password():
    with pytest.raises(
        definitions.StudyError,
        match=r"^study storage postgresql\+psycopg://mlflow:\*\*\*@127.0.0.1:9/studies: cannot open it",
    ):
        studies.open_storage("postgresql+psycopg://mlflow:secret@127.0.0.1:9/studies")


@pytest.mark.fault
def test_a_dead_workers_trial_fails_by_heartbeat_ends_its_mlflow_run_killed_and_runs_again(
    storage, mlflow_store, capsys
):
    made = studies.create("g", _grid(), storage)
    client = mlflow.MlflowClient(mlflow_store)  # the store the project's code opens, whatever another test set globally
    found = client.get_experiment_by_name("mnist-mlp")
    experiment = found.experiment_id if found else new_experiment(client, "mnist-mlp")
    alive = client.create_run(experiment, tags={"sweep_id": "g", "sweep_trial": "1"})  # another trial's run: kept
    trial = made.ask()  # trial 0, as a worker pops it
    dead = client.create_run(experiment, tags={"sweep_id": "g", "sweep_trial": str(trial.number)})
    storage.record_heartbeat(trial._trial_id)  # its worker's last heartbeat, then the worker is gone
    time.sleep(2.5)
    optuna.storages.fail_stale_trials(made)  # what every worker runs before it takes a trial
    trials = made.get_trials()
    assert trials[0].state == TrialState.FAIL
    retry = trials[-1]
    assert retry.state == TrialState.WAITING and retry.params == trials[0].params
    assert (
        retry.system_attrs["retry_history"] == [0]
        and retry.system_attrs["grid_id"] == trials[0].system_attrs["grid_id"]
    )
    assert client.get_run(dead.info.run_id).info.status == "KILLED"
    assert (
        client.get_run(dead.info.run_id)
        .data.tags["mnist_mlp.closed_stale"]
        .startswith("closed by mnist-mlp sweep: trial 0 of study g")
    )
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"
    assert "trial 0 of study g lost its worker" in capsys.readouterr().out
    _, definition = studies.load("g", storage)
    # the failed trial is not one of the grid's ends: the retry is
    assert definitions.progress(definition, trials) == (0, 12) and definitions.has_work(definition, trials)


def test_two_workers_on_one_grid_point_the_later_trial_yields(storage):
    made = studies.create("g", _grid(grid={"train.activation": ["relu"], "train.dropout": [0.0]}), storage)
    first = made.ask()  # the point's WAITING trial
    second = made.ask()  # a race: GridSampler gives a new trial the same (only) point
    values = {"train.activation": "relu", "train.dropout": 0.0}
    assert first.suggest_categorical("train.activation", ["relu"]) == second.suggest_categorical(
        "train.activation", ["relu"]
    )
    second.suggest_categorical("train.dropout", [0.0])
    worker._yield_duplicate(made, first, values)  # the lower number runs
    with pytest.raises(optuna.TrialPruned, match="is trial 0's"):
        worker._yield_duplicate(made, second, values)


def test_a_search_has_work_until_its_trials_are_taken_retries_not_counted():
    definition = definitions.Definition(
        "search",
        "a" * 40,
        "mnist-mlp",
        {},
        space=space.parse({"trials": 3, "space": {"train.lr": {"float": [0.001, 0.1], "log": True}}}, "s").model_dump(
            mode="json"
        ),
    )

    def frozen(number, state, **attrs):
        return optuna.trial.create_trial(
            state=state, value=0.5 if state == TrialState.COMPLETE else None, system_attrs=attrs
        )

    trials = [frozen(0, TrialState.COMPLETE), frozen(1, TrialState.FAIL)]
    for number, trial in enumerate(trials):
        trial.number = number
    assert definitions.has_work(definition, trials)  # 2 of 3 taken
    retry = frozen(2, TrialState.RUNNING, retry_history=[1])
    retry.number = 2
    assert definitions.has_work(definition, [*trials, retry])  # trial 1 died and runs again as 2: still 2 of 3
    third = frozen(3, TrialState.RUNNING)
    third.number = 3
    assert not definitions.has_work(definition, [*trials, retry, third])
    assert definitions.progress(definition, [*trials, retry, third]) == (1, 3)


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"trials": 12, "space": {"train.lr": {"float": [0.1, 0.01]}}},
            r"space\.train\.lr: Value error, low 0.1 must be below high 0.01",
        ),
        (
            {"trials": 12, "space": {"train.lr": {"float": [0.0, 0.1], "log": True}}},
            r"log: true needs a numeric range with low > 0",
        ),
        ({"trials": 12, "space": {"train.lr": {"float": [0.001, 0.1], "int": [1, 2]}}}, r"give exactly one of float"),
        (
            {"trials": 12, "space": {"train.lrr": {"float": [0.001, 0.1]}}},
            r"unknown key 'train.lrr'; did you mean 'train.lr'",
        ),
        (
            {"trials": 12, "space": {"train.dropout": {"float": [0.0, 1.5]}}},
            r"space.train.dropout.*invalid 'train.dropout' \(got 1.5\)",
        ),
        (
            {"trials": 12, "space": {"train.activation": {"choice": ["relu", "swish"]}}},
            r"invalid 'train.activation' \(got 'swish'\)",
        ),
        ({"trials": 12, "space": {"train.seed": {"int": [0, 9]}}}, r"a search cannot draw train.seed"),
        (
            {"trials": 0, "space": {"train.lr": {"float": [0.001, 0.1]}}},
            r"s: trials: Input should be greater than or equal to 1",
        ),
        ({"trials": 12, "spaces": {}}, r"s: space: Field required"),
    ],
)
def test_a_bad_search_space_is_refused_naming_the_key(data, message):
    with pytest.raises(space.SpaceError, match=message):
        space.parse(data, "s")


def test_the_projects_search_space_file_is_valid_and_draws_lists_as_choices():
    searched = space.read(Path(__file__).parents[1] / "params" / "search" / "default.yaml")
    assert searched.trials >= 12 and {"train.lr", "train.weight_decay", "train.dropout", "train.hidden_sizes"} <= set(
        searched.space
    )
    trial = optuna.create_study().ask()
    drawn = searched.suggest(trial)
    assert isinstance(drawn["train.hidden_sizes"], list) and 1e-4 <= drawn["train.lr"] <= 1
    with pytest.raises(space.SpaceError, match="no such search space file"):
        space.read(Path("nope.yaml"))


@pytest.mark.bad_input
def test_a_clone_on_another_commit_or_with_stray_params_cannot_join(project, tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = studies.open_storage(url)
    head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    studies.create(
        "other", definitions.Definition("grid", "b" * 40, "mnist-mlp", {}, grid={"train.activation": ["relu"]}), storage
    )
    studies.create(
        "here",
        definitions.Definition("grid", head, "mnist-mlp", {"train.epochs": "1"}, grid={"train.activation": ["relu"]}),
        storage,
    )
    monkeypatch.chdir(project)
    monkeypatch.setenv("STUDY_STORAGE", url)
    code, out, err = cli_in_process(["sweep", "--join", "--study", "other"], capsys)
    assert (code, out) == (1, "")
    assert err == (
        f"mnist-mlp sweep: error: study other runs on commit bbbbbbb; this clone is at {head[:7]}: "
        "`git fetch && git checkout bbbbbbb` first\n"
    )
    text = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(text.replace("lr: 0.01", "lr: 0.02").replace("epochs: 2", "epochs: 3"))
    code, out, err = cli_in_process(["sweep", "--join", "--study", "here"], capsys)
    # epochs is the study's own --set: only lr would leak into its trials
    assert err == (
        f"mnist-mlp sweep: error: study here: params.yaml differs from {head[:7]} in train.lr, which every trial "
        "here would take; `git checkout params.yaml` first\n"
    )
    assert (
        cli_in_process(["sweep", "--join"], capsys)[2]
        == "mnist-mlp sweep: error: --join needs --study NAME: the study to work on\n"
    )


def test_the_overhead_is_wall_time_against_the_training_spread_over_the_workers():
    table = pd.DataFrame(
        {
            "state": ["COMPLETE", "COMPLETE", "FAIL"],
            "train_seconds": [50.0, 50.0, None],
            "trial_seconds": [70.0, 50.0, 5.0],
        }
    )
    assert sweep_study.overhead_line(table, 75.0, 2) == (
        "wall 75 s on 2 worker(s) for 100 s of training (120 s of whole trials): 1.50x the packing limit of 50 s"
    )
    # a trial is not split between workers: the longest training is the limit where it is longer
    table["train_seconds"] = [60.0, 40.0, None]
    assert sweep_study.overhead_line(table.iloc[:1], 75.0, 2) == (
        "wall 75 s on 2 worker(s) for 60 s of training (70 s of whole trials): 1.25x the packing limit of 60 s"
    )


# --- real studies ----------------------------------------------------------------------------------


@pytest.mark.integration
def test_a_grid_study_on_two_workers_makes_one_experiment_and_one_finished_run_per_point(project: Path, tmp_path: Path):
    text = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(text.replace("lr: 0.01", "lr: 0.02"))  # taken from the workspace on purpose
    # called as `.venv/bin/mnist-mlp` from a shell without the venv on PATH (CI): its dvc and its stages' python run
    output = run_sweep(
        project,
        ["relu", "tanh"],
        ["0.0"],
        "--set",
        "train.epochs=1",
        "--study",
        "t1",
        "--from-workspace",
        env=without_venv_on_path(),
    )
    head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert "note: sweeping from the workspace" in output and "[2/2 done" in output
    assert "study t1 (grid, 2 trials), ranked on best validation accuracy" in output and "the packing limit" in output
    assert "  trial 0 t1-0 started: activation=" in output and "← best validation" in output

    runs = {found.data.tags["dvc_exp_name"]: found for found in sweep_runs("t1")}
    completed = optuna.load_study(study_name="t1", storage=f"sqlite:///{project / 'optuna.db'}").get_trials()
    assert sorted(runs) == sorted(t.user_attrs["dvc_exp_name"] for t in completed) == ["t1-0", "t1-1"]
    assert {t.state for t in completed} == {TrialState.COMPLETE}
    for trial in completed:
        logged = runs[trial.user_attrs["dvc_exp_name"]]
        tags = logged.data.tags
        assert logged.info.status == "FINISHED" and logged.info.run_name == f"t1-{trial.number}"
        assert (
            tags["sweep_id"] == "t1"
            and tags["sweep_trial"] == str(trial.number)
            and tags["sweep_base"] == f"{head}+train.lr"
        )
        assert (
            logged.data.params["train.activation"] == trial.params["train.activation"]
            and logged.data.params["train.lr"] == "0.02"
        )
        # the objective is validation, never test
        assert trial.value == pytest.approx(logged.data.metrics["best_val_accuracy"])
        assert trial.user_attrs["mlflow_run_id"] == logged.info.run_id
        artifacts = Path(logged.info.artifact_uri.removeprefix("file://"))  # beside the store, not in the deleted copy
        assert artifacts.is_dir() and project.parent / "store" / "mlartifacts" in artifacts.parents
    listed = run([str(BIN / "dvc"), "exp", "list", "--name-only"], project).stdout.split()
    assert sorted(listed) == ["t1-0", "t1-1"]

    compared = run([str(BIN / "mnist-mlp"), "compare", "--study", "t1"], project).stdout
    assert "(2 runs, sweep t1)" in compared and "WARNING" not in compared
    report = (project / "reports" / "compare.md").read_text()
    assert "sweep `t1`" in report and all(f"| {name} " in report for name in runs)
    # the same study id again is refused before anything runs
    again = run(
        [
            str(BIN / "mnist-mlp"),
            "sweep",
            "--activations",
            "relu",
            "--dropouts",
            "0.0",
            "--study",
            "t1",
            "--from-workspace",
        ],
        project,
        check=False,
    )
    assert again.returncode == 1 and "DVC already has experiments named t1-0, t1-1" in again.stderr


@pytest.mark.integration
def test_a_tpe_search_on_two_workers_names_the_validation_best_trial_and_the_importances(project: Path):
    space_file = project.parent / "search.yaml"
    space_file.write_text(
        "trials: 12\nstartup_trials: 4\nspace:\n"
        "  train.lr: {float: [0.0001, 0.5], log: true}\n  train.weight_decay: {float: [0.0, 0.2]}\n"
        "  train.dropout: {float: [0.0, 0.5]}\n  train.hidden_sizes: {choice: [[8], [32]]}\n"
    )
    started = time.monotonic()
    output = run(
        [
            str(BIN / "mnist-mlp"),
            "sweep",
            "--search",
            str(space_file),
            "--set",
            "train.epochs=1",
            "--study",
            "tpe",
            "--jobs",
            "2",
        ],
        project,
    ).stdout
    seconds = time.monotonic() - started
    found = optuna.load_study(study_name="tpe", storage=f"sqlite:///{project / 'optuna.db'}")
    completed = [t for t in found.get_trials() if t.state == TrialState.COMPLETE]
    assert len(completed) == 12 and "[12/12 done" in output, output
    assert len({t.params["train.lr"] for t in completed}) == 12  # each trial drew its own
    runs = {r.data.tags["sweep_trial"]: r for r in sweep_runs("tpe")}
    assert sorted(map(int, runs)) == sorted(t.number for t in completed)
    assert all(r.info.status == "FINISHED" for r in runs.values())

    compared = run([str(BIN / "mnist-mlp"), "compare", "--study", "tpe"], project).stdout
    best = found.best_trial  # Optuna's own choice: the highest validation accuracy
    assert compared.startswith(f"Chosen on validation: trial {best.number} (tpe-{best.number}: ")
    assert f"best validation accuracy {best.value:.4f}" in compared and "its test accuracy" in compared
    importances = optuna.importance.get_param_importances(found, evaluator=search.importance_evaluator())
    assert (
        "importances (Optuna, fANOVA on validation): " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items())
        in compared
    )
    report = (project / "reports" / "search.md").read_text()
    assert "## Parameter importances" in report and "| tpe-" in report
    print(f"TPE search, 12 trials on 2 workers: {seconds:.0f} s")


def _pop_until_empty(url: str, out) -> None:
    """A worker's loop (worker.take_trials) with an objective that only notes the trial it was handed."""
    loaded, definition = studies.load("race", studies.open_storage(url))
    got = []
    worker.take_trials(loaded, definition, lambda trial: got.append(trial.number) or 1.0, poll_s=0.1)
    out.put(got)


@pytest.mark.fault
def test_workers_racing_on_one_sqlite_file_never_pop_the_same_trial(tmp_path):
    import multiprocessing

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    studies.create("race", _grid(grid={"train.seed": list(range(40))}), studies.open_storage(url))
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    workers = [context.Process(target=_pop_until_empty, args=(url, out)) for _ in range(4)]
    for process in workers:
        process.start()
    got = [number for _ in workers for number in out.get(timeout=120)]
    for process in workers:
        process.join()
    assert len(got) == len(set(got)), sorted(got)  # no trial handed to two workers
    final = studies.load("race", studies.open_storage(url))[0].get_trials()
    assert sorted(t.params["train.seed"] for t in final if t.state == TrialState.COMPLETE) == list(range(40))


@pytest.mark.bad_input
def test_the_search_report_ranks_on_mlflows_values_and_names_a_trial_the_storage_disagrees_on(
    storage, mlflow_store, tmp_path, monkeypatch
):
    """A trial value edited in the shared storage (0.999 where MLflow holds 0.1218) is left out, named, never chosen."""
    space_file = {"trials": 3, "startup_trials": 3, "space": {"train.lr": {"float": [0.001, 0.1], "log": True}}}
    definition = definitions.Definition("search", "a" * 40, "mnist-mlp", {"train.epochs": "1"}, space=space_file)
    made = studies.create("s", definition, storage)
    client = mlflow.MlflowClient(mlflow_store)
    experiment = new_experiment(client, "mnist-mlp")
    lr = optuna.distributions.FloatDistribution(0.001, 0.1, log=True)
    for number, (value, stored) in enumerate([(0.97, 0.97), (0.1218, 0.999), (0.95, 0.95)]):
        run_id = client.create_run(experiment, tags={"sweep_id": "s", "sweep_trial": str(number)}).info.run_id
        client.log_metric(run_id, "best_val_accuracy", value)
        client.set_terminated(run_id, "FINISHED")
        made.add_trial(
            optuna.trial.create_trial(
                params={"train.lr": 0.01 * (number + 1)},
                distributions={"train.lr": lr},
                value=stored,
                user_attrs={"mlflow_run_id": run_id, "dvc_exp_name": f"s-{number}"},
            )
        )
    monkeypatch.setenv("STUDY_STORAGE", storage.url)
    headline = search.search_report(*studies.load_study(tmp_path, "s"), tmp_path / "reports")
    assert headline.startswith("Chosen on validation: trial 0 (s-0: ") and "best validation accuracy 0.9700" in headline
    report = (tmp_path / "reports" / "search.md").read_text()
    assert "## Trials left out" in report and "- trial 1: the storage says 0.9990, its MLflow run " in report
    assert "2 of 3 trials completed (1 more left out: see the report)" in headline


@pytest.mark.bad_input
@pytest.mark.parametrize("kind", ["grid", "search"])
def test_a_trial_whose_params_are_not_a_point_of_the_definition_fails_before_anything_runs(storage, kind, capsys):
    """A trial enqueued in the shared storage with its own params (dropout 0.95) is no point of the study: it is
    pruned naming why, nothing of it runs, and the valid points (a search's every trial) still run."""
    if kind == "grid":
        definition = _grid(grid={"train.activation": ["relu"], "train.dropout": [0.0, 0.5]})
    else:
        definition = definitions.Definition(
            "search",
            "a" * 40,
            "mnist-mlp",
            {"train.epochs": "1"},
            space={"trials": 2, "startup_trials": 2, "space": {"train.dropout": {"float": [0.0, 0.5]}}},
        )
    made = studies.create("q", definition, storage)
    made.enqueue_trial(
        {"train.activation": "relu", "train.dropout": 0.95} if kind == "grid" else {"train.dropout": 0.95},
        skip_if_exists=False,
    )
    loaded, stored = studies.load("q", storage)
    ran = []
    worker.take_trials(loaded, stored, lambda trial: ran.append(stored.suggest(trial)) or 0.5, poll_s=0.1)
    pruned = [trial for trial in loaded.get_trials() if trial.state == TrialState.PRUNED]
    assert len(pruned) == 1 and len(ran) == 2 and all(values["train.dropout"] != 0.95 for values in ran)
    assert pruned[0].user_attrs["refused"].startswith(f"not a point of study q's {kind}: ")
    assert f"PRUNED (not a point of study q's {kind}: " in capsys.readouterr().out


@pytest.mark.fault
def test_a_killed_worker_leaves_no_command_of_its_trial_running(tmp_path):
    """`kill -9` of a worker: its `dvc exp run`, and what that started, end with it (no orphan finishes the trial
    while the trial is retried elsewhere). Here the command is two sleeps, one in the background as a stage would be."""
    import signal
    import subprocess
    import sys

    import psutil

    marker = f"{tmp_path}/sleep-marker"
    sleeper = f"{sys.executable} -c 'import time; time.sleep(300)' {marker}"
    code = (
        "from pathlib import Path; from mnist_mlp.sweeps.worker import run_ending_with_worker; "
        f"run_ending_with_worker(['sh', '-c', {f'{sleeper} & {sleeper}'!r}], Path({str(tmp_path)!r}), "
        f"Path({str(tmp_path / 'log')!r}))"
    )
    worker = subprocess.Popen([sys.executable, "-c", code])

    def sleeps():
        return [
            p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [""])[-1] == marker
        ]  # the two sleepers

    deadline = time.monotonic() + 30
    while len(sleeps()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(sleeps()) == 2, "the worker's command did not start"
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    deadline = time.monotonic() + 10
    while sleeps() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sleeps() == [], "a command of the killed worker's trial outlived it"


@pytest.mark.bad_input
@pytest.mark.parametrize(
    ("cause", "fix"),
    [
        ("database or disk is full", "the disk that holds the study storage is full: free space there"),
        ("database is locked", "another process holds the SQLite study storage locked: let it finish or stop it"),
    ],
)
def test_a_full_or_locked_study_storage_says_so_and_names_the_fix(cause, fix):
    import sqlalchemy.exc

    def tell():
        raise sqlalchemy.exc.OperationalError("UPDATE trials ...", {}, Exception(cause))

    with pytest.raises(definitions.StudyError) as refused:
        worker._patiently(tell, "study g", patience_s=0)
    assert str(refused.value) == (
        f"study g: the study storage did not answer for 0 s ({cause}); {fix}; nothing ended is "
        "lost: join again with --join"
    )


def test_the_sweeps_last_table_ranks_on_validation_rounds_and_marks_the_best():
    table = pd.DataFrame(
        {
            "state": ["COMPLETE", "FAIL", "COMPLETE"],
            "experiment": ["s-0", "s-1", "s-2"],
            "train.activation": ["relu", "tanh", "sigmoid"],
            "best_val_accuracy": [0.97012345, None, 0.98456789],
            "train_seconds": [70.292488, None, 61.7],
            "trial_seconds": [90.4, 3.2, 80.6],
            "mlflow_run_id": ["a", None, "c"],
        },
        index=pd.Index([0, 1, 2], name="trial"),
    )
    ranked = sweep_study.ranked_table(table)
    assert list(ranked.index) == [2, 0, 1] and list(ranked["activation"]) == ["sigmoid", "relu", "tanh"]
    assert list(ranked[" "]) == ["← best validation", "", ""] and "mlflow_run_id" not in ranked
    assert list(ranked["best_val_accuracy"]) == ["0.9846", "0.9701", ""] and ranked.loc[0, "train_seconds"] == 70.0


def test_the_thread_line_says_what_each_trial_trains_on(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  threads: 0\n")
    grid = _grid(grid={"train.seed": [0, 1]})
    assert sweep_study.threads_line(tmp_path, grid, 2).endswith("train.threads is 0, the worker's share of the cores")
    pinned = definitions.Definition("grid", "a" * 40, "mnist-mlp", {"train.threads": "1"}, grid={"train.seed": [0]})
    assert sweep_study.threads_line(tmp_path, pinned, 2) == "each trial trains on 1 thread(s): train.threads"
