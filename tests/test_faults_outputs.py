"""A failed stage leaves every previous output as it was: its outputs are written as one unit
(all temp files first, then the renames), DVC does not delete them first (persist), and a full
disk is one line naming the file."""

from __future__ import annotations

import contextlib
import errno
import subprocess
from pathlib import Path

import pytest
import yaml

from mnist_mlp import files
from support.cli import run
from support.faults import assert_one_clear_error, fresh_store, snapshot, stage_in_process, temp_leftovers
from support.paths import BIN

STAGES = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())["stages"]


def test_a_unit_renames_all_its_outputs_or_none(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "sub" / "b.txt"
    files.write_text(first, "old a")
    with pytest.raises(RuntimeError), files.one_unit():
        files.write_text(first, "new a")
        assert first.read_text() == "old a" and files.staged_path(first).read_text() == "new a"
        raise RuntimeError("the second output failed")
    assert first.read_text() == "old a" and not second.exists() and temp_leftovers(tmp_path) == []
    with files.one_unit():
        files.write_text(first, "new a")
        files.write_text(second, "new b")
    assert (first.read_text(), second.read_text()) == ("new a", "new b") and temp_leftovers(tmp_path) == []


@pytest.mark.bad_input
def test_a_full_disk_is_one_line_naming_the_file(tmp_path):
    with pytest.raises(files.NoSpaceError, match=f"^no space left on device: {tmp_path / 'x.csv'}$"):
        with files.atomic_path(tmp_path / "x.csv"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert temp_leftovers(tmp_path) == []


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_output_of_every_stage_persists(stage):
    """DVC deletes a stage's outputs before running it unless they persist."""
    outputs = [*STAGES[stage].get("outs", []), *STAGES[stage].get("metrics", []), *STAGES[stage].get("plots", [])]
    assert outputs and all(isinstance(out, dict) and next(iter(out.values())).get("persist") for out in outputs)


@contextlib.contextmanager
def full_folder(path: Path):
    """`path` as a 64 KiB tmpfs filled to the last byte (needs root, as on the CI machine)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={path / 'filler'}", "bs=4k"], capture_output=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@pytest.mark.fault
@pytest.mark.parametrize("full", ["reports", "models"])
def test_a_full_disk_after_training_keeps_the_previous_model_and_log(
    trained_before, empty_mlflow_db, full, capsys, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", fresh_store(empty_mlflow_db, trained_before / "store"))
    target = {"reports": "full/training_log.csv", "models": "full/model.pt"}[full]
    args = ["--log", target] if full == "reports" else ["--model", target]
    before = snapshot(trained_before / "models", trained_before / "reports")
    with full_folder(trained_before / "full"):
        outcome = stage_in_process("train", args, trained_before, capsys, monkeypatch)
        assert temp_leftovers(trained_before / "full") == []
    assert_one_clear_error(outcome, "train", f"no space left on device: {target}")
    assert snapshot(trained_before / "models", trained_before / "reports") == before


@pytest.fixture
def built(project: Path) -> Path:
    run([str(BIN / "dvc"), "repro", "-q"], project)
    return project


def _outputs(project: Path) -> dict[str, str]:
    return snapshot(project / "data", project / "models", project / "reports")


def _failed_repro(project: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    result = run([str(BIN / "dvc"), "repro", *args], project, env=env, check=False)
    assert result.returncode != 0, result.stdout + result.stderr
    return result


def _set(project: Path, section: str, **values) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.slow
@pytest.mark.fault
def test_a_failed_download_and_preprocess_keep_their_previous_outputs(built):
    import os

    empty = built / "empty-mirror"
    empty.mkdir()
    env = {**os.environ, "MNIST_MIRROR": str(empty), "MNIST_OFFICIAL_MIRRORS": "none"}
    (built / "data/raw/train-labels-idx1-ubyte").write_bytes(b"damaged")  # so download has a file to fetch
    before = _outputs(built)
    result = _failed_repro(built, "-f", "-s", "download", env=env)
    assert "could not get a verified train-labels-idx1-ubyte" in result.stderr
    assert _outputs(built) == before and temp_leftovers(built / "data") == []
    run([str(BIN / "dvc"), "checkout", "-f", "data/raw"], built)
    before = _outputs(built)
    _set(built, "preprocess", val_size=59999)  # more than the tiny set's 600 digits: fails at run time
    result = _failed_repro(built, "preprocess")
    assert "val_size" in result.stderr
    assert _outputs(built) == before and temp_leftovers(built / "data") == []


@pytest.mark.slow
@pytest.mark.fault
def test_a_failed_evaluate_keeps_the_previous_metrics_and_figures(built):
    import os

    before = _outputs(built)
    _set(built, "evaluate", gallery_size=4)  # re-runs evaluate only
    result = _failed_repro(built, env={**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert "MLflow tracking server not answering (connection refused)" in result.stderr
    assert _outputs(built) == before and temp_leftovers(built / "reports") == []


@pytest.mark.bad_input
def test_params_changed_during_training_leave_no_outputs_for_dvc_to_record(
    trained_before, empty_mlflow_db, capsys, monkeypatch
):
    """As a second `dvc exp run -S train.dropout=0.5` does, which DVC's lock refuses only after writing params.yaml."""
    from mnist_mlp.core import train as training

    monkeypatch.setenv("MLFLOW_TRACKING_URI", fresh_store(empty_mlflow_db, trained_before / "store"))
    real_fit = training.fit

    def fit_while_another_run_writes_params(*args, **kwargs):
        params = yaml.safe_load((trained_before / "params.yaml").read_text())
        params["train"]["dropout"] = 0.5
        (trained_before / "params.yaml").write_text(yaml.safe_dump(params))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(training, "fit", fit_while_another_run_writes_params)
    before = snapshot(trained_before / "models", trained_before / "reports")
    outcome = stage_in_process("train", [], trained_before, capsys, monkeypatch)
    assert_one_clear_error(
        outcome,
        "train",
        "params.yaml changed while this stage ran (train.dropout 0.2 -> 0.5)",
        "no output was replaced",
    )
    assert snapshot(trained_before / "models", trained_before / "reports") == before
