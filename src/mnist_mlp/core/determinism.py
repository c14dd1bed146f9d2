"""What fixes a run's floats besides params and seed: deterministic kernels, on a pinned CPU thread count.

With MKL's strict mode (mnist_mlp.MKL_CBWR) the count no longer changes the weights; it is pinned all the same,
so that a run's seconds are those of the count it records.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def deterministic(device: torch.device, threads: int = 0) -> Iterator[None]:
    """Deterministic kernels on the CPU and `threads` CPU threads (0: torch's default, every core) while
    inside, so that params + seed fix the weights bit for bit; restored after.

    Under MKL's strict mode another count gives the same weights; without it, MKL's matrix multiplies sum in
    another order on another count (docs/reproducibility.md).
    """
    default_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        if device.type != "cpu":
            yield
            return
        enabled, fill = (
            torch.are_deterministic_algorithms_enabled(),
            torch.utils.deterministic.fill_uninitialized_memory,
        )
        torch.use_deterministic_algorithms(True)
        # every kernel here writes what it allocates: NaN-filling new tensors would cost time, not determinism
        torch.utils.deterministic.fill_uninitialized_memory = False
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(enabled)
            torch.utils.deterministic.fill_uninitialized_memory = fill
    finally:
        torch.set_num_threads(default_threads)


def thread_count(threads: int) -> int:
    """The CPU threads `deterministic(device, threads)` trains on: `threads`, or torch's default when 0."""
    return threads or torch.get_num_threads()
