"""Is training reproducible? Train the same short config twice, each in a fresh process, and compare.

The runs take the train stage's own path (seeded model, `fit`, best-on-validation weights,
test evaluation), so a source of randomness that slips into it fails this check. Each run
is a new interpreter: state left over in one process (RNG, caches, hash seeds) cannot make
two runs agree by accident. Both runs use the same number of CPU threads on purpose: a
different count changes float summation order (weights differ by up to ~5e-8 after one epoch).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from mnist_mlp.data import DataError, load_split
from mnist_mlp.errors import UserError
from mnist_mlp.params import TrainParams


class NotReproducible(UserError):
    """Two runs with the same params and seed differ; the message says where."""


@dataclass
class RunOutcome:
    test_accuracy: float
    test_loss: float
    state: dict[str, torch.Tensor]


def train_and_test(data_dir: str, params: TrainParams, threads: int) -> RunOutcome:
    """One training run as the train and evaluate stages do it, on CPU with `threads` threads."""
    from mnist_mlp.evaluate import evaluate
    from mnist_mlp.train import deterministic, fit, seeded_model

    torch.set_num_threads(threads)
    folder = Path(data_dir)
    train, val, test = (load_split(folder / f"{name}.pt") for name in ("train", "val", "test"))
    device = torch.device("cpu")
    model = seeded_model(params)
    with deterministic(device):
        result = fit(model, train, val, params, device)
    model.load_state_dict(result.best_state)
    metrics, _ = evaluate(model, test)
    return RunOutcome(metrics["accuracy"], metrics["loss"], result.best_state)


def in_fresh_process(data_dir: str, params: TrainParams, threads: int) -> RunOutcome:
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(train_and_test, data_dir, params, threads).result()


def differences(first: RunOutcome, second: RunOutcome) -> list[str]:
    """What differs between two runs, bit for bit; empty when they are identical."""
    found = []
    if first.test_accuracy != second.test_accuracy:
        found.append(f"test accuracy {first.test_accuracy!r} vs {second.test_accuracy!r}")
    if first.test_loss != second.test_loss:
        found.append(f"test loss {first.test_loss!r} vs {second.test_loss!r}")
    if first.state.keys() != second.state.keys():
        found.append(f"weight names {sorted(first.state)} vs {sorted(second.state)}")
        return found
    for name, tensor in first.state.items():
        other = second.state[name]
        if tensor.shape != other.shape:
            found.append(f"weights {name}: shape {tuple(tensor.shape)} vs {tuple(other.shape)}")
        elif not torch.equal(tensor, other):
            unequal = int((tensor != other).sum())
            largest = float((tensor - other).abs().max())
            found.append(f"weights {name}: {unequal} of {tensor.numel()} values differ, by up to {largest:.3g}")
    return found


def check_reproducible(data_dir: str | Path, params: TrainParams, threads: int = 1) -> RunOutcome:
    """Train twice; return the outcome when both runs are bit-identical, else raise NotReproducible."""
    params = params.model_copy(update={"device": "cpu"})
    for name in ("train", "val", "test"):
        if not (Path(data_dir) / f"{name}.pt").is_file():
            raise DataError(f"{Path(data_dir) / name}.pt: cached split not found; run `dvc repro preprocess` first")
    first = in_fresh_process(str(data_dir), params, threads)
    second = in_fresh_process(str(data_dir), params, threads)
    found = differences(first, second)
    if found:
        raise NotReproducible(
            f"two runs of the same config (seed {params.seed}, {threads} thread(s), data {data_dir}) differ:\n"
            + "\n".join(found)
        )
    return first
