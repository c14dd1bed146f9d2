"""The local test split as the verdicts read it: a model from a shared store is judged on these digits, never on a
predictions file someone logged."""

from __future__ import annotations

from pathlib import Path

from mnist_mlp.data.mnist import load_split
from mnist_mlp.tracking.predictions import LocalTest


def local_test(path: Path) -> LocalTest | None:
    """The split at `path` (pixels in [0, 1], labels); None before `dvc repro` made it."""
    if not path.is_file():
        return None
    split = load_split(path)
    pixels = split.images.reshape(len(split.images), -1).numpy().astype("float32") / 255.0  # (N, 784) in [0, 1]
    return LocalTest(pixels, split.labels.numpy(), str(path))
