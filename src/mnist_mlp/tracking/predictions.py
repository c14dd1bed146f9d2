"""Per-digit test predictions: the evaluate stage logs reports/predictions.csv with each run; compare and
promote read them back for paired tests on the same digits.

Read back as untrusted input (anyone who can log a run can log this file): its size is checked before
it is downloaded, then every line is parsed as two digits; nothing else in it is used.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mnist_mlp.errors import UserError

ARTIFACT_FOLDER = "evaluation"
ARTIFACT = f"{ARTIFACT_FOLDER}/predictions.csv"
HEADER = "actual,predicted"
MAX_BYTES = 1_000_000  # 10,000 test digits take about 40 kB
DIGITS = frozenset("0123456789")


class PredictionsError(UserError, ValueError):
    """A predictions file that is not one the evaluate stage wrote; the message names it and what was expected."""


class LocalTest(NamedTuple):
    """The local test split (data/processed/test.pt, whose hash dvc.lock names): what a model is run on to judge it."""

    pixels: np.ndarray  # (digits, 784) float32 in [0, 1]
    labels: np.ndarray  # (digits,)
    source: str  # the file it came from


class Predictions(NamedTuple):
    actual: np.ndarray  # (digits,) the true labels, in the test set's order
    predicted: np.ndarray  # (digits,)

    @property
    def correct(self) -> np.ndarray:
        return self.actual == self.predicted


def parse(text: str, source: str) -> Predictions:
    """`actual,predicted` then one `d,d` line per test digit (0-9 each); one line naming `source` otherwise."""
    expected = f"expected '{HEADER}' and one line of two digits 0-9 per test digit, as the evaluate stage writes"
    lines = text.splitlines()
    if not lines or lines[0].strip() != HEADER or len(lines) < 2:
        raise PredictionsError(f"{source}: not a predictions file; {expected}")
    pairs = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.strip().split(",")
        if len(fields) != 2 or not all(
            len(field) == 1 and field in DIGITS for field in fields
        ):  # not str.isdigit: '٣' is one
            raise PredictionsError(f"{source}:{number}: {line[:40]!r} is not two digits; {expected}")
        pairs.append((int(fields[0]), int(fields[1])))
    table = np.asarray(pairs, dtype=np.int8)
    return Predictions(table[:, 0], table[:, 1])


def read(path: str | Path, source: str | None = None) -> Predictions:
    """The predictions file at `path`; errors name `source` (default: the path)."""
    path = Path(path)
    source = source or str(path)
    if not path.is_file():
        raise PredictionsError(f"{source}: not found; run `dvc repro evaluate` to write it")
    if path.stat().st_size > MAX_BYTES:
        raise PredictionsError(
            f"{source}: {path.stat().st_size:,} bytes, more than a predictions file ({MAX_BYTES:,} at most)"
        )
    try:
        return parse(path.read_text(encoding="utf-8"), source)
    except UnicodeDecodeError:
        raise PredictionsError(f"{source}: not UTF-8 text; expected the evaluate stage's predictions") from None


def logged(run_id: str) -> Predictions | None:
    """The predictions run `run_id` logged, None when it logged none (runs from before they were logged)."""
    from mlflow.exceptions import MlflowException

    from mnist_mlp.tracking.store import client, failure_line

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per run would bury the report
    store = client()
    try:
        listed = {item.path: item for item in store.list_artifacts(run_id, ARTIFACT_FOLDER)}
        item = listed.get(ARTIFACT)
        if item is None:
            return None
        if item.is_dir or (item.file_size or 0) > MAX_BYTES:
            raise PredictionsError(
                f"run {run_id}: {ARTIFACT} is {'a folder' if item.is_dir else f'{item.file_size:,} bytes'}, "
                f"not a predictions file ({MAX_BYTES:,} bytes at most)"
            )
        with tempfile.TemporaryDirectory(prefix="mnist-mlp-predictions-") as scratch:
            local = Path(store.download_artifacts(run_id, ARTIFACT, scratch))
            if local.is_symlink() or not local.is_file():
                raise PredictionsError(f"run {run_id}: {ARTIFACT} is not a regular file")
            return read(local, f"run {run_id}: {ARTIFACT}")
    except MlflowException as exc:
        raise PredictionsError(f"run {run_id}: cannot read {ARTIFACT} ({failure_line(exc)})") from None
