"""The metric gate: planted regressions fail it, unchanged or better metrics pass, git baselines work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mnist_mlp.cli import main
from mnist_mlp.verdicts import gate
from support.cli import cli_in_process, run
from support.paths import BIN, ROOT

RECALLS = [0.99, 0.995, 0.985, 0.98, 0.982, 0.984, 0.986, 0.981, 0.978, 0.975]


def metrics(accuracy: float = 0.9857, loss: float = 0.0645, recalls: list[float] = RECALLS) -> dict:
    """reports/metrics.json as the evaluate stage writes it."""
    return {
        "test": {
            "accuracy": accuracy,
            "loss": loss,
            "per_class": {str(c): {"precision": 0.98, "recall": r, "f1": 0.98} for c, r in enumerate(recalls)},
        },
        "training": {"best_val_accuracy": 0.983, "best_epoch": 18, "epochs": 20, "seconds": 600.0},
        "mlflow_run_id": "0123456789abcdef",
    }


def write(path: Path, content: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2))
    return path


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    """The project's own rules file, so the tests check what CI enforces."""
    return Path(shutil.copy(ROOT / "metrics_rules.yaml", tmp_path / "metrics_rules.yaml"))


def check(tmp_path: Path, rules: Path, new: dict, baseline: dict | None, capsys) -> tuple[int, str, str]:
    """Run `mnist-mlp check-metrics` in-process with files: (exit code, stdout, stderr)."""
    arguments = ["check-metrics", "--metrics", str(write(tmp_path / "new.json", new)), "--rules", str(rules)]
    if baseline is not None:
        arguments += ["--baseline", str(write(tmp_path / "baseline.json", baseline))]
    return cli_in_process(arguments, capsys)


def table_rows(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("| test.")]


def test_identical_metrics_pass(tmp_path, rules, capsys):
    code, out, err = check(tmp_path, rules, metrics(), metrics(), capsys)
    assert (code, err) == (0, "")
    assert len(table_rows(out)) == 12 and all(row.endswith("| ok |") for row in table_rows(out))
    assert "**PASS**: 12 metrics" in out


def test_improved_metrics_pass_and_say_better(tmp_path, rules, capsys):
    code, out, _ = check(tmp_path, rules, metrics(accuracy=0.9900, loss=0.05), metrics(), capsys)
    assert code == 0
    assert "| test.accuracy | 0.9857 | 0.9900 | +0.0043 (+0.44%) | better |" in out
    assert "| test.loss | 0.0645 | 0.0500 | -0.0145 (-22.48%) | better |" in out


def test_the_table_has_exact_rows(tmp_path, rules, capsys):
    recalls = RECALLS[:9] + [0.96]
    code, out, _ = check(tmp_path, rules, metrics(accuracy=0.9850, loss=0.0700, recalls=recalls), metrics(), capsys)
    assert code == 1
    assert out.splitlines()[2:4] == ["| metric | baseline | new | change | verdict |", "|---|---:|---:|---:|---|"]
    rows = table_rows(out)
    assert rows[0] == "| test.accuracy | 0.9857 | 0.9850 | -0.0007 (-0.07%) | ok (worse by 0.0007, within 0.0020) |"
    assert rows[1] == "| test.loss | 0.0645 | 0.0700 | +0.0055 (+8.53%) | ok (worse by 0.0055, within 0.0065) |"
    assert rows[2] == "| test.per_class.0.recall | 0.9900 | 0.9900 | +0.0000 (+0.00%) | ok |"
    assert rows[-1] == (
        "| test.per_class.9.recall | 0.9750 | 0.9600 | -0.0150 (-1.54%) "
        "| **REGRESSION: worse by 0.0150, tolerance 0.0100; BELOW FLOOR 0.97** |"
    )
    assert [row.split(" | ")[0] for row in rows] == ["| test.accuracy", "| test.loss"] + [
        f"| test.per_class.{c}.recall" for c in range(10)
    ]


def test_accuracy_down_beyond_tolerance_fails_naming_it(tmp_path, rules, capsys):
    code, out, err = check(tmp_path, rules, metrics(accuracy=0.9845), metrics(accuracy=0.9880), capsys)
    assert code == 1
    assert err.splitlines() == [
        "mnist-mlp check-metrics: error: test.accuracy regressed: 0.9880 -> 0.9845 (worse by 0.0035, tolerance 0.0020)"
    ]
    assert "**FAIL**: 1 broken rule(s)" in out


def test_a_drop_exactly_at_the_tolerance_passes(tmp_path, rules, capsys):
    code, _, err = check(tmp_path, rules, metrics(accuracy=0.9900 - 0.002), metrics(accuracy=0.9900), capsys)
    assert (code, err) == (0, "")


def test_loss_up_beyond_its_relative_tolerance_fails(tmp_path, rules, capsys):
    code, _, err = check(tmp_path, rules, metrics(loss=0.0645 * 1.2), metrics(), capsys)
    assert code == 1 and "test.loss regressed" in err


def test_a_class_recall_below_its_floor_fails_even_within_tolerance(tmp_path, rules, capsys):
    before, after = RECALLS[:8] + [0.972, 0.975], RECALLS[:8] + [0.968, 0.975]
    code, out, err = check(tmp_path, rules, metrics(recalls=after), metrics(recalls=before), capsys)
    assert code == 1
    assert err.splitlines() == [
        "mnist-mlp check-metrics: error: test.per_class.8.recall is 0.9680, below its floor 0.97"
    ]
    assert "| **ok (worse by 0.0040, within 0.0100); BELOW FLOOR 0.97** |" in out


def test_every_broken_rule_is_named(tmp_path, rules, capsys):
    code, _, err = check(tmp_path, rules, metrics(accuracy=0.97, recalls=[0.96] * 10), metrics(), capsys)
    assert code == 1
    named = [line.split(": error: ")[1].split(" ")[0] for line in err.splitlines()]
    # each: one regression against the baseline, one broken floor
    assert named == ["test.accuracy"] * 2 + [f"test.per_class.{c}.recall" for c in range(10) for _ in range(2)]


def test_a_missing_metric_is_refused(tmp_path, rules, capsys):
    broken = metrics()
    del broken["test"]["per_class"]["3"]["recall"]
    code, out, err = check(tmp_path, rules, broken, metrics(), capsys)
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"mnist-mlp check-metrics: error: {tmp_path / 'new.json'}: no metric 'test.per_class.*.recall' "
        "(no key 'recall' under test.per_class.3)"
    ]


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "metrics file not found"),
        ("{not json", "not valid JSON"),
        ("[0.98]", "expected a JSON object of metrics, got list"),
        ('{"test": {"accuracy": "high"}}', "metric 'test.accuracy' is 'high', expected a finite number"),
    ],
)
def test_an_unusable_metrics_file_is_refused_in_one_line(tmp_path, rules, capsys, content, expected):
    path = tmp_path / "metrics.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        main(["check-metrics", "--metrics", str(path), "--rules", str(rules), "--baseline", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert len(err.splitlines()) == 1 and expected in err and str(path) in err


@pytest.mark.parametrize(
    "text, expected",
    [
        ("metrics:\n  test.accuracy: {abs_tolerance: 0.01}\n", "metrics.test.accuracy: a tolerance needs 'better"),
        (
            "metrics:\n  test.accuracy: {better: up}\n",
            "metrics.test.accuracy.better: Input should be 'higher' or 'lower'",
        ),
        ("metrics:\n  test.acc*: {floor: 0.9}\n", "bad metric path 'test.acc*'"),
        ("metrics:\n  test.accuracy: {floor: 0.99, ceiling: 0.9}\n", "floor 0.99 is above ceiling 0.9"),
        ("metrics:\n  test.accuracy: {better: higher, abs_tol: 0.1}\n", "abs_tol: Extra inputs are not permitted"),
        ("metrics: {}\n", "metrics: Dictionary should have at least 1 item"),
    ],
)
def test_a_bad_rules_file_is_refused_naming_the_rule(tmp_path, text, expected):
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(gate.GateError) as error:
        gate.load_rules(path)
    assert expected in str(error.value) and str(path) in str(error.value)


def test_a_metric_new_since_the_baseline_gets_only_its_bounds(tmp_path, rules, capsys):
    old = metrics()
    del old["test"]["loss"]
    code, out, _ = check(tmp_path, rules, metrics(), old, capsys)
    assert code == 0
    assert "| test.loss | — | 0.0645 | — | new metric, not in the baseline |" in out


# --- baselines read from git ---------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path, monkeypatch) -> Path:
    """A git repo holding the rules file, on branch main, with no commits yet."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for key, value in {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }.items():
        monkeypatch.setenv(key, value)
    run(["git", "init", "-q", "-b", "main"], repo)
    shutil.copy(ROOT / "metrics_rules.yaml", repo / "metrics_rules.yaml")
    return repo


def commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", message], repo)


@pytest.mark.integration
def test_the_baseline_is_the_metrics_committed_on_main(repo):
    write(repo / "reports" / "metrics.json", metrics(accuracy=0.9880))
    commit(repo, "baseline metrics")
    run(["git", "checkout", "-qb", "feature"], repo)
    write(repo / "reports" / "metrics.json", metrics(accuracy=0.9850))

    failed = run([str(BIN / "mnist-mlp"), "check-metrics"], repo, check=False)
    assert failed.returncode == 1
    assert "against `main:reports/metrics.json`" in failed.stdout
    assert "| test.accuracy | 0.9880 | 0.9850 | -0.0030 (-0.30%) |" in failed.stdout
    assert "test.accuracy regressed: 0.9880 -> 0.9850" in failed.stderr

    commit(repo, "feature metrics")  # committed on feature, main keeps the better baseline
    assert (
        run([str(BIN / "mnist-mlp"), "check-metrics", "--baseline-rev", "feature"], repo, check=False).returncode == 0
    )
    assert run([str(BIN / "mnist-mlp"), "check-metrics"], repo, check=False).returncode == 1


def test_the_git_baseline_is_found_from_a_subfolder_and_an_absolute_path(repo):
    write(repo / "reports" / "metrics.json", metrics())
    commit(repo, "baseline metrics")
    report = gate.run_gate(repo / "reports" / "metrics.json", repo / "metrics_rules.yaml")
    assert report.has_baseline and not report.failures


def test_without_commits_only_floors_apply_and_it_says_so(repo, monkeypatch):
    write(repo / "reports" / "metrics.json", metrics())
    monkeypatch.chdir(repo)
    report = gate.run_gate("reports/metrics.json", "metrics_rules.yaml")
    assert not report.has_baseline and not report.failures
    assert (
        "no baseline yet (`main:reports/metrics.json` does not exist): only floors and ceilings apply"
        in report.markdown()
    )
    assert all(row.baseline is None for row in report.rows)

    write(repo / "reports" / "metrics.json", metrics(accuracy=0.95))
    assert gate.run_gate("reports/metrics.json", "metrics_rules.yaml").failures == [
        "test.accuracy is 0.9500, below its floor 0.984"
    ]


def test_a_metrics_file_not_yet_on_main_means_no_baseline(repo, monkeypatch):
    commit(repo, "rules only")
    write(repo / "reports" / "metrics.json", metrics())
    monkeypatch.chdir(repo)
    assert not gate.run_gate("reports/metrics.json", "metrics_rules.yaml").has_baseline


def test_an_unknown_revision_is_refused(repo, monkeypatch):
    commit(repo, "rules only")
    write(repo / "reports" / "metrics.json", metrics())
    monkeypatch.chdir(repo)
    with pytest.raises(gate.GateError, match="unknown git revision 'origin/main'"):
        gate.run_gate("reports/metrics.json", "metrics_rules.yaml", baseline_rev="origin/main")


def test_outside_git_a_baseline_file_is_needed(tmp_path, monkeypatch):
    write(tmp_path / "reports" / "metrics.json", metrics())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    with pytest.raises(gate.GateError, match="not inside a git repository; pass --baseline FILE"):
        gate.run_gate("reports/metrics.json", ROOT / "metrics_rules.yaml")


LOOSE_RULES = "metrics:\n  test.accuracy: {better: higher, abs_tolerance: 0.05}\n"  # lets a 1-point drop through


def with_predictions(repo: Path, accuracy: float, correct) -> None:
    from support.predictions import predictions_text

    write(repo / "reports" / "metrics.json", metrics(accuracy=accuracy))
    (repo / "reports" / "predictions.csv").write_text(predictions_text(correct))


def test_a_drop_beyond_noise_on_the_same_digits_fails_though_the_tolerance_passes(repo):
    from support.predictions import right

    (repo / "loose.yaml").write_text(LOOSE_RULES)
    with_predictions(repo, 0.95, right(1_900))
    commit(repo, "baseline metrics and predictions")
    with_predictions(repo, 0.94, right(1_880))  # 20 of the 2,000 digits lost, none won
    report = gate.run_gate(repo / "reports" / "metrics.json", repo / "loose.yaml")
    assert not [row for row in report.rows if row.failures]  # the tolerance alone would pass it
    assert report.failures == [
        "test digits: worse beyond noise against main:reports/predictions.csv: 0 digits right only "
        "in the new model, 20 only in the baseline: -20 of 2,000 (-1.00 points, 95 % "
        f"{report.paired.difference.points()}), exact McNemar p < 0.001"
    ]
    assert "**worse beyond noise**" in report.markdown() and "**FAIL**" in report.markdown()


def test_the_same_predictions_are_level_within_noise(repo):
    from support.predictions import right

    with_predictions(repo, metrics()["test"]["accuracy"], right(1_971))
    commit(repo, "baseline")
    report = gate.run_gate(repo / "reports" / "metrics.json", repo / "metrics_rules.yaml")
    assert (report.paired.only_first, report.paired.only_second, report.paired.p_value) == (0, 0, 1.0)
    assert "0 digits right only in the new model, 0 only in the baseline: +0 of 2,000" in report.markdown()
    assert "**level within noise**" in report.markdown() and not report.failures


def test_without_the_baseline_predictions_the_gate_says_there_is_no_paired_test(repo, tmp_path, capsys):
    from support.predictions import right

    write(repo / "reports" / "metrics.json", metrics())
    commit(repo, "metrics only")
    with_predictions(repo, metrics()["test"]["accuracy"], right(1_971))
    report = gate.run_gate(repo / "reports" / "metrics.json", repo / "metrics_rules.yaml")
    assert (
        report.paired is None and "No paired test: main:reports/predictions.csv is not committed." in report.markdown()
    )
    # a baseline file in the new metrics' own folder: one predictions file cannot stand for both
    (tmp_path / "predictions.csv").write_text("actual,predicted\n1,1\n")
    code, out, _ = check(
        tmp_path, Path(shutil.copy(ROOT / "metrics_rules.yaml", tmp_path / "r.yaml")), metrics(), metrics(), capsys
    )
    assert code == 0 and "cannot stand for both" in out


@pytest.mark.bad_input
def test_a_forged_baseline_predictions_file_is_one_line(repo, capsys, monkeypatch):
    from support.predictions import right

    write(repo / "reports" / "metrics.json", metrics())
    (repo / "reports" / "predictions.csv").write_text("actual,predicted\n7,__import__('os')\n")
    commit(repo, "a forged file")
    with_predictions(repo, metrics()["test"]["accuracy"], right(1_971))
    monkeypatch.chdir(repo)
    code, out, err = cli_in_process(["check-metrics"], capsys)
    assert code == 1 and len(err.splitlines()) == 1
    assert "main:reports/predictions.csv:2: \"7,__import__('os')\" is not two digits" in err


@pytest.mark.bad_input
def test_predictions_that_do_not_score_their_metrics_are_one_line(repo, capsys, monkeypatch):
    """reports/predictions.csv beside a metrics.json of another run (or a file with the errors moved to 'right')."""
    from support.predictions import predictions_text, right

    with_predictions(repo, 0.95, right(1_900))
    commit(repo, "baseline")
    write(repo / "reports" / "metrics.json", metrics(accuracy=0.95))
    (repo / "reports" / "predictions.csv").write_text(predictions_text(right(2_000)))
    monkeypatch.chdir(repo)
    code, out, err = cli_in_process(["check-metrics"], capsys)
    assert code == 1 and len(err.splitlines()) == 1
    assert (
        "reports/predictions.csv scores 1.0000, not reports/metrics.json's test accuracy 0.95: the predictions and the "
        "metrics are not of one run"
    ) in err
    # the committed baseline's pair is checked the same way
    with_predictions(repo, 0.95, right(1_900))
    write(repo / "reports" / "metrics.json", metrics(accuracy=0.90))
    commit(repo, "a baseline whose predictions are not its metrics'")
    with_predictions(repo, 0.95, right(1_900))
    code, out, err = cli_in_process(["check-metrics"], capsys)
    assert (
        code == 1
        and "main:reports/predictions.csv scores 0.9500, not main:reports/metrics.json's test accuracy 0.9" in err
    )
