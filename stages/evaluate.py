"""DVC stage `evaluate`: test-set metrics, confusion matrix and figures, logged to the training run."""

import argparse
from pathlib import Path

import numpy as np
import torch

from mnist_mlp.core.checkpoint import load_checkpoint, read_training_record
from mnist_mlp.core.determinism import deterministic
from mnist_mlp.core.evaluate import confusion_figure, evaluate, misclassified_figure, summary_metrics
from mnist_mlp.data.mnist import load_split
from mnist_mlp.files import md5_of, one_unit, save_figure, write_csv, write_json
from mnist_mlp.params import check_unchanged, flatten, load_params, validate_params
from mnist_mlp.project import run_cli
from mnist_mlp.tracking import predictions as logged_predictions
from mnist_mlp.tracking import runs
from mnist_mlp.tracking.failures import store_failure
from mnist_mlp.tracking.registry import logged_metrics, register_run_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", default="models/model.pt")
    parser.add_argument("--record", default="reports/training_run.json", help="the train stage's run, to log into")
    parser.add_argument("--test", default="data/processed/test.pt")
    parser.add_argument("--reports", default="reports", type=Path)
    args = parser.parse_args()

    params = load_params(args.params)
    settings = params.evaluate
    checkpoint = load_checkpoint(args.model)
    record = read_training_record(args.record)
    trained = validate_params(checkpoint.params, source=f"{args.model} params")
    test = load_split(args.test)
    with deterministic(torch.device("cpu"), trained.train.threads):  # the loss's last bits depend on the thread count
        metrics, predictions = evaluate(checkpoint.model, test, settings.batch_size)
    labels = test.labels.numpy()

    figures = args.reports / "figures"
    # one unit: nothing is replaced until MLflow has the run and every output is written
    with one_unit(), runs.evaluation_run(record["mlflow_run_id"], trained.tracking.experiment, flatten(trained)) as run:
        save_figure(figures / "confusion_matrix.png", confusion_figure(metrics["confusion_matrix"]))
        save_figure(
            figures / "misclassified.png", misclassified_figure(test.images, labels, predictions, settings.gallery_size)
        )
        write_csv(
            args.reports / "predictions.csv",
            [{"actual": int(a), "predicted": int(p)} for a, p in zip(labels, predictions)],
        )
        run.log_datasets({"test": (Path(args.test), md5_of(args.test))})
        report = summary_metrics(metrics, {**checkpoint.info, **record}, run.run_id)
        run.log_metrics(logged_metrics(report["test"]))
        run.log_table([{"class": int(c), **row} for c, row in metrics["per_class"].items()], "per_class_metrics.json")
        run.log_files([figures / "confusion_matrix.png", figures / "misclassified.png"], "figures")
        run.log_files(
            [args.reports / "predictions.csv"], logged_predictions.ARTIFACT_FOLDER
        )  # for paired tests on the same digits
        model_uri = run.log_model(
            checkpoint.classifier(), test.images[:2].reshape(2, -1).numpy().astype(np.float32) / 255.0
        )
        version = register_run_model(
            run.run_id, model_uri, params.tracking.registered_model, {"test_accuracy": str(report["test"]["accuracy"])}
        )
        write_json(args.reports / "metrics.json", report)
        check_unchanged(args.params, params, "evaluate", "tracking")
    print(
        f"evaluate: test accuracy {report['test']['accuracy']:.4f}, loss {report['test']['loss']:.4f}; "
        f"MLflow run {run.run_id}; registered as {version.name} version {version.version}"
    )


if __name__ == "__main__":
    run_cli("evaluate", main, store_failure)
