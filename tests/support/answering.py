"""Real models whose answers on a test split are known in advance, for verdicts that run the models themselves.

Each model is a genuine PixelClassifier (MLP 784-10-10, ReLU) that answers with the brightest of ten pixels of
its own block: model b reads pixels 10*b ... 10*b + 9. A test split built by `AnswerSheet.split` lights, in every
digit image, pixel 10*b + (what model b should answer), so each model's answers are exactly the planted ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mnist_mlp import files
from mnist_mlp.core.model import MLP, PixelClassifier
from support.predictions import LABELS

BLOCK = 10
BLOCKS = 784 // BLOCK


def answering_classifier(block: int) -> PixelClassifier:
    """The classifier that answers with the brightest pixel of block `block` (pixels in [0, 1], no normalization)."""
    mlp = MLP([BLOCK], "relu", 0.0)
    first, last = mlp.layers[0], mlp.layers[-1]
    with torch.no_grad():
        for weight in mlp.parameters():
            weight.zero_()
        first.weight[torch.arange(BLOCK), block * BLOCK + torch.arange(BLOCK)] = 1.0  # hidden j = pixel 10 b + j
        last.weight.copy_(torch.eye(BLOCK))  # logit k = hidden k
    return PixelClassifier(mlp, 0.0, 1.0).eval()


class AnswerSheet:
    """The planted answers of every model made so far, and the test split that makes them come true."""

    def __init__(self) -> None:
        self.answers: list[np.ndarray] = []

    def model(self, correct: np.ndarray) -> PixelClassifier:
        """A new model that gets exactly the digits `correct` marks right (a wrong answer: the next digit)."""
        if len(self.answers) == BLOCKS:
            raise ValueError(f"at most {BLOCKS} answering models share a test split")
        self.answers.append(np.where(correct, LABELS, (LABELS + 1) % 10))
        return answering_classifier(len(self.answers) - 1)

    def split(self, path: Path) -> Path:
        """data/processed/test.pt as preprocess writes it: uint8 images (N, 28, 28) lighting each model's answer."""
        images = torch.zeros(len(LABELS), 784, dtype=torch.uint8)
        for block, answers in enumerate(self.answers):
            images[torch.arange(len(LABELS)), block * BLOCK + torch.as_tensor(answers)] = 255
        labels = torch.as_tensor(LABELS, dtype=torch.int64)
        files.save_torch(
            path,
            {
                "images": images.reshape(-1, 28, 28),
                "labels": labels,
                "one_hot": torch.nn.functional.one_hot(labels, 10).float(),
                "mean": torch.tensor(0.0, dtype=torch.float64),
                "std": torch.tensor(1.0, dtype=torch.float64),
            },
        )
        return path
