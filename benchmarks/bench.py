"""Training benchmark: the lecture's loop vs the project's `fit` vs this machine's matmul bound.

`make bench` (= python benchmarks/bench.py) needs data/raw and data/processed (`dvc repro`) and
measures the default params (`Params()`, never the workspace's params.yaml). Each repeat measures,
interleaved: a lecture-loop epoch, two `train.fit` epochs, the rate of one training step's matmuls,
and the `fast` preset's time to 98.0 % test accuracy; ratios are taken within a repeat, then the
median. Impossible figures are re-measured; if they stay, the report says INVALID and why, exit 1.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median

import torch
from torch import nn
from torch.utils.benchmark import Timer

from mnist_mlp import files
from mnist_mlp.core.augment import describe
from mnist_mlp.core.determinism import deterministic
from mnist_mlp.core.model import INPUT_SIZE, MLP, NUM_CLASSES, architecture
from mnist_mlp.core.train import fit, resolve_device, seeded_model
from mnist_mlp.data.mnist import Split, load_split, normalize
from mnist_mlp.errors import UserError
from mnist_mlp.params import Params, TrainParams, apply_preset, flatten, preset_path
from mnist_mlp.project import run_cli

ROOT = Path(__file__).resolve().parents[1]
TARGET_ACCURACY = 0.98
PROJECT_EPOCHS = 2  # per repeat; their median
LECTURE_MEAN, LECTURE_STD = 0.1307, 0.3081  # the lecture's Normalize: MNIST's mean and std of pixel / 255
MIN_RATE_SHARE = 0.5  # a repeat's matmul rate under this share of the run's best: the machine was busy
MAX_SPREAD = 2.0  # a ratio's largest repeat over its smallest above this: the repeats disagree


@dataclass
class Repeat:
    lecture_epoch_s: float
    project_epoch_s: float  # median of this repeat's `fit` epochs (training pass + validation)
    matmul_flop_per_s: float  # one training step's matmuls: torch.utils.benchmark's median
    fast_to_target_s: float | None  # `fit` seconds until the test accuracy first reached the target
    fast_train_s: float
    fast_test_accuracy: float  # of the best-on-validation weights, which the train stage keeps
    augmented_epoch_s: float | None = None  # `project_epoch_s` with the `best` preset's train.augment on


@dataclass
class Result:
    device: str
    threads: int
    net: str
    batch_size: int
    epoch_flops: int  # matmuls of one `fit` epoch
    train_samples: int  # `fit` trains on these and validates on the rest of MNIST's training file
    lecture_samples: int  # the whole training file
    fast_preset: str
    stage_epochs: int
    repeats: list[Repeat]
    augment: str = ""  # the `best` preset's train.augment, as augment.describe writes it
    remeasured: int = 0
    problems: list[str] = field(default_factory=list)  # empty: valid
    mlflow_s: float | None = None  # the train stage's MLflow calls
    peak_rss_mib: float = 0.0
    load_average: tuple[float, float] = (0.0, 0.0)  # 1 min, before and after

    def speedups(self) -> list[float]:
        return [r.lecture_epoch_s / r.project_epoch_s for r in self.repeats]

    def ratios_to_bound(self) -> list[float]:
        return [r.project_epoch_s * r.matmul_flop_per_s / self.epoch_flops for r in self.repeats]

    def summary(self) -> dict:
        def of(name: str) -> float:
            return median(getattr(r, name) for r in self.repeats)

        fast = [r.fast_to_target_s for r in self.repeats]
        stage_s = None if self.mlflow_s is None else self.mlflow_s + self.stage_epochs * of("project_epoch_s")
        return {
            "valid": not self.problems,
            **{name: of(name) for name in ("lecture_epoch_s", "project_epoch_s", "matmul_flop_per_s", "fast_train_s")},
            "bound_epoch_s": self.epoch_flops / of("matmul_flop_per_s"),
            "speedup_vs_lecture": median(self.speedups()),
            "ratio_to_bound": median(self.ratios_to_bound()),
            "fast_to_target_s": None if None in fast else median(fast),
            "mlflow_share_of_stage": None if stage_s is None else self.mlflow_s / stage_s,
            **self.augment_cost(),
        }

    def augment_cost(self) -> dict:
        """What augmenting each training batch adds to a `fit` epoch: seconds and share (medians of the repeats)."""
        pairs = [(r.augmented_epoch_s, r.project_epoch_s) for r in self.repeats if r.augmented_epoch_s is not None]
        if not pairs:
            return {"augment_cost_s": None, "augment_cost_share": None}
        return {
            "augment_cost_s": median(a - p for a, p in pairs),
            "augment_cost_share": median(a / p - 1 for a, p in pairs),
        }


def problems(result: Result) -> list[tuple[int, str]]:
    """(index of the repeat to re-measure, why) for each figure that cannot be true."""
    found = []
    best = max(r.matmul_flop_per_s for r in result.repeats)
    for i, r in enumerate(result.repeats):
        if r.matmul_flop_per_s < MIN_RATE_SHARE * best:
            found.append(
                (
                    i,
                    f"repeat {i + 1}: matmuls at {r.matmul_flop_per_s / 1e9:.1f} GFLOP/s, under "
                    f"{MIN_RATE_SHARE:.0%} of this run's best ({best / 1e9:.1f})",
                )
            )
        bound = result.epoch_flops / r.matmul_flop_per_s  # the lecture's epoch has more matmuls than this, not fewer
        for loop, seconds in (("project's", r.project_epoch_s), ("lecture's", r.lecture_epoch_s)):
            if seconds < bound:
                found.append(
                    (
                        i,
                        f"repeat {i + 1}: the {loop} epoch ({seconds:.3f} s) is faster than "
                        f"the matmul bound ({bound:.3f} s)",
                    )
                )
    for name, values in (("speedup vs lecture", result.speedups()), ("ratio to bound", result.ratios_to_bound())):
        if max(values) > MAX_SPREAD * min(values):
            outlier = max(range(len(values)), key=lambda i: max(values[i] / median(values), median(values) / values[i]))
            found.append(
                (
                    outlier,
                    f"{name}: the repeats disagree ({', '.join(f'{v:.2f}' for v in values)}: "
                    f"largest over smallest above {MAX_SPREAD})",
                )
            )
    return found


def remeasure(result: Result, measure: Callable[[], Repeat], retries: int) -> None:
    """Re-measure the repeats behind impossible figures, at most `retries` rounds; record what stays."""
    for _ in range(retries):
        redo = sorted({index for index, _ in problems(result)})
        for index in redo:
            print(f"bench: re-measuring repeat {index + 1}", flush=True)
            result.repeats[index] = measure()
        result.remeasured += len(redo)
    result.problems = [reason for _, reason in problems(result)]


# --- what a repeat measures ---------------------------------------------------------------


def lecture_epoch(raw: Path, params: TrainParams, device: torch.device) -> float:
    """Seconds of a fresh model's first epoch in the lecture's loop, as written there: torchvision
    MNIST from the IDX files, a DataLoader, ToTensor + Normalize per sample, torch's default AdamW."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    class RawMNIST(datasets.MNIST):  # the IDX files of data/raw, not torchvision's <root>/MNIST/raw
        raw_folder = property(lambda self: self.root)

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((LECTURE_MEAN,), (LECTURE_STD,))])
    try:
        loader = DataLoader(RawMNIST(str(raw), transform=transform), batch_size=params.batch_size, shuffle=True)
    except RuntimeError:
        raise UserError(f"{raw}: the four MNIST IDX files are missing; run `dvc repro download` first") from None
    torch.manual_seed(params.seed)
    model = nn.Sequential(nn.Flatten(), MLP(params.hidden_sizes, params.activation, params.dropout)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=params.lr, total_steps=len(loader))
    started = time.perf_counter()
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)  # (B, 1, 28, 28), (B,)
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def step_matmuls(hidden_sizes: list[int], batch_size: int, device: torch.device) -> tuple[Callable[[], None], int, int]:
    """Exactly the matmuls of one training step on random operands; the matmul FLOPs per sample of the
    forward pass and of a training step (forward, weight gradients, input gradients but the first layer's)."""
    widths = [INPUT_SIZE, *hidden_sizes, NUM_CLASSES]
    shapes = list(zip(widths[:-1], widths[1:]))  # (in, out) per layer
    operands = [
        (
            torch.randn(n_out, n_in, device=device),
            torch.randn(batch_size, n_in, device=device),
            torch.randn(batch_size, n_out, device=device),
        )
        for n_in, n_out in shapes
    ]

    def run() -> None:
        for index, (w, x, g) in enumerate(operands):  # (out, in), (B, in), (B, out)
            x.mm(w.t())  # forward
            g.t().mm(x)  # weight gradient
            if index > 0:
                g.mm(w)  # input gradient

    forward = sum(2 * n_in * n_out for n_in, n_out in shapes)
    return run, forward, 2 * forward + sum(2 * n_in * n_out for n_in, n_out in shapes[1:])


def fast_run(train: Split, val: Split, test: Split, params: TrainParams, device: torch.device) -> tuple:
    """`fit` seconds (training + validation; test evaluations not counted) until the test accuracy first
    reaches the target (None: never), all of them, and the test accuracy of the kept weights."""
    model = seeded_model(params)
    x_test, y_test = normalize(test.images.to(device), train.normalization), test.labels.to(device)
    curve: list[tuple[float, float]] = []  # (fit seconds so far, test accuracy) per epoch

    def accuracy() -> float:
        model.eval()
        with torch.inference_mode():
            correct = float((model(x_test).argmax(dim=1) == y_test).float().mean())
        model.train()
        return correct

    def on_epoch(record: dict) -> None:
        curve.append(((curve[-1][0] if curve else 0.0) + record["seconds"], accuracy()))

    with deterministic(device):
        result = fit(model, train, val, params, device, on_epoch=on_epoch)
    model.load_state_dict(result.best_state)
    reached = next((seconds for seconds, acc in curve if acc >= TARGET_ACCURACY), None)
    return reached, curve[-1][0], accuracy()


def mlflow_seconds(params: Params, data: Path, root: Path) -> float:
    """Seconds of the train stage's tracking work (the splits' digests, a run with its params and datasets,
    a metrics batch per epoch, the summary) in the store of MLFLOW_TRACKING_URI, artifacts under `root`;
    creating the store is not counted."""
    from mnist_mlp.tracking import runs, store

    store.ensure_experiment(params.tracking.experiment, root)
    record = {
        "train_loss": 0.1,
        "train_accuracy": 0.9,
        "val_loss": 0.1,
        "val_accuracy": 0.9,
        "lr": 1e-3,
        "seconds": 2.0,
        "samples_per_s": 27500.0,
    }
    started = time.perf_counter()
    splits = {split: (data / f"{split}.pt", files.md5_of(data / f"{split}.pt")) for split in ("train", "val")}
    with runs.training_run(params.tracking.experiment, flatten(params), {"device": "cpu"}) as run:
        run.log_datasets(splits)
        for epoch in range(1, params.train.epochs + 1):
            run.log_epoch({**record, "epoch": epoch})
        run.log_metrics({"best_val_accuracy": 0.9, "best_epoch": 1, "train_seconds": 40.0})
    return time.perf_counter() - started


def run_benchmark(
    raw: Path, data: Path, repeats: int, retries: int, min_run_time: float, device_choice: str, with_mlflow: bool = True
) -> Result:
    params = Params()  # the defaults: a leftover experiment in params.yaml must not change the benchmark
    settings, fast = params.train, apply_preset(params, preset_path(ROOT, "fast")).train
    device = resolve_device(device_choice)
    train, val, test = (load_split(data / f"{name}.pt") for name in ("train", "val", "test"))
    run, forward_flops, step_flops = step_matmuls(settings.hidden_sizes, settings.batch_size, device)
    matmuls = Timer("run()", globals={"run": run}, num_threads=torch.get_num_threads())  # its default: one thread
    load_before = os.getloadavg()[0]

    project = settings.model_copy(update={"epochs": PROJECT_EPOCHS})
    deformations = apply_preset(params, ROOT / "params" / "best.yaml").train.augment
    # every measured epoch deformed (the preset's clean last epochs would leave these few undeformed)
    augmented = project.model_copy(update={"augment": deformations.model_copy(update={"last_clean_epochs": 0})})

    def measure() -> Repeat:
        lecture_s = lecture_epoch(raw, settings, device)
        with deterministic(device):  # as the train stage runs `fit`
            history = fit(seeded_model(project), train, val, project, device).history
            augmented_history = fit(seeded_model(augmented), train, val, augmented, device).history
        rate = settings.batch_size * step_flops / matmuls.blocked_autorange(min_run_time=min_run_time).median
        repeat = Repeat(
            lecture_s,
            median(r["seconds"] for r in history),
            rate,
            *fast_run(train, val, test, fast, device),
            augmented_epoch_s=median(r["seconds"] for r in augmented_history),
        )
        print(
            f"bench: lecture {lecture_s:.2f} s, project {repeat.project_epoch_s:.2f} s "
            f"({repeat.augmented_epoch_s:.2f} s augmented), "
            f"matmuls {rate / 1e9:.1f} GFLOP/s, fast {repeat.fast_train_s:.2f} s",
            flush=True,
        )
        return repeat

    result = Result(
        device=torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.machine()} CPU, {os.cpu_count()} cores",
        threads=torch.get_num_threads(),
        net=architecture(settings.hidden_sizes),
        batch_size=settings.batch_size,
        epoch_flops=len(train.labels) * step_flops + len(val.labels) * forward_flops,
        train_samples=len(train.labels),
        lecture_samples=len(train.labels) + len(val.labels),
        fast_preset=f"{architecture(fast.hidden_sizes)}, batch {fast.batch_size}, {fast.optimizer} {fast.schedule} "
        f"lr {fast.lr}, dropout {fast.dropout}, {fast.epochs} epochs",
        stage_epochs=settings.epochs,
        augment=describe(augmented.augment),
        repeats=[measure() for _ in range(repeats)],
    )
    remeasure(result, measure, retries)
    if with_mlflow:
        with tempfile.TemporaryDirectory(prefix="mnist-bench-") as store:
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"  # never the project's store
            result.mlflow_s = mlflow_seconds(params, data, Path(store))
    result.peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    result.load_average = (load_before, os.getloadavg()[0])
    return result


def markdown(result: Result) -> str:
    s, reps = result.summary(), result.repeats

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    def cells(label: str, lecture: float, project: float, rate: float, speedup: float, ratio: float, fast) -> list[str]:
        return [
            label,
            f"{lecture:.2f}",
            f"{project:.2f}",
            f"{result.epoch_flops / rate:.2f}",
            f"{rate / 1e9:.1f}",
            f"{speedup:.2f}x",
            f"{ratio:.2f}x",
            seconds(fast),
        ]

    rows = [
        cells(str(i), r.lecture_epoch_s, r.project_epoch_s, r.matmul_flop_per_s, speedup, ratio, r.fast_to_target_s)
        for i, (r, speedup, ratio) in enumerate(zip(reps, result.speedups(), result.ratios_to_bound()), 1)
    ]
    rows.append(
        [
            f"**{cell}**"
            for cell in cells(
                "median",
                s["lecture_epoch_s"],
                s["project_epoch_s"],
                s["matmul_flop_per_s"],
                s["speedup_vs_lecture"],
                s["ratio_to_bound"],
                s["fast_to_target_s"],
            )
        ]
    )
    invalid = [
        f"**INVALID** (after re-measuring {result.remeasured} repeats): these figures cannot be true; do not quote them.",
        "",
        *[f"- {problem}" for problem in result.problems],
        "",
    ]
    lines = [
        "# Training benchmark",
        "",
        *(invalid if result.problems else []),
        f"Device {result.device}, torch threads: {result.threads}; default params: net {result.net}, batch {result.batch_size}, fp32. "
        f"{len(reps)} interleaved repeats ({result.remeasured} re-measured), each ratio taken within a repeat. "
        f"Load average before/after: {result.load_average[0]:.2f} / {result.load_average[1]:.2f}.",
        "",
        "| repeat | lecture epoch s | project epoch s | matmul bound s | matmul GFLOP/s | project vs lecture "
        "| project vs bound | `fast`: 98% after s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *["| " + " | ".join(row) + " |" for row in rows],
        "",
        f"Lecture's loop (torchvision MNIST, DataLoader, ToTensor + Normalize per sample): "
        f"{result.lecture_samples / s['lecture_epoch_s']:,.0f} samples/s. Project's `train.fit` (training pass + validation): "
        f"{result.train_samples / s['project_epoch_s']:,.0f} samples/s. Bound: {result.epoch_flops / 1e9:.1f} GFLOP of matmuls "
        "per epoch at the rate measured on one training step's matmuls (torch.utils.benchmark, blocked_autorange).",
        "",
        f"`fast` preset ({result.fast_preset}): test accuracy {median(r.fast_test_accuracy for r in reps):.4f}, "
        f"{TARGET_ACCURACY:.1%} after {seconds(s['fast_to_target_s'])} s, whole training {s['fast_train_s']:.2f} s (medians; "
        "seconds in `fit`, test evaluations not counted; `-`: 98% not reached in every repeat).",
        "",
    ]
    if s["augment_cost_s"] is not None:
        lines += [
            f"Augmentation (the `best` preset's train.augment: {result.augment}; each training batch deformed on "
            f"the device): the default net's `fit` epoch takes {median(r.augmented_epoch_s for r in reps):.2f} s "
            f"instead of {s['project_epoch_s']:.2f} s, +{s['augment_cost_s']:.2f} s "
            f"({s['augment_cost_share']:+.0%}; medians of each repeat's difference).",
            "",
        ]
    if s["mlflow_share_of_stage"] is not None:
        lines.append(
            f"Train stage's MLflow work ({result.stage_epochs} epochs): {result.mlflow_s:.2f} s, "
            f"{s['mlflow_share_of_stage']:.1%} of that plus {result.stage_epochs} project epochs."
        )
    return "\n".join([*lines, f"Peak RSS of the benchmark process: {result.peak_rss_mib:,.0f} MiB.", ""])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw", type=Path, default=Path("data/raw"), help="the four IDX files (the lecture's loop)")
    parser.add_argument("--data", type=Path, default=Path("data/processed"), help="the preprocess stage's splits")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--retries", type=int, default=2, help="rounds of re-measuring impossible repeats")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds of matmuls per rate measurement")
    parser.add_argument("--no-mlflow", action="store_true", help="leave out the MLflow calls' share")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--out", type=Path, default=Path("reports"))
    args = parser.parse_args()
    if args.repeats < 1 or args.retries < 0 or args.min_run_time <= 0:
        raise UserError("expected --repeats >= 1, --retries >= 0 and --min-run-time > 0")

    result = run_benchmark(
        args.raw, args.data, args.repeats, args.retries, args.min_run_time, args.device, not args.no_mlflow
    )
    files.write_json(args.out / "benchmarks.json", {**asdict(result), "summary": result.summary()})
    files.write_text(args.out / "benchmarks.md", markdown(result))
    print(markdown(result))
    if result.problems:
        raise UserError(f"INVALID result (marked so in {args.out}/benchmarks.md): " + "; ".join(result.problems))


if __name__ == "__main__":
    run_cli("bench", main)
