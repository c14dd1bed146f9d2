"""data.py: IDX parsing, the validation split, normalization statistics, cached splits."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from mnist_mlp.data.mnist import (
    DataError,
    Normalization,
    load_split,
    normalize,
    one_hot,
    preprocess,
    read_idx,
    read_raw_split,
    split_train_val,
)
from mnist_mlp.files import md5_of
from support.mnist_files import RAW_NAMES, synthetic_digits, write_idx, write_tiny_mnist


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trips_images_and_labels(tmp_path, compress):
    images, labels = synthetic_digits(30, seed=3)
    image_file = write_idx(tmp_path / "images", images, compress)
    label_file = write_idx(tmp_path / "labels", labels, compress)
    assert image_file.suffix == (".gz" if compress else "")

    parsed = read_idx(image_file, expected_ndim=3)
    assert parsed.shape == (30, 28, 28) and parsed.dtype == np.uint8
    np.testing.assert_array_equal(parsed, images)
    np.testing.assert_array_equal(read_idx(label_file, expected_ndim=1), labels)


def test_read_raw_split_gives_uint8_images_and_int64_labels(tiny_raw):
    images, labels = read_raw_split(tiny_raw, "train")
    assert images.shape == (600, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (600,) and labels.dtype == torch.int64
    test_images, _ = read_raw_split(tiny_raw, "test")
    assert test_images.shape == (200, 28, 28)


def test_read_idx_rejects_bad_files(tmp_path):
    images, labels = synthetic_digits(5, seed=0)
    labels_file = write_idx(tmp_path / "labels", labels, compress=False)
    with pytest.raises(DataError, match="1 dimensions, expected 3"):
        read_idx(labels_file, expected_ndim=3)

    truncated = tmp_path / "truncated"
    truncated.write_bytes(write_idx(tmp_path / "whole", images, compress=False).read_bytes()[:-10])
    with pytest.raises(DataError, match=r"truncated\?"):
        read_idx(truncated, expected_ndim=3)

    not_idx = tmp_path / "not-idx"
    not_idx.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(DataError, match="bad IDX magic"):
        read_idx(not_idx, expected_ndim=3)

    corrupt = tmp_path / "corrupt.gz"
    corrupt.write_bytes(gzip.compress(b"x" * 100)[:20])
    with pytest.raises(DataError, match="corrupt gzip"):
        read_idx(corrupt, expected_ndim=3)

    with pytest.raises(DataError, match="file not found"):
        read_idx(tmp_path / "missing", expected_ndim=1)


def test_read_raw_split_rejects_mismatched_counts_and_labels(tmp_path):
    write_tiny_mnist(tmp_path, train_count=20, test_count=10, compress=False)
    write_idx(tmp_path / RAW_NAMES["test"][1], np.zeros(9, dtype=np.uint8), compress=False)
    with pytest.raises(DataError, match="10 images .* but 9 labels"):
        read_raw_split(tmp_path, "test")
    write_idx(tmp_path / RAW_NAMES["test"][1], np.full(10, 10, dtype=np.uint8), compress=False)
    with pytest.raises(DataError, match="label 10 found, expected 0..9"):
        read_raw_split(tmp_path, "test")


def test_standardize_uses_the_training_split_only(tiny_raw, tmp_path):
    images, labels = read_raw_split(tiny_raw, "train")
    (train_images, _), (val_images, _) = split_train_val(images, labels, val_size=100, seed=0)
    expected = train_images.double() / 255.0

    summary = preprocess(tiny_raw, tmp_path / "a", "standardize", val_size=100, split_seed=0)
    assert summary["normalization"]["mean"] == pytest.approx(float(expected.mean()))
    assert summary["normalization"]["std"] == pytest.approx(float(expected.std()))
    # and it is not the statistic of all 600 training digits
    assert summary["normalization"]["mean"] != pytest.approx(float((images.double() / 255.0).mean()), abs=1e-6)

    # turning every validation digit white must not move the statistics
    raw = read_idx(tiny_raw / RAW_NAMES["train"][0], expected_ndim=3).copy()
    _, (val_index, _) = split_train_val(torch.arange(600), torch.arange(600), val_size=100, seed=0)
    raw[val_index.numpy()] = 255
    brighter = tmp_path / "brighter"
    write_tiny_mnist(brighter, compress=False)
    write_idx(brighter / RAW_NAMES["train"][0], raw, compress=False)
    moved = preprocess(brighter, tmp_path / "b", "standardize", val_size=100, split_seed=0)
    assert moved["normalization"] == summary["normalization"]
    assert bool((load_split(tmp_path / "b" / "val.pt").images == 255).all())


def test_standardize_is_exact_whatever_the_thread_count():
    # pixels 0 and 255 in equal numbers: mean 0.5, unbiased variance 0.25 * n / (n - 1), exactly
    n = 2 * 28 * 28 * 3
    images = torch.tensor([0, 255] * (n // 2), dtype=torch.uint8).reshape(6, 28, 28)
    stats = Normalization.fit("standardize", images)
    assert stats.mean == 0.5 and stats.std == (0.25 * n / (n - 1)) ** 0.5
    threads = torch.get_num_threads()
    try:
        fits = set()
        for count in (1, 2):
            torch.set_num_threads(count)
            fits.add(
                Normalization.fit(
                    "standardize",
                    torch.randint(
                        0, 256, (2000, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
                    ),
                )
            )
        assert len(fits) == 1
    finally:
        torch.set_num_threads(threads)


def test_the_same_raw_files_give_byte_identical_splits_in_folders_of_any_name(tiny_raw, tmp_path):
    for folder in ("processed", "another name/.processed.tmp"):
        preprocess(tiny_raw, tmp_path / folder, "standardize", val_size=100, split_seed=0)
    for split in ("train.pt", "val.pt", "test.pt"):
        assert md5_of(tmp_path / "processed" / split) == md5_of(tmp_path / "another name/.processed.tmp" / split)


@pytest.mark.parametrize(("method", "mean", "std"), [("max", 0.0, 1.0), ("tutorial", 0.5, 0.5)])
def test_fixed_normalizations(method, mean, std):
    stats = Normalization.fit(method, torch.full((2, 28, 28), 7, dtype=torch.uint8))
    assert (stats.mean, stats.std) == (mean, std)
    pixels = torch.tensor([[[0, 255]]], dtype=torch.uint8)
    expected = torch.tensor([[(0.0 - mean) / std, (1.0 - mean) / std]])
    torch.testing.assert_close(normalize(pixels, stats), expected)


def test_unknown_normalization_is_refused():
    with pytest.raises(ValueError, match="allowed: standardize, max, tutorial"):
        Normalization.fit("zscore", torch.zeros((1, 28, 28), dtype=torch.uint8))


def test_normalize_flattens_to_784_float32():
    out = normalize(torch.zeros((3, 28, 28), dtype=torch.uint8), Normalization(0.0, 1.0))
    assert out.shape == (3, 784) and out.dtype == torch.float32


def test_one_hot():
    encoded = one_hot(torch.tensor([3, 0, 9]))
    assert encoded.shape == (3, 10) and encoded.dtype == torch.float32
    assert encoded.sum(dim=1).tolist() == [1.0, 1.0, 1.0]
    assert encoded.argmax(dim=1).tolist() == [3, 0, 9]


def test_validation_split_sizes_determinism_and_disjointness():
    images = torch.arange(600)  # stand-ins: each "image" is its own index
    labels = torch.arange(600) % 10
    (train_a, train_labels), (val_a, val_labels) = split_train_val(images, labels, val_size=100, seed=0)
    assert (len(train_a), len(val_a)) == (500, 100)
    assert set(train_a.tolist()).isdisjoint(val_a.tolist())
    assert sorted(train_a.tolist() + val_a.tolist()) == list(range(600))
    torch.testing.assert_close(train_labels, train_a % 10)  # labels stay with their images
    torch.testing.assert_close(val_labels, val_a % 10)

    (train_b, _), (val_b, _) = split_train_val(images, labels, val_size=100, seed=0)
    assert torch.equal(val_a, val_b) and torch.equal(train_a, train_b)
    (_, _), (val_c, _) = split_train_val(images, labels, val_size=100, seed=1)
    assert not torch.equal(val_a, val_c)


@pytest.mark.parametrize("val_size", [0, 600])
def test_validation_split_size_out_of_range(val_size):
    with pytest.raises(DataError, match="between 1 and 599"):
        split_train_val(torch.zeros(600), torch.zeros(600), val_size, seed=0)


def test_cached_splits_round_trip_with_weights_only(tiny_raw, tiny_processed):
    raw_images, raw_labels = read_raw_split(tiny_raw, "train")
    sizes = {}
    for name in ("train", "val", "test"):
        blob = torch.load(tiny_processed / f"{name}.pt", weights_only=True)
        assert set(blob) == {"images", "labels", "one_hot", "mean", "std"}
        split = load_split(tiny_processed / f"{name}.pt")
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (28, 28)
        assert split.labels.dtype == torch.int64
        torch.testing.assert_close(blob["one_hot"], one_hot(split.labels))
        torch.testing.assert_close(split.targets, blob["one_hot"])
        sizes[name] = len(split.labels)
    assert sizes == {"train": 500, "val": 100, "test": 200}

    (train_images, train_labels), _ = split_train_val(raw_images, raw_labels, val_size=100, seed=0)
    train = load_split(tiny_processed / "train.pt")
    assert torch.equal(train.images, train_images) and torch.equal(train.labels, train_labels)
    # every split carries the training statistics
    assert load_split(tiny_processed / "test.pt").normalization == train.normalization


def test_load_split_reports_missing_and_foreign_files(tmp_path):
    with pytest.raises(DataError, match="cached split not found; run the preprocess stage"):
        load_split(tmp_path / "train.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(DataError, match=r"missing \['images', 'labels', 'mean', 'std'\]"):
        load_split(foreign)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="not a cached split written by preprocess"):
        load_split(garbage)
