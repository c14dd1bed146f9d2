"""verdicts/compare.py on a real SQLite MLflow store holding runs logged the way the stages log them."""

from __future__ import annotations

import time

import mlflow
import numpy as np
import pytest
import yaml
from PIL import Image
from scipy import stats as scipy_stats

from mnist_mlp.tracking.queries import NoRunsError
from mnist_mlp.verdicts import compare, stats
from support.cli import cli_in_process, run
from support.predictions import LABELS, log_predictions, right
from support.stores import new_experiment


def log_run(
    client,
    experiment_id,
    name,
    sweep_id,
    activation,
    dropout,
    seed,
    curve,
    test_accuracy,
    status="FINISHED",
    correct=None,
    params_as_logged_before=False,
    **params,
):
    """A run as the stages log it; `correct` (per test digit) logs its predictions too, and the test accuracy they score."""
    tags = {"sweep_id": sweep_id} if sweep_id else {}
    if name:
        tags["dvc_exp_name"] = name
    run_id = client.create_run(experiment_id, run_name=f"{activation}-do{dropout:g}-s{seed}", tags=tags).info.run_id
    if correct is not None:
        log_predictions(client, run_id, correct)
        test_accuracy = float(np.mean(correct))
    params = {
        "train.activation": activation,
        "train.dropout": dropout,
        "train.seed": seed,
        "train.epochs": len(curve),
        "train.lr": 0.002,
        "tracking.sweep_id": sweep_id or None,
        **{f"train.{key}": value for key, value in params.items()},  # as flatten() keys them
    }
    if params_as_logged_before:  # train keys bare, as runs were logged before they were dotted
        params = {key.removeprefix("train."): value for key, value in params.items()}
    for key, value in params.items():
        client.log_param(run_id, key, str(value))
    for epoch, accuracy in enumerate(curve, start=1):
        client.log_metric(run_id, "val_accuracy", accuracy, step=epoch)
    client.log_metric(run_id, "best_val_accuracy", max(curve))
    client.log_metric(run_id, "train_seconds", 10.0 * len(curve))
    if test_accuracy is not None:
        client.log_metric(run_id, "test_accuracy", test_accuracy)
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    time.sleep(0.01)  # distinct start times: "latest sweep" is decided by them
    return run_id


@pytest.fixture
def planted(mlflow_store):
    """A 2x2 grid, 3 seeds each, with per-digit predictions whose paired answers are known.

    relu/0 is best on validation and gets the first 1,900 of 2,000 digits right (each seed one more digit,
    a different one, the same in every setting, so the pairs differ only where planted); tanh/0 misses 4 of
    those (level: exact p = 0.125);
    relu/0.5 misses 80 (worse); tanh/0.5, last on validation, gets 40 more right (better on the test digits).
    """
    client = mlflow.MlflowClient(mlflow_store)
    experiment_id = new_experiment(client, "mnist-mlp")
    cells = {
        ("relu", 0.0): (0.990, right(1_900)),
        ("tanh", 0.0): (0.985, right(1_900) & ~right(4)),
        ("relu", 0.5): (0.980, right(1_900) & ~right(80)),
        ("tanh", 0.5): (0.970, right(1_940)),
    }
    for (activation, dropout), (best_val, planted_right) in cells.items():
        for seed in (0, 1, 2):
            correct = planted_right.copy()
            correct[1_960 + seed] = True  # right in one seed of three, alike in every setting: no pair differs there
            log_run(
                client,
                experiment_id,
                f"P-{activation}-{dropout:g}-{seed}",
                "P",
                activation,
                dropout,
                seed,
                [0.9, best_val + seed / 1000],
                None,
                correct=correct,
                **{"preprocess.val_size": 5000},
            )
    return client


def test_the_headline_names_the_level_group_and_the_worse_and_better_settings(planted, tmp_path):
    result = compare.compare("mnist-mlp")
    assert [compare.setting_name(s) for s in zip(result.summary["activation"], result.summary["dropout"])] == [
        "relu/0",
        "tanh/0",
        "relu/0.5",
        "tanh/0.5",
    ]  # ranked on validation
    verdicts = {compare.setting_name(v.setting): v for v in result.verdicts}
    assert {name: v.outcome for name, v in verdicts.items()} == {
        "tanh/0": "level",
        "relu/0.5": "worse",
        "tanh/0.5": "better",
    }
    level, worse, better = verdicts["tanh/0"], verdicts["relu/0.5"], verdicts["tanh/0.5"]
    assert (level.paired.only_first, level.paired.only_second) == (4, 0)
    assert level.paired.p_value == pytest.approx(0.125) and level.p_holm == pytest.approx(
        0.125
    )  # 2 * 0.5**4, the largest of 3
    assert (worse.paired.digits, better.paired.digits) == (80, -40)
    assert worse.p_holm < 0.001 and better.p_holm < 0.001
    assert compare.headline(result) == (
        "12 runs: 2 activations × 2 dropouts, 3 seeds each, 2 epochs. Chosen on validation: relu with dropout 0, "
        f"mean best validation accuracy {result.summary.loc[0, 'val']} over 3 seeds; its test accuracy (reported, "
        f"never used to choose) {result.summary.loc[0, 'test']}. On the same test digits, paired seed by seed: "
        "no clear difference from the choice for tanh with dropout 0 (Holm-adjusted p ≥ 0.12); "
        "worse than the choice by 4.00 points (Holm-adjusted p < 0.001): relu with dropout 0.5; "
        "better than the choice by 2.00 points (Holm-adjusted p < 0.001), which validation did not choose: "
        "tanh with dropout 0.5."
    )
    # three seeds: a t-interval over them; the mean of the seeds' 1,901 / 2,000
    choice = result.summary.loc[0]
    assert (
        choice["test"].mean == pytest.approx(1_901 / 2_000)
        and choice["test"].interval.low == choice["test"].interval.high
    )
    assert choice["val"].mean == pytest.approx(0.991)
    low, high = scipy_stats.t.interval(0.95, 2, loc=0.991, scale=0.001 / np.sqrt(3))  # seeds 0.990, 0.991, 0.992
    assert (choice["val"].interval.low, choice["val"].interval.high) == (pytest.approx(low), pytest.approx(high))
    # main effects: per seed, averaged over the other axis
    activation = result.effects["activation"].set_index("activation")
    assert activation.loc["relu", "runs"] == 6 and activation.loc["relu", "test"].mean == pytest.approx(
        (1_901 + 1_821) / 4_000
    )
    dropout = result.effects["dropout"].set_index("dropout")
    assert dropout.loc[0.5, "val"].mean == pytest.approx((0.981 + 0.971) / 2)

    table, picture = compare.write_report(result, tmp_path / "reports")
    text = table.read_text()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]
    # signed as the setting minus the choice: negative is worse
    flipped = lambda interval: stats.Interval(-interval.high, -interval.low).points()  # noqa: E731
    assert [
        "relu/0.5",
        "0 1 2",
        "80",
        "0",
        f"-4.00 {flipped(worse.paired.difference)}",
        "p < 0.001",
        "p < 0.001",
        "worse",
    ] in rows
    assert [
        "tanh/0",
        "0 1 2",
        "4",
        "0",
        f"-0.20 {flipped(level.paired.difference)}",
        "0.125",
        "0.125",
        "no clear difference",
    ] in rows
    assert ["tanh/0.5", "0 1 2", "0", "40", f"+2.00 {flipped(better.paired.difference)}"] == next(
        row[:5] for row in rows if row[0] == "tanh/0.5" and row[1] == "0 1 2"
    )
    assert "## Main effect of activation (averaged over dropout, per seed first)" in text
    assert "cannot separate settings" not in text
    with Image.open(picture) as image:
        assert image.size[0] > 1000 and image.size[1] > 600


@pytest.mark.bad_input
def test_an_untrusted_predictions_file_leaves_out_that_run_only(planted, tmp_path, monkeypatch, capsys):
    experiment_id = planted.get_experiment_by_name("mnist-mlp").experiment_id
    forged = log_run(planted, experiment_id, "P-forged", "P", "relu", 0.0, 3, [0.9, 0.99], 0.95)
    log_predictions(planted, forged, text="import os\nos.system('id')\n")
    monkeypatch.chdir(tmp_path)
    code, out, err = cli_in_process(["compare", "--reports", "reports"], capsys)
    assert code == 0, err
    report = (tmp_path / "reports" / "compare.md").read_text()
    assert "## Each setting against the choice" in report and "over 3 seeds" in out  # the other runs are still paired
    row = next(line for line in report.splitlines() if forged in line)
    assert (
        "| P-forged" in row and "evaluation/predictions.csv: not a predictions file; expected 'actual,predicted'" in row
    )


@pytest.mark.bad_input
def test_predictions_that_do_not_score_the_runs_accuracy_or_carry_other_labels_are_left_out(planted):
    experiment_id = planted.get_experiment_by_name("mnist-mlp").experiment_id
    other = log_run(planted, experiment_id, "P-other", "P", "relu", 0.0, 3, [0.9, 0.99], 0.95)
    log_predictions(planted, other, right(1_000))  # another model's file: 0.5000
    result = compare.compare("mnist-mlp")
    assert len(result.verdicts) == 3 and other not in set(result.runs["run_id"])
    reasons = result.left_out.set_index("run_id")["reason"]
    assert (
        reasons[other] == f"run {other}: evaluation/predictions.csv scores 0.5000, not the run's test accuracy 0.9500"
    )


def _panels(fig) -> dict:
    return {axes.get_label(): axes for axes in fig.axes if axes.get_label()}


def _colours(artists) -> dict[str, str]:
    from matplotlib.colors import to_hex

    return {
        artist.get_label(): to_hex(artist.get_color()) for artist in artists if not artist.get_label().startswith("_")
    }


def test_the_figure_puts_each_dropout_at_its_value_and_gives_each_activation_one_colour(planted):
    """2 activations x dropouts 0 and 0.5: the accuracy panels' x is the dropout itself, the curves one panel per
    dropout, and an activation's colour is the same in every panel; one legend names the colours and the choice."""
    from matplotlib import pyplot as plt
    from matplotlib.colors import to_hex

    fig = compare.figure(compare.compare("mnist-mlp"))
    try:
        panels = _panels(fig)
        assert set(panels) == {"val", "test", "curves 0", "curves 0.5"}
        for split in ("val", "test"):
            assert list(panels[split].get_xticks()) == [0.0, 0.5]
            assert [label.get_text() for label in panels[split].get_xticklabels()] == ["0", "0.5"]
            assert panels[split].get_xlabel() == "dropout"
            means = {
                container.get_label(): to_hex(container.lines[0].get_color()) for container in panels[split].containers
            }
            assert means == {"relu": "#1f77b4", "tanh": "#ff7f0e"}  # compare.ACTIVATION_COLOURS
        for dropout in ("0", "0.5"):
            assert _colours(panels[f"curves {dropout}"].get_lines()) == {"relu": "#1f77b4", "tanh": "#ff7f0e"}
        (legend,) = fig.legends
        assert [text.get_text() for text in legend.get_texts()] == ["relu", "tanh", "chosen on validation"]
        (ring,) = [line for line in panels["val"].get_lines() if line.get_label() == "chosen on validation"]
        assert (ring.get_xdata()[0] < 0.1, ring.get_ydata()[0]) == (True, pytest.approx(0.991))  # relu at dropout 0
    finally:
        plt.close(fig)


def test_with_one_dropout_the_activations_are_the_axis_and_the_dropout_is_named(mlflow_store):
    """A 2 x 1 grid of one seed: no single dropout tick with settings spread across it as if at other dropouts."""
    from matplotlib import pyplot as plt

    client = mlflow.MlflowClient(mlflow_store)
    experiment_id = new_experiment(client, "mnist-mlp")
    log_run(client, experiment_id, "W-relu", "W", "relu", 0.2, 0, [0.90, 0.99], 0.95)
    log_run(client, experiment_id, "W-sigmoid", "W", "sigmoid", 0.2, 0, [0.90, 0.97], 0.98)
    result = compare.compare("mnist-mlp")
    fig = compare.figure(result)
    try:
        panels = _panels(fig)
        assert set(panels) == {"val", "test", "curves 0.2"}
        for split in ("val", "test"):
            assert list(panels[split].get_xticks()) == [0, 1]
            assert [label.get_text() for label in panels[split].get_xticklabels()] == ["relu", "sigmoid"]
            assert panels[split].get_xlabel() == "activation (dropout 0.2 in every run)"
        assert _colours(panels["curves 0.2"].get_lines()) == {"relu": "#1f77b4", "sigmoid": "#2ca02c"}
        (legend,) = fig.legends
        assert [text.get_text() for text in legend.get_texts()] == ["relu", "sigmoid", "chosen on validation"]
        assert (
            fig._suptitle.get_text()
            == "Activation, sweep W: 2 runs: 2 activations × dropout 0.2, 1 seed each, 2 epochs"
        )
    finally:
        plt.close(fig)
    assert compare.grid_title(result) == "Activation" and compare.describe_runs(result).endswith(
        "1 seed each, 2 epochs"
    )


@pytest.fixture
def store(mlflow_store):
    """An old 1-run sweep A, then sweep B: a 2x3 grid, relu/0.5 with two seeds, plus a failed and an unswept run."""
    client = mlflow.MlflowClient(mlflow_store)
    experiment_id = new_experiment(client, "mnist-mlp")
    log_run(client, experiment_id, "old", "A", "relu", 0.0, 0, [0.5], 0.5, lr=0.1)
    accuracy = iter([0.91, 0.92, 0.93, 0.94, 0.95, 0.96])
    for activation in ("relu", "tanh"):
        for dropout in (0.0, 0.2, 0.5):
            log_run(
                client,
                experiment_id,
                f"B-{activation}-{dropout}",
                "B",
                activation,
                dropout,
                0,
                [0.8, 0.9],
                next(accuracy),
            )
    log_run(client, experiment_id, "B-relu-0.5-s1", "B", "relu", 0.5, 1, [0.7, 0.9], 0.97)
    log_run(client, experiment_id, "B-crashed", "B", "tanh", 0.5, 1, [0.8], None, status="FAILED")
    log_run(client, experiment_id, "workspace", "", "relu", 0.2, 0, [0.8, 0.85], 0.9)
    return client


def test_the_best_setting_is_chosen_on_validation_and_its_test_accuracy_only_reported(mlflow_store):
    client = mlflow.MlflowClient(mlflow_store)
    experiment_id = new_experiment(client, "mnist-mlp")
    # relu/0 is best on validation, tanh/0 on the test digits: validation must choose
    log_run(client, experiment_id, "V-relu", "V", "relu", 0.0, 0, [0.90, 0.99], 0.95)
    log_run(client, experiment_id, "V-tanh", "V", "tanh", 0.0, 0, [0.90, 0.97], 0.98)
    result = compare.compare("mnist-mlp")
    assert tuple(compare.chosen(result)[compare.SETTING]) == ("relu", 0.0)
    assert compare.headline(result) == (
        "2 runs: 2 activations × dropout 0, 1 seed each, 2 epochs. Chosen on validation: relu with dropout 0, mean "
        "best validation accuracy 0.9900 over 1 seed; its test accuracy (reported, never used to choose) 0.9500. "
        "No paired test: 2 of 2 runs logged no per-digit predictions (evaluation/predictions.csv; evaluate logs it "
        "with every run): V-relu, V-tanh. Each setting has one run (one seed is one sample): the seed-to-seed spread "
        "is in no interval or test, so this cannot separate settings; `--seeds 0 1 2` runs three seeds per setting."
    )


def test_latest_sweep_by_default_with_intervals_over_seeds(store, tmp_path):
    result = compare.compare("mnist-mlp")
    assert result.sweep_id == "B"
    assert len(result.runs) == 7 and list(result.left_out["name"]) == ["B-crashed"]
    summary = result.summary.set_index(["activation", "dropout"])
    assert len(summary) == 6
    cell = summary.loc[("relu", 0.5)]
    assert cell["runs"] == 2
    low, high = scipy_stats.t.interval(0.95, 1, loc=0.95, scale=0.02)  # two seeds, 0.93 and 0.97: sem 0.02
    assert cell["test"].mean == pytest.approx(0.95)
    assert (cell["test"].interval.low, cell["test"].interval.high) == (
        pytest.approx(low),
        1.0,
    )  # cut at an accuracy's 1
    assert str(summary.loc[("tanh", 0.2), "test"]) == "0.9500"  # one run without its digits: no interval to give
    curve = result.curves[("relu", 0.5)]
    assert (
        list(curve["mean"]) == [pytest.approx(0.75), pytest.approx(0.9)]
        and curve.loc[0, "low"] < 0.75 < curve.loc[0, "high"]
    )
    # the grid varied activation, dropout and seed; everything else was the same in every run
    assert result.shared == {"train.epochs": "2", "train.lr": "0.002", "tracking.sweep_id": "B"} and result.mixed == {}

    table, picture = compare.write_report(result, tmp_path / "reports")
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in table.read_text().splitlines()
        if line.startswith("|")
    ]
    assert ["relu", "0.5", "2", "0.9000 [0.9000, 0.9000]", f"0.9500 {cell['test'].interval}", "20.0", ""] in rows
    assert next(row for row in rows if row[0] == "relu" and row[1] == "0")[-1] == "← chosen on validation"
    seeded = result.runs.set_index("name").loc["B-relu-0.5-s1", "run_id"]
    assert ["B-relu-0.5-s1", "relu", "0.5", "1", "0.9000", "0.9700", "", "20.0", seeded] in rows
    text = table.read_text()
    # every setting of B reached 0.9 on validation: the tie goes to the first, whatever the test digits say
    assert "Chosen on validation: relu with dropout 0, mean best validation accuracy 0.9000 over 1 seed" in text
    crashed = result.left_out.set_index("name").loc["B-crashed", "run_id"]
    assert [
        "B-crashed",
        crashed,
        "FAILED",
        "status FAILED",
    ] in rows and "cannot separate settings" not in text  # relu/0.5: two seeds
    assert "All 7 runs had: tracking.sweep_id=B, train.epochs=2, train.lr=0.002" in text and "WARNING" not in text
    assert "dvc plots diff B-relu-0.0 B-relu-0.2" in text
    assert "workspace" not in text and "| old " not in text
    with Image.open(picture) as image:
        assert image.size[0] > 800 and image.size[1] > 300


def test_runs_that_differ_beyond_the_grid_are_named_in_a_warning(store, tmp_path, monkeypatch, capsys):
    experiment_id = store.get_experiment_by_name("mnist-mlp").experiment_id
    log_run(store, experiment_id, "C-1", "C", "relu", 0.0, 0, [0.9], 0.95, hidden_sizes="[512, 512]")
    log_run(store, experiment_id, "C-2", "C", "tanh", 0.0, 0, [0.9], 0.94, hidden_sizes="[512, 512]", lr=0.01)
    monkeypatch.chdir(tmp_path)
    code, out, err = cli_in_process(["compare", "--reports", str(tmp_path / "reports")], capsys)
    assert code == 0, err
    warning = "WARNING: these runs differ in more than activation, dropout, seed: train.lr (0.002, 0.01); the comparison mixes settings"
    shared = (
        "All 2 runs had: tracking.sweep_id=C, train.dropout=0.0, train.epochs=1, "
        "train.hidden_sizes=[512, 512], train.seed=0"
    )
    plots = "dvc plots diff C-1 C-2 --open"
    for line in (warning, shared, plots):
        assert line in out and line in (tmp_path / "reports" / "compare.md").read_text()
    assert "wrote " in out.splitlines()[-1]


def test_a_named_sweep_and_all_runs(store):
    assert list(compare.compare("mnist-mlp", "A").runs["name"]) == ["old"]
    everything = compare.compare("mnist-mlp", compare.ALL)
    assert (
        len(everything.runs) == 8
    )  # every finished run but one: the unswept workspace run repeats B-relu-0.2's params
    assert everything.summary.set_index(["activation", "dropout"]).loc[("relu", 0.2), "runs"] == 1
    duplicate = everything.left_out.set_index("name").loc["workspace", "reason"]
    b_relu = everything.runs.set_index("name").loc["B-relu-0.2", "run_id"]
    assert duplicate == f"a second run of the same params (relu/0.2 seed 0): counted once, as {b_relu}"
    assert everything.mixed == {
        "train.epochs": ["1", "2"],
        "train.lr": ["0.002", "0.1"],
    }  # a sweep id alone would not count


def test_the_default_experiment_is_the_one_in_params_yaml(store, tmp_path, monkeypatch, capsys):
    log_run(store, new_experiment(store, "mine"), "M-1", "M", "gelu", 0.1, 0, [0.9], 0.93)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"tracking": {"experiment": "mine"}}))
    monkeypatch.chdir(tmp_path)
    code, out, err = cli_in_process(["compare", "--reports", str(tmp_path / "reports")], capsys)
    assert code == 0, err
    assert "(1 runs, sweep M)" in out and "gelu" in out


def test_unknown_sweep_and_experiment_are_one_clear_line(store, tmp_path, monkeypatch, capsys):
    with pytest.raises(NoRunsError, match="no finished run of sweep 'nope'"):
        compare.compare("mnist-mlp", "nope")
    with pytest.raises(NoRunsError, match="no experiment 'other'"):
        compare.compare("other", compare.ALL)
    monkeypatch.chdir(tmp_path)
    code, out, err = cli_in_process(["compare", "--sweep-id", "nope", "--reports", str(tmp_path / "r")], capsys)
    assert code == 1 and out == ""
    assert err.startswith("mnist-mlp compare: error: no finished run of sweep 'nope'") and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_no_sweep_yet_points_to_make_sweep(mlflow_store):
    client = mlflow.MlflowClient(mlflow_store)
    log_run(client, new_experiment(client, "mnist-mlp"), "workspace", "", "relu", 0.2, 0, [0.9], 0.9)
    with pytest.raises(NoRunsError, match="make sweep"):
        compare.compare("mnist-mlp")
    assert len(compare.compare("mnist-mlp", compare.ALL).runs) == 1


@pytest.mark.integration
def test_a_real_three_seed_sweep_is_reported_with_paired_tests_on_its_logged_predictions(project):
    """`make sweep`'s path on tiny data: a 2 x 2 grid x 3 seeds, one epoch each, then `mnist-mlp compare`."""
    from mnist_mlp.tracking import predictions
    from support.paths import BIN
    from support.sweep import run_sweep

    output = run_sweep(
        project,
        ["relu", "sigmoid"],
        ["0.0", "0.5"],
        "--seeds",
        "0",
        "1",
        "2",
        "--set",
        "train.epochs=1",
        "--sweep-id",
        "s3",
    )
    assert "12/12 done" in output
    compared = run([str(BIN / "mnist-mlp"), "compare"], project).stdout
    result = compare.compare("mnist-mlp")
    assert len(result.runs) == 12 and set(result.summary["runs"]) == {3} and not result.untested
    # the headline as printed: the validation choice, then every other setting in exactly one group
    line = compare.headline(result)
    assert line in compared and line.startswith(
        "12 runs: 2 activations × 2 dropouts, 3 seeds each, 1 epoch. Chosen on validation: "
    )
    assert "cannot separate settings" not in line
    choice = compare.chosen(result)
    assert choice["val"].mean == result.summary["val"].map(lambda value: value.mean).max()
    others = {compare.setting_name(s) for s in zip(result.summary["activation"], result.summary["dropout"])} - {
        compare.setting_name((choice["activation"], choice["dropout"]))
    }
    assert {compare.setting_name(v.setting) for v in result.verdicts} == others
    # every paired count is what the runs' own logged predictions give: each digit's share right over the 3 seeds
    shares = {
        setting: np.mean([predictions.logged(run_id).correct for run_id in group["run_id"]], axis=0)
        for setting, group in result.runs.groupby(compare.SETTING)
    }
    best = shares[(choice["activation"], choice["dropout"])]
    for verdict in result.verdicts:
        assert verdict.paired.seeds == (0, 1, 2)
        assert verdict.paired.only_first == int((best > shares[verdict.setting]).sum())
        assert verdict.paired.only_second == int((best < shares[verdict.setting]).sum())
        assert verdict.paired.accuracy_difference == pytest.approx(float(np.mean(best - shares[verdict.setting])))
        assert verdict.p_holm >= verdict.paired.p_value
    # three seeds: a t-interval around every mean
    for estimate in [*result.summary["val"], *result.summary["test"]]:
        assert estimate.interval.low <= estimate.mean <= estimate.interval.high
    report = (project / "reports" / "compare.md").read_text()
    assert (
        "## Each setting against the choice, on the same test digits" in report
        and "## Main effect of dropout" in report
    )
    assert (project / "reports" / "figures" / "compare.png").stat().st_size > 20_000


def test_killed_duplicate_and_nan_runs_are_left_out_named_and_bias_nothing(mlflow_store, capsys):
    """Known answers: two settings with the same predictions seed by seed stay level when one of them lost a seed
    (KILLED), a second FINISHED run of a point counts once, and a NaN validation accuracy is left out, not ranked."""
    client = mlflow.MlflowClient(mlflow_store)
    experiment_id = new_experiment(client, "mnist-mlp")
    rng = np.random.default_rng(0)
    per_seed = {seed: right(1_900) ^ (rng.random(len(LABELS)) < 0.02) for seed in (0, 1, 2)}  # other errors per seed
    logged = {}
    for dropout, best_val in ((0.2, 0.99), (0.200000001, 0.98)):
        for seed in (0, 1, 2):
            status = "KILLED" if (dropout, seed) == (0.200000001, 2) else "FINISHED"
            logged[dropout, seed] = log_run(
                client,
                experiment_id,
                f"K-{dropout}-{seed}",
                "K",
                "relu",
                dropout,
                seed,
                [0.9, best_val],
                None,
                status=status,
                correct=per_seed[seed],
            )
    again = log_run(client, experiment_id, "K-again", "K", "relu", 0.2, 1, [0.9, 0.99], None, correct=per_seed[1])
    for seed in (0, 1, 2):  # tanh/0.2: its seed 2 logged a NaN validation accuracy
        logged["tanh", seed] = log_run(
            client,
            experiment_id,
            f"K-tanh-{seed}",
            "K",
            "tanh",
            0.2,
            seed,
            [float("nan")] if seed == 2 else [0.9, 0.97],
            None,
            correct=per_seed[seed],
        )
    result = compare.compare("mnist-mlp")
    reasons = result.left_out.set_index("run_id")["reason"]
    assert reasons[logged[0.200000001, 2]] == "status KILLED"
    assert reasons[again] == f"a second run of the same params (relu/0.2 seed 1): counted once, as {logged[0.2, 1]}"
    assert reasons[logged["tanh", 2]] == "no finite best_val_accuracy (not logged, NaN or infinite)"
    assert len(result.runs) == 7 and len(result.left_out) == 3
    summary = result.summary.set_index(["activation", "dropout"])
    assert list(summary["runs"]) == [3, 2, 2] and np.isfinite([value.mean for value in summary["val"]]).all()
    assert tuple(compare.chosen(result)[compare.SETTING]) == ("relu", 0.2)
    verdicts = {compare.setting_name(v.setting): v for v in result.verdicts}
    twin = verdicts["relu/0.200000001"]  # settings that differ beyond :g's digits get distinct names
    assert twin.paired.seeds == (0, 1) and (twin.paired.only_first, twin.paired.only_second, twin.paired.p_value) == (
        0,
        0,
        1.0,
    )
    assert twin.outcome == "level" and verdicts["tanh/0.2"].outcome == "level"
    assert "Left out: 3 run(s), each with its reason in the report's last table" in compare.notes(result)


def test_with_the_local_test_split_each_runs_own_model_answers_and_a_forged_file_changes_nothing(
    mlflow_store, tmp_path
):
    """The verdict rests on the models themselves run here: tanh's files (errors moved onto relu's wrong digits,
    the count kept) are never read, and a run whose model does not score its logged accuracy is left out."""
    from mnist_mlp.cli import local_test
    from mnist_mlp.tracking import runs
    from support.answering import AnswerSheet

    sheet, client = AnswerSheet(), mlflow.MlflowClient(mlflow_store)
    experiment_id = new_experiment(client, "mnist-mlp")

    def with_model(run_id: str, correct: np.ndarray) -> str:
        with mlflow.start_run(run_id=run_id):
            runs.Run(run_id).log_model(sheet.model(correct), np.zeros((2, 784), np.float32))
        return run_id

    for activation, best_val, correct in (("relu", 0.99, right(1_900)), ("tanh", 0.98, right(1_870))):
        for seed in (0, 1, 2):
            run_id = log_run(
                client,
                experiment_id,
                f"M-{activation}-{seed}",
                "M",
                activation,
                0.0,
                seed,
                [0.9, best_val],
                None,
                status="RUNNING",
                correct=correct,
            )
            with_model(run_id, correct)
            if activation == "tanh":  # forged: 1,870 right as logged, but right where relu is wrong
                log_predictions(client, run_id, right(1_770) | (np.arange(len(LABELS)) >= 1_900))
            client.set_terminated(run_id, "FINISHED")
    liar = log_run(
        client,
        experiment_id,
        "M-relu-3",
        "M",
        "relu",
        0.0,
        3,
        [0.9, 0.99],
        None,
        status="RUNNING",
        correct=right(1_900),
    )
    with_model(liar, right(1_800))  # its model gets 0.9000 right; its metrics (and file) say 0.9500
    client.set_terminated(liar, "FINISHED")

    test = local_test(sheet.split(tmp_path / "test.pt"))
    result = compare.compare("mnist-mlp", test=test)
    (verdict,) = result.verdicts
    assert (verdict.paired.only_first, verdict.paired.only_second, verdict.outcome) == (30, 0, "worse")  # the models'
    assert result.left_out.set_index("run_id").loc[liar, "reason"] == (
        f"run {liar}: its model scores 0.9000 on {tmp_path / 'test.pt'}, not the run's test accuracy 0.9500"
    )
    assert f"each run's own model, verified file by file, run on {tmp_path / 'test.pt'}" in compare.markdown(result)
    # the premise: the same comparison from the logged files sees the forged answers
    forged = compare.compare("mnist-mlp").verdicts[0]
    assert (forged.paired.only_first, forged.paired.only_second) != (30, 0)


def test_runs_logged_with_bare_train_keys_compare_beside_runs_keyed_as_params_yaml(mlflow_store):
    """A store's sweeps from before MLflow params were dotted (`dropout`) read as `train.dropout`, also beside new runs."""
    client = mlflow.MlflowClient(mlflow_store)
    experiment_id = new_experiment(client, "mnist-mlp")
    log_run(client, experiment_id, "L-relu", "L", "relu", 0.0, 0, [0.90, 0.99], 0.95)
    old = log_run(
        client, experiment_id, "L-tanh", "L", "tanh", 0.0, 0, [0.90, 0.97], 0.98, params_as_logged_before=True
    )
    result = compare.compare("mnist-mlp", "L")
    assert set(result.runs["activation"]) == {"relu", "tanh"} and result.left_out.empty
    assert result.runs.set_index("run_id").loc[old, "params.train.dropout"] == "0.0"
    assert "params.dropout" not in result.runs
