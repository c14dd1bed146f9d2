"""core/determinism.py: deterministic kernels and a pinned thread count inside, the process's settings after."""

from __future__ import annotations

import pytest
import torch

from mnist_mlp.core.determinism import deterministic, thread_count

CPU = torch.device("cpu")


def settings() -> tuple:
    return torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory, torch.get_num_threads()


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

