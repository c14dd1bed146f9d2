"""Test-set evaluation: loss, accuracy, per-class metrics, confusion matrix and figures."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from mnist_mlp.core.model import MLP, evaluate_logits
from mnist_mlp.data.mnist import NUM_CLASSES, Split, normalize

CLASSES = list(range(NUM_CLASSES))


def predict(model: MLP, split: Split, batch_size: int = 10000) -> torch.Tensor:
    """Logits (N, 10) for a cached split, normalized with the split's own statistics."""
    return evaluate_logits(model, normalize(split.images, split.normalization), batch_size)


def classification_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict:
    """Accuracy, per-class precision/recall/F1/support and the 10x10 confusion matrix (rows = true)."""
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=CLASSES, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "per_class": {
            str(c): {
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
            }
            for c in CLASSES
        },
        "confusion_matrix": confusion_matrix(labels, predictions, labels=CLASSES).tolist(),
    }


def evaluate(model: MLP, split: Split, batch_size: int = 10000) -> tuple[dict, np.ndarray]:
    """(metrics incl. cross-entropy loss, predicted labels) on `split`."""
    logits = predict(model, split, batch_size)  # (N, 10)
    loss = float(torch.nn.functional.cross_entropy(logits, split.labels))
    predictions = logits.argmax(dim=1).numpy()
    metrics = {"loss": loss, **classification_metrics(split.labels.numpy(), predictions)}
    return metrics, predictions


def confusion_figure(matrix: list[list[int]]):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    figure, axes = plt.subplots(figsize=(7, 6))
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=CLASSES).plot(
        ax=axes, cmap="Blues", colorbar=True, values_format="d"
    )
    axes.set_title("Test confusion matrix (rows: true digit)")
    return figure


def misclassified_figure(images: torch.Tensor, labels: np.ndarray, predictions: np.ndarray, limit: int):
    """A gallery of the first `limit` misclassified digits, titled 'true → predicted'."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    wrong = np.flatnonzero(labels != predictions)[:limit]
    columns = max(1, min(9, len(wrong)))
    rows = max(1, int(np.ceil(len(wrong) / columns)))
    figure, grid = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.5 * rows), squeeze=False)
    for axes in grid.flat:
        axes.axis("off")
    for axes, index in zip(grid.flat, wrong):
        axes.imshow(images[index].numpy(), cmap="gray_r")
        axes.set_title(f"{labels[index]} → {predictions[index]}", fontsize=9, color="firebrick")
    figure.suptitle(
        f"Misclassified test digits (true → predicted), {len(wrong)} shown of {int((labels != predictions).sum())}"
    )
    return figure


def summary_metrics(metrics: dict, train_info: dict, run_id: str) -> dict:
    """reports/metrics.json: test metrics, the training summary, and the MLflow run they belong to."""
    return {
        "test": {
            "accuracy": metrics["accuracy"],
            "loss": metrics["loss"],
            "per_class": {
                c: {k: row[k] for k in ("precision", "recall", "f1")} for c, row in metrics["per_class"].items()
            },
        },
        # not "train": a metric named like a param (train.epochs) makes DVC prefix both columns
        "training": {
            "best_val_accuracy": train_info["best_val_accuracy"],
            "best_epoch": train_info["best_epoch"],
            "epochs": train_info["epochs"],
            "seconds": round(train_info["train_seconds"], 2),
        },
        "mlflow_run_id": run_id,
    }
