"""Helpers of the fault and bad-input tests: run a stage as a user does, snapshot outputs.

`stage_in_process` runs a stage script exactly as `python stages/x.py` would (runpy,
`__main__`, argv, cwd) but in the test process, so a bad input costs no torch import;
`stage_command` is the command line to run it for real where signals or exit codes matter.
"""

from __future__ import annotations

import hashlib
import os
import re
import runpy
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from support.paths import BIN, ROOT

TEMP_FILE = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")  # mnist_mlp.files.atomic_path: .name.XXXX.tmp


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    def error_lines(self, name: str) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith(f"{name}: error: ")]


def stage_in_process(script: str, args: list[str], cwd: Path, capsys, monkeypatch) -> Outcome:
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [str(ROOT / "stages" / f"{script}.py"), *args])
    capsys.readouterr()
    code = 0
    try:
        runpy.run_path(str(ROOT / "stages" / f"{script}.py"), run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def stage_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "MNIST_OFFICIAL_MIRRORS": "none"}
    env.update(extra)
    return env


def stage_command(script: str, args: list[str]) -> list[str]:
    return [str(BIN / "python"), str(ROOT / "stages" / f"{script}.py"), *args]


def assert_one_clear_error(outcome: Outcome, name: str, *fragments: str) -> str:
    """Exit 1, exactly one `name: error: ...` line holding every fragment, no traceback."""
    assert outcome.code == 1, (outcome.code, outcome.out, outcome.err)
    assert "Traceback" not in outcome.err, outcome.err
    lines = outcome.error_lines(name)
    assert len(lines) == 1, outcome.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def snapshot(*folders: Path) -> dict[str, str]:
    """{path: md5} of every file under the folders (temp files included: none may appear)."""
    sums = {}
    for folder in folders:
        paths = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
        for path in paths:
            sums[str(path)] = hashlib.md5(path.read_bytes()).hexdigest()
    return sums


def temp_leftovers(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.exists() for p in folder.rglob("*") if TEMP_FILE.match(p.name)]


def mlflow_runs(tracking_uri: str, experiment: str = "mnist-mlp") -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def fresh_store(empty_mlflow_db: Path, into: Path) -> str:
    """A tracking URI on a copy of the session's migrated, empty SQLite store (fixture `empty_mlflow_db`:
    creating the schema takes seconds) in the folder `into`."""
    into.mkdir(parents=True, exist_ok=True)
    shutil.copy(empty_mlflow_db, into / "mlflow.db")
    return f"sqlite:///{into / 'mlflow.db'}"
