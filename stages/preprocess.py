"""DVC stage `preprocess`: validation split, normalization statistics, cached tensors per split."""

import argparse

from mnist_mlp.data.mnist import preprocess
from mnist_mlp.files import one_unit
from mnist_mlp.params import check_unchanged, load_params
from mnist_mlp.project import run_cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--raw", default="data/raw")
    parser.add_argument("--out", default="data/processed")
    args = parser.parse_args()

    params = load_params(args.params)
    settings = params.preprocess
    with one_unit():  # the three splits replace the previous ones together, or not at all
        summary = preprocess(args.raw, args.out, settings.normalization, settings.val_size, settings.split_seed)
        check_unchanged(args.params, params, "preprocess")
    norm = summary["normalization"]
    print(f"preprocess: {norm['method']} normalization, mean {norm['mean']:.4f}, std {norm['std']:.4f}")
    print("preprocess: " + ", ".join(f"{split} {size}" for split, size in summary["sizes"].items()))


if __name__ == "__main__":
    run_cli("preprocess", main)
