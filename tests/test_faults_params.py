"""Bad params.yaml as a user meets it: every stage refuses it before any work, in one line per key."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import yaml

from support.faults import assert_one_clear_error, snapshot, stage_in_process
from support.params import tiny_params

STAGE_ARGS = {
    "download": ["--out", "data/raw"],
    "preprocess": ["--raw", "data/raw", "--out", "data/processed"],
    "train": ["--data", "data/processed", "--model", "models/model.pt", "--log", "reports/training_log.csv"],
    "evaluate": ["--model", "models/model.pt", "--test", "data/processed/test.pt", "--reports", "reports"],
}

# (section, key, value, what the one line must say)
BAD_VALUES = [
    ("train", "epochs", "ten", "invalid 'train.epochs' (got 'ten'): Input should be a valid integer"),
    ("train", "epochs", 2.5, "invalid 'train.epochs' (got 2.5): Input should be a valid integer"),
    ("train", "epochs", 0, "invalid 'train.epochs' (got 0): Input should be greater than 0; allowed: > 0"),
    ("train", "batch_size", -64, "invalid 'train.batch_size' (got -64): Input should be greater than 0"),
    ("train", "batch_size", True, "invalid 'train.batch_size' (got True): Input should be a valid integer"),
    ("train", "lr", 0, "invalid 'train.lr' (got 0.0): Input should be greater than 0; allowed: > 0"),
    ("train", "lr", -0.1, "invalid 'train.lr' (got -0.1): Input should be greater than 0"),
    ("train", "lr", "fast", "invalid 'train.lr' (got 'fast'): Input should be a valid number"),
    (
        "train",
        "dropout",
        1.0,
        "invalid 'train.dropout' (got 1.0): Input should be less than 1; allowed: >= 0.0 and < 1.0",
    ),
    ("train", "dropout", -0.1, "invalid 'train.dropout' (got -0.1): Input should be greater than or equal to 0"),
    ("train", "momentum", 1.5, "invalid 'train.momentum' (got 1.5): Input should be less than 1"),
    ("train", "hidden_sizes", [], "invalid 'train.hidden_sizes' (got []): List should have at least 1 item"),
    (
        "train",
        "hidden_sizes",
        [512, 0],
        "invalid 'train.hidden_sizes' (got [512, 0]): every hidden size must be a positive integer",
    ),
    (
        "train",
        "hidden_sizes",
        [-5],
        "invalid 'train.hidden_sizes' (got [-5]): every hidden size must be a positive integer",
    ),
    ("train", "hidden_sizes", 512, "invalid 'train.hidden_sizes' (got 512): Input should be a valid list"),
    (
        "train",
        "hidden_sizes",
        [512, "wide"],
        "invalid 'train.hidden_sizes' (got 'wide'): Input should be a valid integer",
    ),
    (
        "train",
        "activation",
        "relu6",
        "invalid 'train.activation' (got 'relu6'): Input should be 'relu', 'tanh', 'sigmoid', 'gelu' or 'leaky_relu'; allowed: relu, tanh, sigmoid, gelu, leaky_relu",
    ),
    ("train", "optimizer", "adamax", "allowed: sgd, rmsprop, adam, adamw"),
    ("train", "loss", "hinge", "invalid 'train.loss' (got 'hinge')"),
    ("train", "schedule", "step", "allowed: none, cosine, onecycle"),
    ("train", "device", "tpu", "invalid 'train.device' (got 'tpu'): Input should be 'auto', 'cpu' or 'cuda'"),
    ("preprocess", "normalization", "zscore", "allowed: standardize, max, tutorial"),
    ("preprocess", "val_size", 0, "invalid 'preprocess.val_size' (got 0): Input should be greater than or equal to 1"),
    (
        "evaluate",
        "gallery_size",
        1000,
        "invalid 'evaluate.gallery_size' (got 1000): Input should be less than or equal to 400",
    ),
    ("tracking", "experiment", "", "invalid 'tracking.experiment' (got ''): String should have at least 1 character"),
]

pytestmark = pytest.mark.bad_input


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Outputs of an earlier run that a refused run must leave as they were."""
    for relative in (
        "models/model.pt",
        "reports/training_log.csv",
        "reports/metrics.json",
        "data/raw/x",
        "data/processed/train.pt",
    ):
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"earlier {relative}\n")
    return tmp_path


def _refused(workdir: Path, stage: str, capsys, monkeypatch, *fragments: str) -> str:
    before = snapshot(workdir / "data", workdir / "models", workdir / "reports")
    outcome = stage_in_process(stage, ["--params", "params.yaml", *STAGE_ARGS[stage]], workdir, capsys, monkeypatch)
    line = assert_one_clear_error(outcome, stage, *fragments)
    assert snapshot(workdir / "data", workdir / "models", workdir / "reports") == before
    assert not (workdir / "mlflow.db").exists() and not (workdir / "mlruns").exists()
    return line


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"), BAD_VALUES, ids=[f"{s}.{k}={v!r}" for s, k, v, _ in BAD_VALUES]
)
def test_a_bad_value_is_one_line_naming_file_key_and_allowed(
    workdir, capsys, monkeypatch, section, key, value, expected
):
    tiny_params(workdir / "params.yaml", **{section: {key: value}})
    line = _refused(workdir, "train", capsys, monkeypatch, "params.yaml: ", expected)
    assert line.startswith("train: error: params.yaml: invalid ")


@pytest.mark.parametrize("stage", list(STAGE_ARGS))
def test_an_unknown_key_gets_a_did_you_mean_in_every_stage(workdir, capsys, monkeypatch, stage):
    params = yaml.safe_load(tiny_params(workdir / "params.yaml").read_text())
    params["train"]["dropuot"] = 0.3
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    _refused(
        workdir, stage, capsys, monkeypatch, "params.yaml: unknown key 'train.dropuot'; did you mean 'train.dropout'?"
    )


def test_an_unknown_section_gets_a_did_you_mean(workdir, capsys, monkeypatch):
    params = yaml.safe_load(tiny_params(workdir / "params.yaml").read_text())
    params["trian"] = params.pop("train")
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    _refused(workdir, "train", capsys, monkeypatch, "unknown key 'trian'; did you mean 'train'?")


def test_two_bad_keys_give_one_line_each(workdir, capsys, monkeypatch):
    tiny_params(workdir / "params.yaml", train={"lr": -1, "epochs": 0})
    before = snapshot(workdir / "models")
    outcome = stage_in_process("train", ["--params", "params.yaml"], workdir, capsys, monkeypatch)
    assert outcome.code == 1 and "Traceback" not in outcome.err
    lines = outcome.error_lines("train")
    assert [line.split("'")[1] for line in lines] == ["train.lr", "train.epochs"]
    assert snapshot(workdir / "models") == before


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train: [unclosed\n", "params.yaml: not valid YAML"),
        ("- just\n- a list\n", "params.yaml: expected a mapping of sections, got list"),
    ],
    ids=["yaml-syntax", "not-a-mapping"],
)
def test_a_malformed_params_file_is_named(workdir, capsys, monkeypatch, text, expected):
    (workdir / "params.yaml").write_text(text)
    outcome = stage_in_process("train", ["--params", "params.yaml"], workdir, capsys, monkeypatch)
    assert outcome.code == 1 and "Traceback" not in outcome.err
    assert outcome.error_lines("train")[0].startswith(f"train: error: {expected}")


def test_a_missing_params_file_is_named(workdir, capsys, monkeypatch):
    _refused(workdir, "train", capsys, monkeypatch, "params.yaml: params file not found")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_refused_not_silently_cpu(workdir, capsys, monkeypatch):
    tiny_params(workdir / "params.yaml", train={"device": "cuda"})
    _refused(
        workdir,
        "train",
        capsys,
        monkeypatch,
        "train.device is 'cuda' but no CUDA GPU is available; allowed here: auto, cpu",
    )


def test_a_mirror_with_a_password_in_params_is_refused_without_echoing_it(workdir, capsys, monkeypatch):
    # params.yaml is committed and copied into dvc.lock: credentials belong in $MNIST_MIRROR
    tiny_params(workdir / "params.yaml", download={"mirror": "https://alice:s3cret@mirror.example.com/mnist/"})
    line = _refused(
        workdir,
        "download",
        capsys,
        monkeypatch,
        "invalid 'download.mirror' (got 'https://mirror.example.com/mnist/')",
        "put it in $MNIST_MIRROR",
    )
    assert "s3cret" not in line and "alice" not in line


def test_close_stale_runs_refuses_negative_minutes(capsys):
    from mnist_mlp.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["close-stale-runs", "--older-than", "-5"])
    assert exited.value.code == 2
    assert "argument --older-than: '-5': expected minutes >= 0" in capsys.readouterr().err


ALIAS_BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n" for prev, name in zip("abcdefgh", "bcdefghi"))
    + "train: {lr: *i}\n"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (ALIAS_BOMB, "params.yaml: YAML aliases expand to more than 10000 values; write the values out"),
        ("a: &a [*a]\ntrain: {lr: *a}\n", "params.yaml: YAML aliases expand to more than 10000 values"),
        ("train: {seed: " + "1" * 5000 + "}\n", "params.yaml: not valid YAML (cannot read '1111"),
        ("train: {lr: 1" + "0" * 400 + "}\n", "params.yaml: invalid 'train.lr' (got 1000"),
        ("train:\n  lr: 0.1\n  lr: 0.2\n", "params.yaml: duplicate key 'lr' (train.lr) at line 3 (first at line 2)"),
    ],
    ids=["alias-bomb", "recursive-alias", "5000-digit-seed", "400-digit-lr", "duplicate-key"],
)
def test_hostile_yaml_is_one_line_within_seconds(workdir, capsys, monkeypatch, text, expected):
    assert len(text) < 6000
    (workdir / "params.yaml").write_text(text)
    started = time.monotonic()
    _refused(workdir, "train", capsys, monkeypatch, expected)
    assert time.monotonic() - started < 5
