"""Shared fixtures: tiny MNIST-format data written by the tests, and a throwaway project repo.

No test touches the network or ../shared: the data here is synthetic but in the real
IDX format, so every parser, stage and pipeline path runs for real.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Small and fast, but the same code paths as the real defaults.
TINY_PARAMS = {
    "preprocess": {"val_size": 100},
    "train": {"hidden_sizes": [32], "epochs": 2, "batch_size": 64, "lr": 0.01},
    "evaluate": {"gallery_size": 9},
}
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


@pytest.fixture
def tiny_mirror(tmp_path: Path) -> Path:
    return write_tiny_mnist(tmp_path / "mirror")


@pytest.fixture
def tiny_raw(tmp_path: Path) -> Path:
    """data/raw as the download stage leaves it: the four files uncompressed."""
    return write_tiny_mnist(tmp_path / "raw", compress=False)


def default_params() -> dict:
    """The defaults from the params schema: never the workspace's params.yaml, which an experiment may have changed."""
    from mnist_mlp.params import Params

    return Params().model_dump()


def merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def cli_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    """`mnist-mlp ...` in this process (a subprocess would spend seconds importing torch):
    (exit code, stdout, stderr)."""
    from mnist_mlp.cli import main

    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    """A fresh git+DVC copy of this project on tiny synthetic data, MLflow store in the temp folder.

    The synthetic files' md5s differ from MNIST's, so MNIST_CHECKSUMS names theirs (the same
    hook that lets a user train on another MNIST-format data set).
    """
    repo = tmp_path / "project"
    repo.mkdir()
    for name in ("dvc.yaml", "pyproject.toml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    for name in ("stages", "src", "params"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = merge(default_params(), TINY_PARAMS)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    mirror = write_tiny_mnist(tmp_path / "mirror")
    store = tmp_path / "store"
    store.mkdir()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "MNIST_MIRROR": str(mirror),
        "MNIST_OFFICIAL_MIRRORS": "none",  # a test never reaches the network
        "MNIST_CHECKSUMS": str(_checksum_file(mirror, tmp_path / "checksums.yaml")),
        "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
        "OMP_NUM_THREADS": "1",
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    for key in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        env.pop(key, None)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    run(["git", "init", "-q", "-b", "main"], repo, env)
    run([str(BIN / "dvc"), "init", "-q"], repo, env)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "project"], repo, env)
    return repo


def _checksum_file(mirror: Path, out: Path) -> Path:
    import hashlib

    sums = {}
    for path in sorted(mirror.glob("*.gz")):
        with gzip.open(path, "rb") as handle:
            sums[path.name.removesuffix(".gz")] = hashlib.md5(handle.read()).hexdigest()
    out.write_text(yaml.safe_dump(sums))
    return out


@pytest.fixture
def tiny_processed(tiny_raw: Path, tmp_path: Path) -> Path:
    """data/processed as the preprocess stage leaves it, from the tiny raw files (val 100)."""
    from mnist_mlp.data import preprocess

    out = tmp_path / "processed"
    preprocess(tiny_raw, out, "standardize", val_size=100, split_seed=0)
    return out


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """A new MLflow SQLite store with its schema migrated, made once: a migration takes 10-15 s here.

    Copy it where a test's store goes (`shutil.copy(empty_mlflow_db, store / "mlflow.db")`).
    """
    import mlflow

    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch, empty_mlflow_db: Path) -> str:
    """MLFLOW_TRACKING_URI at a fresh SQLite store in the temp folder; this process's MLflow state reset after."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    shutil.copy(empty_mlflow_db, tmp_path / "store" / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for key in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(key, raising=False)
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run("FAILED")
    mlflow.set_tracking_uri(None)
