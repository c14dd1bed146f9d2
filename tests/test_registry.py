"""The model registry on a SQLite store: evaluate registers a version, `mnist-mlp promote` gates the champion alias.

The same code runs against the tracking server in tests/test_server.py; here it runs on a local
SQLite store, which holds registered models too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml

from mnist_mlp.core.checkpoint import save_checkpoint, write_training_record
from mnist_mlp.core.model import MLP
from mnist_mlp.data.mnist import Normalization
from mnist_mlp.params import ParamsError, validate_params
from mnist_mlp.tracking import loading, registry, runs
from support.answering import AnswerSheet, answering_classifier
from support.cli import cli_in_process
from support.params import TINY_PARAMS, default_params, merge
from support.paths import ROOT
from support.predictions import log_predictions, right

RULES = {
    "metrics": {
        "test.accuracy": {"better": "higher", "abs_tolerance": 0.002, "floor": 0.5},
        "test.per_class.*.recall": {"better": "higher", "abs_tolerance": 0.05},
    }
}


def report_test(accuracy: float, recall: float = 0.9) -> dict:
    """metrics.json's `test` section, as the evaluate stage writes it."""
    return {
        "accuracy": accuracy,
        "loss": 1 - accuracy,
        "per_class": {str(c): {"precision": 0.9, "recall": recall, "f1": 0.9} for c in range(10)},
    }


def test_logged_metric_names_turn_back_into_the_metrics_file_shape():
    test = report_test(0.97, recall=0.93)
    logged = registry.logged_metrics(test)
    assert logged["test_accuracy"] == 0.97 and logged["test_recall_3"] == 0.93 and logged["test_f1_9"] == 0.9
    assert len(logged) == 2 + 3 * 10
    # MLflow metrics of a run hold training metrics too: they are not part of the gate's tree
    assert registry.metrics_tree({**logged, "val_loss": 0.2, "best_epoch": 3.0}) == {"test": test}


def test_registered_model_name_is_a_validated_param():
    assert validate_params({}).tracking.registered_model == "mnist-mlp"
    with pytest.raises(ParamsError, match="tracking.registered_model"):
        validate_params({"tracking": {"registered_model": "it's"}})  # a quote would break registry searches


SHEET = AnswerSheet()  # the planted answers of this test's models; promote runs them on SHEET's test split


@pytest.fixture(autouse=True)
def _new_sheet():
    SHEET.answers.clear()


def register(name: str, test: dict, seed: int, correct: np.ndarray | None = None) -> registry.ModelVersion:
    """A FINISHED run with test metrics and a logged model, registered as a version of `name`. The model really gets
    `correct`'s digits right on SHEET's test split (default: the first of 2,000 digits, as many as its accuracy)."""
    classifier = SHEET.model(right(round(test["accuracy"] * 2_000)) if correct is None else correct)
    with runs.training_run("unit", {"seed": seed}, {}) as run:
        run.log_metrics(registry.logged_metrics(test))
        uri = run.log_model(classifier, np.zeros((2, 784), np.float32))
        return registry.register_run_model(run.run_id, uri, name, {"test_accuracy": str(test["accuracy"])})


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(RULES))
    return path


def promote_cli(capsys, rules: Path, *args: str) -> tuple[int, str, str]:
    """`mnist-mlp promote`, the models run on the test split that makes SHEET's answers come true."""
    split = SHEET.split(rules.parent / "test.pt")
    return cli_in_process(["promote", "--model", "digits", "--rules", str(rules), "--test", str(split), *args], capsys)


def test_promote_moves_champion_only_past_the_gate(mlflow_store, rules, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    first, better, worse = (register("digits", report_test(a), seed) for seed, a in enumerate((0.95, 0.96, 0.90)))
    assert [v.version for v in (first, better, worse)] == ["1", "2", "3"]
    assert first.tags["test_accuracy"] == "0.95" and first.run_id

    code, out, _ = promote_cli(capsys, rules, "--run-id", first.run_id)
    assert code == 0 and "digits@champion -> version 1" in out and "the first champion: floors and ceilings held" in out

    # the default candidate is the run of reports/metrics.json, as the evaluate stage wrote it
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "metrics.json").write_text(
        json.dumps({"test": report_test(0.96), "mlflow_run_id": better.run_id})
    )
    code, out, _ = promote_cli(capsys, rules)
    assert code == 0 and out.strip() == (
        f"promote: digits@champion -> version 2 (run {better.run_id}, test accuracy 0.9600); passed the gate against version 1 "
        f"(run {first.run_id}), better beyond noise: 20 digits right only in the candidate, 0 only in version 1: +20 digits "
        f"(+1.00 points, 95 % {promote_stats_interval(right(1_920), right(1_900))}), exact McNemar p < 0.001"
    )

    code, out, err = promote_cli(capsys, rules, "--version", "3")
    assert code == 1 and out == ""
    (line,) = err.splitlines()
    assert line.startswith(
        f"mnist-mlp promote: error: refused: digits version 3 (run {worse.run_id}) stays out, "
        "against digits@champion = version 2: test.accuracy regressed: 0.9600 -> 0.9000"
    )
    assert registry.alias_version("digits", registry.CHAMPION).version == "2"

    code, out, _ = promote_cli(capsys, rules, "--version", "2")
    assert code == 0 and "already version 2" in out

    # models:/<name>@champion loads the promoted version's weights
    champion = loading.load_pixel_classifier("models:/digits@champion")
    expected = answering_classifier(1)
    probe = torch.rand(3, 784)
    assert torch.allclose(champion(probe), expected(probe))


def test_a_per_class_drop_is_refused_even_when_accuracy_rises(mlflow_store, rules, capsys):
    champion = register("digits", report_test(0.95, recall=0.95), 0)
    registry.set_alias("digits", registry.CHAMPION, champion.version)
    candidate = register("digits", report_test(0.97, recall=0.80), 1)
    capsys.readouterr()  # MLflow's own lines about the registration
    code, _, err = promote_cli(capsys, rules, "--run-id", candidate.run_id)
    assert code == 1 and len(err.splitlines()) == 1
    assert "test.per_class.0.recall regressed: 0.9500 -> 0.8000" in err and "test.accuracy" not in err


@pytest.mark.bad_input
@pytest.mark.parametrize(
    "args, expected",
    [
        (["--run-id", "0123abcd"], "run 0123abcd registered no version of 'digits'"),
        (["--version", "7"], "no version 7 of registered model 'digits'"),
        (
            ["--metrics", "missing.json"],
            "missing.json: not found; run `dvc repro` first, or pass --run-id or --version",
        ),
    ],
)
def test_promote_without_a_candidate_says_so_in_one_line(
    mlflow_store, rules, tmp_path, monkeypatch, capsys, args, expected
):
    monkeypatch.chdir(tmp_path)
    code, out, err = promote_cli(capsys, rules, *args)
    assert code == 1 and out == "" and len(err.splitlines()) == 1 and expected in err, err


@pytest.mark.integration
def test_the_evaluate_stage_registers_its_model_with_commit_and_accuracy(mlflow_store, tiny_processed, tmp_path):
    """stages/evaluate.py as DVC runs it: the model becomes a version of tracking.registered_model."""
    params = merge(default_params(), {**TINY_PARAMS, "tracking": {"registered_model": "digits"}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    model = tmp_path / "model.pt"
    info = {"best_val_accuracy": 0.5, "best_epoch": 1, "epochs": 1, "device": "cpu"}
    save_checkpoint(model, MLP([8], "relu", 0.0), Normalization(mean=0.13, std=0.31), params, info)
    write_training_record(tmp_path / "record.json", "not-in-this-store", 0.1, {"cpu_kind": "Intel AVX512"})
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "OMP_NUM_THREADS": "1",
        "DVC_EXP_NAME": "exp-registry",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    for git in (["init", "-q"], ["add", "params.yaml"], ["commit", "-qm", "params"]):
        subprocess.run(["git", *git], cwd=tmp_path, env=env, check=True)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.strip()
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "stages" / "evaluate.py"),
            "--params",
            "params.yaml",
            "--model",
            str(model),
            "--record",
            "record.json",
            "--test",
            str(tiny_processed / "test.pt"),
            "--reports",
            "reports",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    version = registry.version_of_run("digits", report["mlflow_run_id"])
    assert f"registered as digits version {version.version}" in done.stdout
    assert version.tags["test_accuracy"] == str(report["test"]["accuracy"])
    assert version.tags["dvc_exp_name"] == "exp-registry" and version.tags["git_commit"] == commit
    assert registry.metrics_tree(registry.run_metrics(version.run_id)) == {"test": report["test"]}


LOOSE = {
    "metrics": {"test.accuracy": {"better": "higher", "abs_tolerance": 0.05}}
}  # the gate lets noise and more through


@pytest.fixture
def champion(mlflow_store) -> registry.ModelVersion:
    """Version 1, champion: the first 1,900 of 2,000 test digits right."""
    version = register("digits", report_test(0.95), 0, right(1_900))
    registry.set_alias("digits", registry.CHAMPION, version.version)
    return version


def test_the_same_model_with_another_seed_is_level_within_noise_and_keeps_the_champion(champion, rules, capsys):
    reseeded = right(1_900, *range(1_900, 1_912)) & ~right(10)  # 10 digits lost, 12 others won: 0.9510
    candidate = register("digits", report_test(0.951), 1, reseeded)
    capsys.readouterr()  # MLflow\'s own lines about the registration
    code, out, err = promote_cli(capsys, rules, "--run-id", candidate.run_id)
    assert code == 1 and out == ""
    assert err.strip() == (
        f"mnist-mlp promote: error: refused: digits version 2 (run {candidate.run_id}) is level within "
        "noise: keeping version 1 (12 digits right only in the candidate, 10 only in version 1: +2 digits "
        f"(+0.10 points, 95 % {promote_stats_interval(reseeded, right(1_900))}), exact McNemar p = 0.832); "
        "--allow-level promotes a level candidate"
    )
    assert registry.alias_version("digits", registry.CHAMPION).version == "1"
    # asked for: it moves, and the line says on what grounds
    code, out, _ = promote_cli(capsys, rules, "--run-id", candidate.run_id, "--allow-level")
    assert code == 0 and "-> version 2" in out and "level within noise, promoted by --allow-level: 12 digits" in out
    assert registry.alias_version("digits", registry.CHAMPION).version == "2"


def promote_stats_interval(first: np.ndarray, second: np.ndarray) -> str:
    from mnist_mlp.verdicts import stats

    return stats.paired(first, second).difference.points()


def test_a_candidate_worse_beyond_noise_is_refused_though_the_gate_lets_it_through(champion, tmp_path, capsys):
    loose = tmp_path / "loose.yaml"
    loose.write_text(yaml.safe_dump(LOOSE))
    candidate = register("digits", report_test(0.935), 1, right(1_870))  # 30 digits fewer, within the loose tolerance
    capsys.readouterr()  # MLflow\'s own lines about the registration
    code, _, err = promote_cli(capsys, loose, "--run-id", candidate.run_id, "--allow-level")
    assert code == 1 and len(err.splitlines()) == 1
    assert (
        f"refused: digits version 2 (run {candidate.run_id}) is worse beyond noise against digits@champion = version 1: "
        "0 digits right only in the candidate, 30 only in version 1: -30 digits (-1.50 points"
    ) in err
    assert registry.alias_version("digits", registry.CHAMPION).version == "1"


def test_a_candidate_better_beyond_noise_moves_the_alias(champion, rules, capsys):
    candidate = register("digits", report_test(0.97), 1, right(1_940))
    capsys.readouterr()  # MLflow\'s own lines about the registration
    code, out, _ = promote_cli(capsys, rules, "--run-id", candidate.run_id)
    assert (
        code == 0
        and "-> version 2" in out
        and "better beyond noise: 40 digits right only in the candidate, 0 only in version 1" in out
    )
    assert registry.alias_version("digits", registry.CHAMPION).version == "2"


@pytest.mark.bad_input
def test_a_forged_predictions_file_moves_nothing_the_models_themselves_are_run(champion, rules, capsys):
    """The store's predictions file claims every digit right; the candidate's model, run here, is level."""
    reseeded = right(1_900, *range(1_900, 1_912)) & ~right(10)
    candidate = register("digits", report_test(0.951), 1, reseeded)
    log_predictions(mlflow.MlflowClient(), candidate.run_id, right(2_000))  # overwritten by anyone who can log a run
    capsys.readouterr()  # MLflow\'s own lines about the registration
    code, _, err = promote_cli(capsys, rules, "--run-id", candidate.run_id)
    assert (
        code == 1 and "is level within noise: keeping version 1 (12 digits right only in the candidate, 10 only" in err
    )
    assert registry.alias_version("digits", registry.CHAMPION).version == "1"


@pytest.mark.bad_input
def test_a_model_that_does_not_score_its_runs_logged_accuracy_is_refused(champion, rules, capsys):
    """Metrics logged for another model (0.97) beside a model that gets 0.95 of the digits right here."""
    candidate = register("digits", report_test(0.97), 1, right(1_900))
    capsys.readouterr()
    code, out, err = promote_cli(capsys, rules, "--run-id", candidate.run_id)
    assert (code, out) == (1, "") and len(err.splitlines()) == 1
    assert (
        f"refused: digits version 2 (run {candidate.run_id})'s model scores 0.9500 on " in err
        and "not its run's logged test accuracy 0.9700: those metrics are not this model's on this test split" in err
    )
    assert registry.alias_version("digits", registry.CHAMPION).version == "1"


def test_a_champion_that_moved_while_a_promote_judged_is_not_overwritten(champion, rules, capsys, monkeypatch):
    """Two promotes at once: the one that judged against the old champion is refused, never kept for being later."""
    from mnist_mlp.verdicts import promote

    better, best = (
        register("digits", report_test(0.97), 1, right(1_940)),
        register("digits", report_test(0.98), 2, right(1_960)),
    )
    judged = promote._judged

    def meanwhile(*args, **kwargs):  # another promote moves the alias to `best` while this one judges `better`
        registry.set_alias("digits", registry.CHAMPION, best.version)
        return judged(*args, **kwargs)

    monkeypatch.setattr(promote, "_judged", meanwhile)
    capsys.readouterr()
    code, _, err = promote_cli(capsys, rules, "--run-id", better.run_id)
    assert (
        code == 1
        and (
            f"refused: digits@champion moved to version 3 while digits version 2 (run {better.run_id}) was "
            "judged against digits@champion = version 1; run promote again"
        )
        in err
    )
    assert registry.alias_version("digits", registry.CHAMPION).version == "3"


@pytest.mark.bad_input
def test_without_a_local_test_split_a_champion_is_not_challenged(champion, rules, tmp_path, capsys):
    candidate = register("digits", report_test(0.97), 1, right(1_940))
    capsys.readouterr()
    code, _, err = cli_in_process(
        [
            "promote",
            "--model",
            "digits",
            "--rules",
            str(rules),
            "--test",
            str(tmp_path / "none.pt"),
            "--run-id",
            candidate.run_id,
        ],
        capsys,
    )
    assert code == 1 and "no local test split to run both models on (data/processed/test.pt" in err
    assert registry.alias_version("digits", registry.CHAMPION).version == "1"
