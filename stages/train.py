"""DVC stage `train`: fit the MLP from params.yaml, keep the best-on-validation weights.

Writes models/model.pt (weights, resolved params, normalization: the same bytes for the same
inputs), reports/training_run.json (its MLflow run id, seconds and what made it), the per-epoch log
reports/training_log.csv and a figure of the (augmented) training digits; the same numbers and
the figure go to one MLflow run.
"""

import argparse
import sys
from pathlib import Path

from mnist_mlp.core.augment import augmented_figure, describe, is_active
from mnist_mlp.core.checkpoint import save_checkpoint, write_training_record
from mnist_mlp.core.determinism import thread_count
from mnist_mlp.core.machine import made_by
from mnist_mlp.core.model import architecture, count_parameters
from mnist_mlp.core.train import format_epoch, resolve_device, seeded_model, train_best
from mnist_mlp.data.mnist import load_split
from mnist_mlp.files import md5_of, one_unit, save_figure, write_csv
from mnist_mlp.params import check_unchanged, flatten, load_params
from mnist_mlp.project import run_cli
from mnist_mlp.tracking import runs
from mnist_mlp.tracking.failures import store_failure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/processed", type=Path)
    parser.add_argument("--model", default="models/model.pt")
    parser.add_argument("--record", default="reports/training_run.json")
    parser.add_argument("--log", default="reports/training_log.csv")
    parser.add_argument("--augmented", default="reports/figures/augmented.png", type=Path)
    args = parser.parse_args()

    params = load_params(args.params)
    settings = params.train
    device = resolve_device(settings.device)
    train, val = load_split(args.data / "train.pt"), load_split(args.data / "val.pt")
    model = seeded_model(settings)
    print(
        f"train: {architecture(settings.hidden_sizes)} {settings.activation} MLP, {count_parameters(model):,} parameters, on {device}"
    )
    if is_active(settings.augment):
        print(f"train: augmented training batches: {describe(settings.augment)}")

    splits = {split: (args.data / f"{split}.pt", md5_of(args.data / f"{split}.pt")) for split in ("train", "val")}
    # the threads it trains on (train.threads, or torch's default when 0): seconds per epoch depend on them
    maker = made_by(device)  # the CPU kind and versions: what else decides the model's last bits
    tags = {
        "torch_threads": str(thread_count(settings.threads)),
        **{f"data_md5_{split}": md5 for split, (_, md5) in splits.items()},
        **{f"made_by.{key}": value for key, value in maker.items()},
        "device": str(device),
    }
    sweep = {"id": params.tracking.sweep_id, "base": params.tracking.sweep_base, "trial": params.tracking.trial}
    tags |= {f"sweep_{key}": str(value) for key, value in sweep.items() if value is not None}
    with runs.training_run(params.tracking.experiment, flatten(params), tags) as run:
        run.log_datasets(splits)

        def report(record: dict) -> None:
            run.log_epoch(record)
            print(f"train: {format_epoch(record, settings.epochs)}", flush=True)

        result, info = train_best(model, train, val, settings, device, on_epoch=report, progress=sys.stderr.isatty())
        run.log_metrics(
            {
                "best_val_accuracy": result.best_val_accuracy,
                "best_epoch": result.best_epoch,
                "train_seconds": result.seconds,
            }
        )
        # one unit after training: a failed run (a full disk too) leaves every previous output as it was
        with one_unit():
            save_checkpoint(args.model, model, train.normalization, params.model_dump(), info)
            write_training_record(args.record, run.run_id, result.seconds, maker)
            write_csv(args.log, result.history)
            save_figure(args.augmented, augmented_figure(train.images, train.labels, settings.augment, settings.seed))
            run.log_files([args.augmented], "figures")
            check_unchanged(args.params, params, "train", "tracking")
    print(
        f"train: best val accuracy {result.best_val_accuracy:.4f} at epoch {result.best_epoch}, "
        f"{result.seconds:.1f}s; MLflow run {run.run_id}"
    )


if __name__ == "__main__":
    run_cli("train", main, store_failure)
