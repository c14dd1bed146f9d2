"""core/determinism.py: deterministic kernels and a pinned thread count inside, the process's settings after."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import mnist_mlp
from mnist_mlp.core.determinism import deterministic, thread_count
from support.paths import ROOT

CPU = torch.device("cpu")


def settings() -> tuple:
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,
        torch.get_num_threads(),
    )


def test_deterministic_mode_is_restored_on_leaving():
    before = settings()
    with deterministic(CPU):
        assert torch.are_deterministic_algorithms_enabled()
    assert settings() == before
    with pytest.raises(RuntimeError), deterministic(CPU):
        raise RuntimeError("training failed")
    assert settings() == before


def test_the_thread_count_is_pinned_inside_and_restored_after():
    outside = torch.get_num_threads()
    torch.set_num_threads(2)  # not the pinned count: the tests run on one thread (OMP_NUM_THREADS=1)
    try:
        before = settings()
        for device in (CPU, torch.device("meta")):  # another device: threads still pinned, kernels left alone
            with deterministic(device, threads=1):
                assert torch.get_num_threads() == 1
            assert settings() == before
        with deterministic(CPU, threads=0):  # 0: torch's default, untouched
            assert torch.get_num_threads() == 2
            assert thread_count(0) == 2 and thread_count(1) == 1
        assert settings() == before
    finally:
        torch.set_num_threads(outside)


TRAIN_ONE_EPOCH = """
import hashlib, sys, torch
from mnist_mlp.core.train import seeded_model, train_best
from mnist_mlp.data.mnist import Normalization, Split
from mnist_mlp.params import TrainParams
generator = torch.Generator().manual_seed(0)
# as many digits as MNIST's training split, mostly blank pixels as MNIST's: smaller or denser data showed no
# thread dependence even without MKL's strict mode
images = torch.randint(0, 256, (55_000, 28, 28), dtype=torch.uint8, generator=generator)
images *= torch.rand(55_000, 28, 28, generator=generator) < 0.19
labels = torch.randint(0, 10, (55_000,), generator=generator)
stats = Normalization(0.13, 0.31)
train, val = Split(images, labels, stats), Split(images[:1000], labels[:1000], stats)
params = TrainParams(epochs=1, threads=int(sys.argv[1]), device="cpu")
model = seeded_model(params)
train_best(model, train, val, params, torch.device("cpu"))
print(hashlib.md5(b"".join(v.numpy().tobytes() for v in model.state_dict().values())).hexdigest())
"""


def _weights_md5(threads: int, mkl_cbwr: str) -> str:
    env = {**os.environ, "MKL_CBWR": mkl_cbwr, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_ONE_EPOCH, str(threads)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.slow  # four trainings of an epoch of 55,000 digits: 25 s
@pytest.mark.skipif(os.cpu_count() < 2, reason="needs two cores to train on two threads")
def test_the_weights_are_the_same_on_one_thread_and_on_two():
    """The package's MKL_CBWR (AUTO,STRICT: MKL's matrix multiplies independent of the thread count) makes the
    default net's weights the same on any thread count; the premise: in MKL's plain CNR mode (AUTO) they differ."""
    assert mnist_mlp.MKL_CBWR == "AUTO,STRICT"
    assert _weights_md5(1, mnist_mlp.MKL_CBWR) == _weights_md5(2, mnist_mlp.MKL_CBWR)
    assert _weights_md5(1, "AUTO") != _weights_md5(2, "AUTO")
