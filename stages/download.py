"""DVC stage `download`: the four MNIST files, md5-verified, uncompressed into data/raw/.

Sources, in order: $MNIST_MIRROR, else `download.mirror` in params.yaml (a folder or
URL with the files, gzip or raw), then torchvision's official mirrors ($MNIST_OFFICIAL_MIRRORS:
`none` skips them, a comma-separated list of URLs replaces them). $MNIST_CHECKSUMS
(a YAML of file name -> md5) replaces MNIST's canonical checksums for another MNIST-format set.
"""

import argparse
import os

from mnist_mlp.data.download import download_mnist, expected_files, official_sources, resolve_sources
from mnist_mlp.errors import redact
from mnist_mlp.files import one_unit
from mnist_mlp.params import load_params
from mnist_mlp.project import repo_root, run_cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="data/raw")
    args = parser.parse_args()

    params = load_params(args.params)
    official = official_sources(os.environ.get("MNIST_OFFICIAL_MIRRORS"))
    sources = resolve_sources(params.download.mirror, os.environ.get("MNIST_MIRROR"), repo_root(), official)
    print(f"download: sources in order: {', '.join(redact(s) for s in sources)}")
    with one_unit():  # the four files replace the previous ones together, or not at all
        checksums = download_mnist(args.out, sources, expected_files(os.environ.get("MNIST_CHECKSUMS")))
    for name, md5 in checksums.items():
        print(f"download: {args.out}/{name} md5 {md5} verified")


if __name__ == "__main__":
    run_cli("download", main)
