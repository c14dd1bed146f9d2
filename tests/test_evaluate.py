"""evaluate.py: metrics on a hand-made confusion, predictions on a split, and the figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mnist_mlp.core.evaluate import (
    classification_metrics,
    confusion_figure,
    evaluate,
    misclassified_figure,
    summary_metrics,
)
from mnist_mlp.core.model import MLP
from mnist_mlp.data.mnist import load_split
from mnist_mlp.files import save_figure

# twelve digits: 0s all right, two 1s of which one is called 7, a 2 called 3, the rest right
LABELS = np.array([0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9])
PREDICTIONS = np.array([0, 0, 1, 7, 3, 3, 4, 5, 6, 7, 8, 9])


def test_metrics_of_a_known_confusion():
    metrics = classification_metrics(LABELS, PREDICTIONS)
    assert metrics["accuracy"] == pytest.approx(10 / 12)

    one, two, three, seven = (metrics["per_class"][c] for c in ("1", "2", "3", "7"))
    assert (one["precision"], one["recall"], one["support"]) == (1.0, 0.5, 2)
    assert one["f1"] == pytest.approx(2 / 3)
    assert (two["precision"], two["recall"], two["f1"], two["support"]) == (0.0, 0.0, 0.0, 1)
    assert (three["precision"], three["recall"]) == (0.5, 1.0)
    assert (seven["precision"], seven["recall"]) == (0.5, 1.0)
    assert seven["f1"] == pytest.approx(2 / 3)
    assert metrics["per_class"]["0"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}

    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 12
    # rows are the true digit, columns the prediction
    assert matrix[1, 7] == 1 and matrix[7, 1] == 0
    assert matrix[2, 3] == 1 and matrix[3, 2] == 0
    assert matrix[0, 0] == 2 and matrix.trace() == 10
    assert matrix.sum(axis=1).tolist() == [2, 2, 1, 1, 1, 1, 1, 1, 1, 1]


def test_a_class_absent_from_the_test_set_is_reported_with_zero_support():
    metrics = classification_metrics(np.array([0, 1]), np.array([0, 1]))
    assert metrics["per_class"]["5"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert len(metrics["per_class"]) == 10


def test_evaluate_a_model_on_a_cached_split(tiny_processed):
    test = load_split(tiny_processed / "test.pt")
    torch.manual_seed(0)
    metrics, predictions = evaluate(MLP([16]), test, batch_size=64)  # batches smaller than the split
    assert predictions.shape == (200,)
    assert metrics["accuracy"] == pytest.approx(float((predictions == test.labels.numpy()).mean()))
    assert metrics["loss"] > 0
    assert sum(row["support"] for row in metrics["per_class"].values()) == 200


def test_figures_are_written_as_png(tmp_path, tiny_processed):
    test = load_split(tiny_processed / "test.pt")
    labels = test.labels.numpy()
    predictions = labels.copy()
    predictions[[3, 10, 50]] = (predictions[[3, 10, 50]] + 1) % 10
    confusion = classification_metrics(labels, predictions)["confusion_matrix"]

    save_figure(tmp_path / "figures" / "confusion_matrix.png", confusion_figure(confusion))
    gallery = misclassified_figure(test.images, labels, predictions, limit=2)
    assert "2 shown of 3" in gallery.get_suptitle()
    save_figure(tmp_path / "figures" / "misclassified.png", gallery)
    # none wrong: still a (blank) figure, so the pipeline's plots always exist
    save_figure(tmp_path / "figures" / "none.png", misclassified_figure(test.images, labels, labels, limit=9))

    for name in ("confusion_matrix.png", "misclassified.png", "none.png"):
        path = tmp_path / "figures" / name
        assert path.stat().st_size > 1000
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 100
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "confusion_matrix.png",
        "misclassified.png",
        "none.png",
    ]


def test_summary_metrics_shape():
    metrics = {"loss": 0.1, **classification_metrics(LABELS, PREDICTIONS)}
    info = {"best_val_accuracy": 0.9, "best_epoch": 3, "epochs": 4, "train_seconds": 12.3456}
    report = summary_metrics(metrics, info, "abc123")
    assert report["mlflow_run_id"] == "abc123"
    assert report["test"]["accuracy"] == pytest.approx(10 / 12)
    assert report["test"]["per_class"]["1"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3)}
    assert report["training"] == {"best_val_accuracy": 0.9, "best_epoch": 3, "epochs": 4, "seconds": 12.35}
