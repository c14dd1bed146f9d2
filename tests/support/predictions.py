"""Per-digit test predictions with known answers, logged as the evaluate stage logs them (evaluation/predictions.csv)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from mnist_mlp.tracking.predictions import ARTIFACT_FOLDER, HEADER

LABELS = np.arange(2_000) % 10  # the test digits' labels, 200 of each


def right(count: int, *also: int) -> np.ndarray:
    """Per test digit whether a model got it right: the first `count` right, plus the digits at `also`."""
    vector = np.zeros(len(LABELS), dtype=bool)
    vector[:count] = True
    vector[list(also)] = True
    return vector


def predictions_text(correct: np.ndarray) -> str:
    predicted = np.where(correct, LABELS, (LABELS + 1) % 10)  # a wrong answer: the next digit
    return f"{HEADER}\n" + "".join(f"{a},{p}\n" for a, p in zip(LABELS, predicted))


def log_predictions(client, run_id: str, correct: np.ndarray | None = None, text: str | None = None) -> None:
    """The predictions of `correct` into run `run_id` (or `text`, as someone else might log it)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "predictions.csv"
        path.write_text(text if text is not None else predictions_text(correct))
        client.log_artifact(run_id, str(path), ARTIFACT_FOLDER)
