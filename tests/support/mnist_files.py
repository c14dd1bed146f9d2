"""Synthetic MNIST in the real IDX format: every parser, stage and pipeline path runs for real on it.

No test touches the network or real MNIST; the synthetic files' md5s differ from MNIST's, so
`write_checksums` writes the MNIST_CHECKSUMS file naming theirs (the hook that lets a user train
on another MNIST-format data set).
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import yaml

RAW_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """Write an unsigned-byte IDX file (magic 0x0000080N, big-endian dims), gzip by default."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    payload = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path = Path(str(path) + ".gz") if compress and not str(path).endswith(".gz") else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def synthetic_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 where class c lights a 6x6 block at a class-specific place, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(count, 28, 28), dtype=np.uint8)
    for index, label in enumerate(labels):
        row, col = 2 + 8 * (label // 4), 2 + 6 * (label % 4)
        images[index, row : row + 6, col : col + 6] = rng.integers(180, 256, size=(6, 6))
    return images, labels.astype(np.uint8)


def write_tiny_mnist(folder: Path, train_count: int = 600, test_count: int = 200, compress: bool = True) -> Path:
    """The four MNIST files, synthetic, in `folder` (a mirror the download stage can read)."""
    for split, count, seed in (("train", train_count, 0), ("test", test_count, 1)):
        images, labels = synthetic_digits(count, seed)
        write_idx(folder / RAW_NAMES[split][0], images, compress)
        write_idx(folder / RAW_NAMES[split][1], labels, compress)
    return folder


def write_checksums(mirror: Path, out: Path) -> Path:
    """MNIST_CHECKSUMS at `out` for the files of a mirror, gzipped or not: {name without .gz: md5 of the data}."""
    sums = {}
    for path in sorted(mirror.iterdir()):
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        sums[path.name.removesuffix(".gz")] = hashlib.md5(data).hexdigest()
    out.write_text(yaml.safe_dump(sums))
    return out
