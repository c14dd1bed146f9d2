"""What decides a CPU run's last bits, measured (docs/reproducibility.md). Run it in the venv after `dvc repro`:

    python benchmarks/kernels.py weights --threads 2      # md5 of the default net's weights after 1 epoch
    python benchmarks/kernels.py step                      # ms per training step, batch 128, one thread

Prefix either with the settings to try, e.g. `MKL_CBWR=AUTO ATEN_CPU_CAPABILITY=avx2`: MKL reads MKL_CBWR
and torch ATEN_CPU_CAPABILITY once, so each setting needs its own process.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time

import torch

from mnist_mlp.core.machine import cpu_kind
from mnist_mlp.core.train import make_optimizer, seeded_model, train_best, train_step
from mnist_mlp.data.mnist import load_split
from mnist_mlp.params import TrainParams


def settings() -> str:
    return f"{cpu_kind()}, MKL_CBWR={os.environ.get('MKL_CBWR')}"


def weights(threads: int, data: str) -> None:
    """One epoch of the default net on the real training split: the md5 of its weights."""
    params = TrainParams(epochs=1, threads=threads, device="cpu")
    train, val = load_split(f"{data}/train.pt"), load_split(f"{data}/val.pt")
    model = seeded_model(params)
    started = time.perf_counter()
    train_best(model, train, val, params, torch.device("cpu"))
    md5 = hashlib.md5(b"".join(tensor.numpy().tobytes() for tensor in model.state_dict().values())).hexdigest()
    print(f"{settings()}, {threads} thread(s): weights md5 {md5[:8]}, {time.perf_counter() - started:.2f} s")


def step(repeats: int = 5, steps: int = 100) -> None:
    """Milliseconds per training step of the default net on one thread: the best of `repeats` runs of `steps`."""
    torch.set_num_threads(1)
    params = TrainParams()
    model = seeded_model(params)
    optimizer = make_optimizer(model, params)
    inputs, labels = torch.randn(params.batch_size, 784), torch.randint(0, 10, (params.batch_size,))
    for _ in range(20):  # warm-up
        train_step(model, optimizer, None, inputs, labels, params)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            train_step(model, optimizer, None, inputs, labels, params)
        best = min(best, time.perf_counter() - started)
    print(f"{settings()}: {best / steps * 1000:.2f} ms per step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    weights_parser = commands.add_parser("weights", help="md5 of the weights after one epoch")
    weights_parser.add_argument("--threads", type=int, default=1)
    weights_parser.add_argument("--data", default="data/processed")
    commands.add_parser("step", help="ms per training step on one thread")
    args = parser.parse_args()
    weights(args.threads, args.data) if args.command == "weights" else step()


if __name__ == "__main__":
    main()
