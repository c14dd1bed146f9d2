"""`mnist-mlp app`'s latency on the CPU: each model's forward pass on one image, and whole requests.

    python benchmarks/app_latency.py IMAGE [MODEL_URI ...] [--model models/model.pt] [--sweep ID] [--experiment NAME]

The models are those `mnist-mlp app` with the same arguments shows: the current model (--model),
then the models of a sweep (--sweep, default the latest) or the MODEL_URIs given. Each of 100 passes
(after 5 warm-up passes) preprocesses IMAGE and runs every model once, in turn, as a request does;
then as many whole requests go through the API (Flask's test client: multipart parsing,
preprocessing, every model, JSON out; no socket). Prints the median and 90th percentile of each
step, in milliseconds; a model that cannot be loaded, or no sweep, is an error (exit 1).
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mnist_mlp.project import run_cli

if TYPE_CHECKING:  # imported where used: torch takes seconds, not what --help should wait for
    from mnist_mlp.serving.app import Models

REPEATS, WARMUP = 100, 5


def _milliseconds(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return 1000 * (time.perf_counter() - start)


def _quantiles(samples: Sequence[float]) -> tuple[float, float]:
    """(median, 90th percentile)"""
    deciles = statistics.quantiles(samples, n=10, method="inclusive")
    return statistics.median(samples), deciles[-1]


@dataclass
class Measurement:
    """Milliseconds per pass over every model, as a request makes one; a sample per pass and step."""

    image: str
    threads: int
    preprocessing: list[float] = field(default_factory=list)  # decode + MNIST form
    models: dict[str, list[float]] = field(default_factory=dict)  # name -> one forward pass each
    titles: dict[str, str] = field(default_factory=dict)
    requests: list[float] = field(default_factory=list)  # POST /api/predict through Flask: every model, JSON out

    def text(self) -> str:
        from mnist_mlp.serving.app import CURRENT

        current = [pre + model for pre, model in zip(self.preprocessing, self.models[CURRENT])]
        everyone = [pre + sum(step) for pre, step in zip(self.preprocessing, zip(*self.models.values()))]
        rows = [("preprocessing (decode, MNIST form)", self.preprocessing)]
        rows += [(f"{name} ({self.titles[name]})", samples) for name, samples in self.models.items()]
        rows += [
            ("current model: preprocessing + forward", current),
            (f"all {len(self.models)} models: preprocessing + forwards", everyone),
            ("POST /api/predict, all models, JSON out", self.requests),
        ]
        width = max(len(label) for label, _ in rows)
        lines = [
            f"{self.image}: {len(self.requests)} passes on the CPU, {self.threads} torch thread(s); "
            f"milliseconds, median and 90th percentile"
        ]
        lines += [
            f"  {label:<{width}}  {f'{_quantiles(samples)[0]:.2f}':>7}  {f'{_quantiles(samples)[1]:.2f}':>7}"
            for label, samples in rows
        ]
        return "\n".join(lines)


def measure(models: Models, image: str | Path, repeats: int = REPEATS, warmup: int = WARMUP) -> Measurement:
    """Latency on `image`: each pass preprocesses it and runs every model once, as a request does;
    then as many whole requests through the API."""
    import torch

    from mnist_mlp.data.mnist import INPUT_SIZE
    from mnist_mlp.serving.app import AppError, create_app, upload_pixels

    path = Path(image)
    if not path.is_file():
        raise AppError(f"{path}: file not found; expected a PNG or JPEG of a digit")
    data = path.read_bytes()
    lineup = models.lineup(refresh=True)
    missing = [entry.error for entry in lineup.entries if entry.error]
    if missing or lineup.notice:
        raise AppError("\n".join([*missing, *([lineup.notice] if lineup.notice else [])]))
    batch = torch.from_numpy(upload_pixels(data, path.name).reshape(1, INPUT_SIZE))
    result = Measurement(
        str(path), torch.get_num_threads(), titles={entry.name: entry.title for entry in lineup.entries}
    )
    result.models = {entry.name: [] for entry in lineup.entries}
    with torch.no_grad():
        for repeat in range(warmup + repeats):
            preprocessing = _milliseconds(lambda: upload_pixels(data, path.name))
            forwards = {
                entry.name: _milliseconds(lambda entry=entry: entry.classifier(batch)) for entry in lineup.entries
            }
            if repeat >= warmup:
                result.preprocessing.append(preprocessing)
                for name, milliseconds in forwards.items():
                    result.models[name].append(milliseconds)
    client = create_app(models).test_client()

    def post():
        response = client.post("/api/predict", data={"image": (io.BytesIO(data), path.name)})
        if response.status_code != 200:
            raise AppError(f"POST /api/predict answered {response.status_code}: {response.get_json()['error']}")

    result.requests = [_milliseconds(post) for _ in range(warmup + repeats)][warmup:]
    return result


def _at_least(least: int) -> Callable[[str], int]:
    def count(text: str) -> int:
        if not text.isdigit() or int(text) < least:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number from {least}")
        return int(text)

    return count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="benchmarks/app_latency.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "image", type=Path, metavar="IMAGE", help="a PNG or JPEG of a digit, e.g. build/samples/0-black-on-white.png"
    )
    parser.add_argument(
        "uris",
        nargs="*",
        default=[],
        metavar="MODEL_URI",
        help="runs:/<run id>/model or models:/<name>@<alias> to measure beside the current model "
        "(default: the models of the latest sweep)",
    )
    parser.add_argument(
        "--model", default="models/model.pt", help="the current model: checkpoint or MLflow URI (default %(default)s)"
    )
    parser.add_argument("--sweep", metavar="ID", help="the sweep whose models are measured (default: the latest)")
    parser.add_argument(
        "--experiment", help="MLflow experiment of the sweeps (default: tracking.experiment in params.yaml)"
    )
    parser.add_argument("--repeats", type=_at_least(2), default=REPEATS, help="passes measured (default %(default)s)")
    parser.add_argument(
        "--warmup", type=_at_least(0), default=WARMUP, help="passes before them, not measured (default %(default)s)"
    )
    args = parser.parse_args(argv)

    def measured() -> None:
        from mnist_mlp.cli import configured_experiment
        from mnist_mlp.serving.app import Models

        models = Models(args.model, args.uris, configured_experiment(args.experiment), args.sweep)
        print(measure(models, args.image, args.repeats, args.warmup).text())

    run_cli("app_latency", measured)


if __name__ == "__main__":
    main()
