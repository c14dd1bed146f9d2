"""Is training reproducible? Train the same short config twice, each in a fresh process, and compare.

The runs take the train stage's own path (seeded model, `fit`, best-on-validation weights,
test evaluation), so a source of randomness that slips into it fails this check. Each run
is a new interpreter: state left over in one process (RNG, caches, hash seeds) cannot make
two runs agree by accident. Each writes its files into a folder of another name, and the md5s of
the files must agree too (DVC's hashes rest on them). Both runs use train.threads CPU threads: a
different count changes float summation order (weights differ by up to ~5e-8 after one epoch).
"""

from __future__ import annotations

import multiprocessing
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from mnist_mlp.data.mnist import SPLITS, DataError, load_split
from mnist_mlp.errors import UserError
from mnist_mlp.files import md5_of
from mnist_mlp.params import Params


class NotReproducible(UserError):
    """Two runs with the same params and seed differ; the message says where."""


@dataclass
class RunOutcome:
    test_accuracy: float
    test_loss: float
    state: dict[str, torch.Tensor]
    file_md5s: dict[str, str]  # {output file name: md5}: the splits rebuilt from raw (when given), model.pt


def train_and_test(data_dir: str, params: Params, out_dir: str, raw_dir: str | None = None) -> RunOutcome:
    """One run as the stages do it, on CPU with train.threads threads: the splits rebuilt from `raw_dir`
    into `out_dir` (when given), training on `data_dir`'s splits, model.pt written into `out_dir`, the test."""
    from mnist_mlp.core.checkpoint import save_checkpoint
    from mnist_mlp.core.determinism import deterministic
    from mnist_mlp.core.evaluate import evaluate
    from mnist_mlp.core.train import seeded_model, train_best
    from mnist_mlp.data.mnist import preprocess

    out, settings, device = Path(out_dir), params.train, torch.device("cpu")
    if raw_dir is not None:
        preprocess(
            raw_dir, out, params.preprocess.normalization, params.preprocess.val_size, params.preprocess.split_seed
        )
    folder = Path(data_dir)
    train, val, test = (load_split(folder / f"{name}.pt") for name in SPLITS)
    model = seeded_model(settings)
    result, info = train_best(model, train, val, settings, device)
    with deterministic(device, settings.threads):  # the loss's last bits depend on the thread count
        metrics, _ = evaluate(model, test)
    save_checkpoint(out / "model.pt", model, train.normalization, params.model_dump(), info)
    names = [f"{name}.pt" for name in SPLITS] * (raw_dir is not None) + ["model.pt"]
    return RunOutcome(
        metrics["accuracy"], metrics["loss"], result.best_state, {name: md5_of(out / name) for name in names}
    )


def in_fresh_process(data_dir: str, params: Params, out_dir: str, raw_dir: str | None) -> RunOutcome:
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(train_and_test, data_dir, params, out_dir, raw_dir).result()


def differences(first: RunOutcome, second: RunOutcome) -> list[str]:
    """What differs between two runs, bit for bit; empty when they are identical."""
    found = []
    if first.test_accuracy != second.test_accuracy:
        found.append(f"test accuracy {first.test_accuracy!r} vs {second.test_accuracy!r}")
    if first.test_loss != second.test_loss:
        found.append(f"test loss {first.test_loss!r} vs {second.test_loss!r}")
    for name in sorted(first.file_md5s.keys() | second.file_md5s.keys()):
        if first.file_md5s.get(name) != second.file_md5s.get(name):
            found.append(f"{name}: md5 {first.file_md5s.get(name)} vs {second.file_md5s.get(name)}")
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


def check_reproducible(data_dir: str | Path, params: Params, raw_dir: str | Path | None = None) -> RunOutcome:
    """Run twice, each in a fresh process writing into its own differently named temp folder; return the
    outcome when both are bit-identical (weights, test figures, every output file's md5), else raise."""
    params = params.model_copy(update={"train": params.train.model_copy(update={"device": "cpu"})})
    for name in SPLITS:
        if not (Path(data_dir) / f"{name}.pt").is_file():
            raise DataError(f"{Path(data_dir) / name}.pt: cached split not found; run `dvc repro preprocess` first")
    raw = str(raw_dir) if raw_dir is not None else None
    # different folder names on purpose: a file whose bytes held its own path or a temp name would differ
    with tempfile.TemporaryDirectory(prefix="first-") as one, tempfile.TemporaryDirectory(prefix="second-run-") as two:
        first = in_fresh_process(str(data_dir), params, one, raw)
        second = in_fresh_process(str(data_dir), params, two, raw)
    found = differences(first, second)
    if found:
        raise NotReproducible(
            f"two runs of the same config (seed {params.train.seed}, {params.train.threads} thread(s), data {data_dir}) differ:\n"
            + "\n".join(found)
        )
    return first
