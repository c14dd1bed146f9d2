"""Helpers shared by the app's endpoint and browser tests: small real models, a sweep of them in MLflow."""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from mnist_mlp.core.checkpoint import save_checkpoint
from mnist_mlp.core.model import MLP, PixelClassifier
from mnist_mlp.data.mnist import Normalization
from mnist_mlp.params import flatten, validate_params
from mnist_mlp.tracking import runs, store
from support.digit_images import training_set

NORMALIZATION = Normalization(mean=0.13, std=0.31)
PAD = 280  # the page's drawing pad, in pixels


@cache
def _font_digits() -> tuple[torch.Tensor, torch.Tensor]:
    pixels, labels = training_set()
    return torch.from_numpy(pixels), torch.from_numpy(labels)


def train_mlp(activation: str = "relu", dropout: float = 0.0, seed: int = 0) -> MLP:
    """A 784-64-10 MLP that reads digits rendered with Pillow's font (and drawn strokes: | is 1, a tall loop 0)."""
    torch.manual_seed(seed)
    pixels, labels = _font_digits()
    inputs = (pixels - NORMALIZATION.mean) / NORMALIZATION.std
    model = MLP([64], activation, dropout)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    return model.eval()


def save_model(path: Path, activation: str = "relu", dropout: float = 0.0) -> Path:
    """models/model.pt as the train stage writes it, for a small font-trained MLP."""
    params = validate_params({"train": {"hidden_sizes": [64], "activation": activation, "dropout": dropout}})
    save_checkpoint(
        path, train_mlp(activation, dropout), NORMALIZATION, params.model_dump(), {"epochs": 1, "device": "cpu"}
    )
    return path


def log_sweep(root: Path, sweep_id: str, settings: list[tuple[str, float]], experiment: str = "mnist-mlp") -> list[str]:
    """One FINISHED run per (activation, dropout), tagged `sweep_id`, named and logged as a sweep's are; run names.

    Artifacts go to mlartifacts beside the store's SQLite file (the experiment is created with that location if it is new).
    """
    store.ensure_experiment(experiment, root=root)
    names = []
    example = _font_digits()[0][:2].numpy()
    for activation, dropout in settings:
        name = f"{sweep_id}-{activation}-do{dropout:g}"
        params = validate_params(
            {
                "train": {"hidden_sizes": [64], "activation": activation, "dropout": dropout},
                "tracking": {"experiment": experiment, "sweep_id": sweep_id},
            }
        )
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("DVC_EXP_NAME", name)  # the run's name, as under `dvc exp run`
            with runs.training_run(experiment, flatten(params), {"sweep_id": sweep_id}) as run:
                classifier = PixelClassifier(train_mlp(activation, dropout), NORMALIZATION.mean, NORMALIZATION.std)
                run.log_model(classifier.eval(), example)
        names.append(name)
    return names


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def drawn(shape: str) -> Image.Image:
    """What the pad posts: black strokes on white, PAD x PAD; `one` a vertical stroke, `zero` a tall loop."""
    image = Image.new("RGB", (PAD, PAD), "white")
    draw = ImageDraw.Draw(image)
    if shape == "one":
        draw.line([(140, 40), (140, 240)], fill="black", width=18)
    elif shape == "zero":
        draw.ellipse([80, 40, 200, 240], outline="black", width=18)
    return image
