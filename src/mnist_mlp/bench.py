"""Side-by-side training benchmark: the lecture's loop, the project's loop, and the hardware bound.

`python -m mnist_mlp.bench` (or `make bench`) measures on this machine, in one run:

1. baseline: the lecture's loop, as written there: torchvision.datasets.MNIST read from the
   raw IDX files, a DataLoader, ToTensor + Normalize per sample, nn.Dropout, torch's default
   AdamW (same net, batch, lr, weight decay and schedule as the project's loop);
2. project: `mnist_mlp.train.fit` (one epoch = the 55,000 training digits + validation on 5,000);
3. bound: this machine's measured matmul FLOP/s x the matmul FLOPs of one epoch, counted
   exactly per layer (forward, weight gradients, input gradients but not the first layer's);
4. breakdown: where a step's time goes: `train.train_step` against the same step without the
   optimizer update, with dropout 0, without both, and the step's matmuls alone;
5. fast: the `fast` preset's wall time to reach 98.0% test accuracy;
6. stage: the default params' full train stage (a subprocess, MLflow into a temporary store),
   its peak RSS, and what the MLflow calls themselves cost.

Variants run interleaved, several times, and the median is reported, because a shared
machine's load changes by the second; ratios are taken within a repeat (or window) and their
median reported. The load average is recorded next to the numbers.
Results go to reports/benchmarks.json and reports/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from mnist_mlp import files
from mnist_mlp.data import RAW_FILES, Split, load_split, normalize
from mnist_mlp.errors import UserError
from mnist_mlp.model import INPUT_SIZE, NUM_CLASSES
from mnist_mlp.params import Params, TrainParams, apply_preset, load_params
from mnist_mlp.project import repo_root, run_cli

TARGET_ACCURACY = 0.98
# the lecture's Normalize constants: MNIST's mean and std of pixel / 255
LECTURE_MEAN, LECTURE_STD = 0.1307, 0.3081


class BenchError(UserError, RuntimeError):
    """The benchmark cannot run (missing data or preset)."""


# --- arithmetic ---------------------------------------------------------------------------


def layer_sizes(hidden_sizes: list[int]) -> list[tuple[int, int]]:
    widths = [INPUT_SIZE, *hidden_sizes, NUM_CLASSES]
    return list(zip(widths[:-1], widths[1:]))


def forward_flops_per_sample(hidden_sizes: list[int]) -> int:
    """Multiply-adds x 2 of the linear layers; bias adds and activations are not matmul work."""
    return sum(2 * fan_in * fan_out for fan_in, fan_out in layer_sizes(hidden_sizes))


def training_flops_per_sample(hidden_sizes: list[int]) -> int:
    """Forward + weight gradients + input gradients; the input (layer 1's) needs no gradient."""
    layers = layer_sizes(hidden_sizes)
    forward = forward_flops_per_sample(hidden_sizes)
    input_gradients = sum(2 * fan_in * fan_out for fan_in, fan_out in layers[1:])
    return 2 * forward + input_gradients


def epoch_flops(hidden_sizes: list[int], train_samples: int, val_samples: int) -> int:
    """One `fit` epoch: a training pass plus the validation forward pass."""
    return train_samples * training_flops_per_sample(hidden_sizes) + val_samples * forward_flops_per_sample(hidden_sizes)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_matmuls(hidden_sizes: list[int], batch_size: int, device: torch.device) -> Callable[[], None]:
    """A function running exactly the matmuls of one training step (shapes and transposes as
    autograd runs them) on random operands, and nothing else."""
    layers = layer_sizes(hidden_sizes)
    gen = torch.Generator(device="cpu").manual_seed(0)
    weights = [torch.randn(out, inp, generator=gen).to(device) for inp, out in layers]
    biases = [torch.randn(out, generator=gen).to(device) for _, out in layers]
    inputs = [torch.randn(batch_size, inp, generator=gen).to(device) for inp, _ in layers]
    grads = [torch.randn(batch_size, out, generator=gen).to(device) for _, out in layers]

    def run() -> None:
        for w, b, x in zip(weights, biases, inputs):
            torch.addmm(b, x, w.t())  # forward (B, in) -> (B, out)
        for index, (w, x, g) in enumerate(zip(weights, inputs, grads)):
            g.t().mm(x)  # weight gradient (out, in)
            if index > 0:
                g.mm(w)  # input gradient (B, in)

    return run


def matmul_rate(hidden_sizes: list[int], batch_size: int, device: torch.device, repeats: int = 5, calls: int = 50) -> dict:
    """FLOP/s of exactly the matmuls of one training step, and of the first layer's forward
    matmul alone, the largest and most efficient."""
    fan_in, fan_out = layer_sizes(hidden_sizes)[0]
    first_inputs = torch.randn(batch_size, fan_in, device=device)
    first_weight = torch.randn(fan_out, fan_in, device=device)

    def first_layer() -> None:
        torch.mm(first_inputs, first_weight.t())

    def rate(work: Callable[[], None], flops: int) -> float:
        for _ in range(5):
            work()
        samples = []
        for _ in range(repeats):
            _synchronize(device)
            started = time.perf_counter()
            for _ in range(calls):
                work()
            _synchronize(device)
            samples.append((time.perf_counter() - started) / calls)
        return flops / statistics.median(samples)

    return {
        "step_flop_per_s": rate(step_matmuls(hidden_sizes, batch_size, device), batch_size * training_flops_per_sample(hidden_sizes)),
        "first_layer_flop_per_s": rate(first_layer, 2 * batch_size * fan_in * fan_out),
        "first_layer_shape": f"{batch_size}x{fan_in}x{fan_out}",
    }


# --- where a step's time goes -------------------------------------------------------------

BREAKDOWN_VARIANTS = {
    "matmuls": "the step's matmuls alone (the bound)",
    "step": "the project's step (`train.train_step`)",
    "no_update": "the same without the optimizer update (forward, loss, backward)",
    "no_dropout": "the same step with dropout 0",
    "no_update_no_dropout": "without both",
}


def step_breakdown(train: Split, params: TrainParams, device: torch.device, rounds: int = 10, window: int = 20) -> dict:
    """Microseconds per step of the project's step and of the same step with parts taken away,
    run interleaved in windows of `window` steps, `rounds` times; medians, and the median of
    each round's ratio to the matmuls alone (robust to the machine's load changing)."""
    from mnist_mlp.train import compute_loss, make_optimizer, make_schedule, seeded_model, train_step

    x_train = normalize(train.images.to(device), train.normalization)  # (N, 784)
    y_train = train.labels.to(device)  # (N,)
    order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0)).to(device)
    batches = len(x_train) // params.batch_size

    def variant(dropout: float, update: bool) -> Callable[[int], None]:
        settings = params.model_copy(update={"dropout": dropout})
        model = seeded_model(settings, device).to(device).train()
        optimizer = make_optimizer(model, settings)
        schedule = make_schedule(optimizer, settings, total_steps=rounds * window * 2 + 100)

        def step(index: int) -> None:
            idx = order[(index % batches) * params.batch_size :][: params.batch_size]
            inputs, labels = x_train.index_select(0, idx), y_train.index_select(0, idx)  # (B, 784), (B,)
            if update:
                train_step(model, optimizer, schedule, inputs, labels, settings)
            else:
                loss = compute_loss(model(inputs), labels, settings.loss, settings.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()

        return step

    matmuls = step_matmuls(params.hidden_sizes, params.batch_size, device)
    steps: dict[str, Callable[[int], None]] = {
        "matmuls": lambda index: matmuls(),
        "step": variant(params.dropout, update=True),
        "no_update": variant(params.dropout, update=False),
        "no_dropout": variant(0.0, update=True),
        "no_update_no_dropout": variant(0.0, update=False),
    }
    micros: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(rounds + 1):  # round 0 warms up
        for name, step in steps.items():
            _synchronize(device)
            started = time.perf_counter()
            for index in range(window):
                step(round_ * window + index)
            _synchronize(device)
            if round_ > 0:
                micros[name].append((time.perf_counter() - started) / window * 1e6)
    return {
        name: {
            "what": BREAKDOWN_VARIANTS[name],
            "microseconds_per_step": median(micros[name]),
            "ratio_to_matmuls": median([a / b for a, b in zip(micros[name], micros["matmuls"])]),
        }
        for name in steps
    }


# --- the lecture's loop -------------------------------------------------------------------


@contextlib.contextmanager
def torchvision_root(raw_dir: Path) -> Iterator[Path]:
    """A temporary root in torchvision's layout (<root>/MNIST/raw/<IDX files>), linking data/raw."""
    names = [name for pair in RAW_FILES.values() for name in pair]
    missing = [name for name in names if not (raw_dir / name).is_file()]
    if missing:
        raise BenchError(f"{raw_dir}: missing {', '.join(missing)}; run `dvc repro download` first")
    with tempfile.TemporaryDirectory(prefix="mnist-torchvision-") as root:
        folder = Path(root) / "MNIST" / "raw"
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).symlink_to((raw_dir / name).resolve())
        yield Path(root)


def lecture_net(params: TrainParams) -> nn.Module:
    """The lecture's model, spelled out with torch's own modules (nn.Dropout, not the project's)."""
    layers: list[nn.Module] = [nn.Flatten()]
    for fan_in, fan_out in layer_sizes(params.hidden_sizes)[:-1]:
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        if params.dropout > 0:
            layers.append(nn.Dropout(params.dropout))
    layers.append(nn.Linear(params.hidden_sizes[-1], NUM_CLASSES))
    return nn.Sequential(*layers)


class LectureLoop:
    """One epoch at a time of the lecture's training loop; built once, so each epoch is timed alone."""

    def __init__(self, root: Path, params: TrainParams, device: torch.device, epochs: int):
        from torch.utils.data import DataLoader
        from torchvision import datasets, transforms

        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((LECTURE_MEAN,), (LECTURE_STD,))])
        dataset = datasets.MNIST(str(root), train=True, download=False, transform=transform)
        self.loader = DataLoader(dataset, batch_size=params.batch_size, shuffle=True)
        self.samples = len(dataset)
        self.device = device
        torch.manual_seed(params.seed)
        self.model = lecture_net(params).to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
        self.schedule = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=params.lr, total_steps=epochs * len(self.loader)
        )

    def epoch(self) -> float:
        """Seconds for one pass over the 60,000 training images."""
        self.model.train()
        deterministic = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(False)  # the lecture's code does not ask for it; `fit` does
        started = time.perf_counter()
        for images, labels in self.loader:
            images, labels = images.to(self.device), labels.to(self.device)  # (B, 1, 28, 28), (B,)
            logits = self.model(images)  # (B, 10)
            loss = nn.functional.cross_entropy(logits, labels)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.schedule.step()
        _synchronize(self.device)
        seconds = time.perf_counter() - started
        torch.use_deterministic_algorithms(deterministic)
        return seconds


# --- the project's loop -------------------------------------------------------------------


def project_epochs(train: Split, val: Split, params: TrainParams, device: torch.device) -> list[float]:
    """Per-epoch seconds of `fit` (training pass + validation), as its history records them."""
    from mnist_mlp.train import fit, seeded_model

    model = seeded_model(params, device)
    result = fit(model, train, val, params, device)
    return [record["seconds"] for record in result.history]


def time_to_accuracy(
    train: Split, val: Split, test: Split, params: TrainParams, device: torch.device, target: float = TARGET_ACCURACY
) -> dict:
    """Train with `params`; wall seconds from the call until the first epoch whose model reaches `target`
    on the test set (the test evaluations themselves are not counted), and the final figures."""
    from mnist_mlp.train import evaluate_logits, fit, seeded_model

    x_test = normalize(test.images.to(device), train.normalization)  # (T, 784)
    y_test = test.labels.to(device)
    model = seeded_model(params, device)
    curve: list[dict] = []
    not_training = 0.0
    started = time.perf_counter()

    def on_epoch(record: dict) -> None:
        nonlocal not_training
        _synchronize(device)
        reached = time.perf_counter() - started - not_training
        accuracy = float((evaluate_logits(model, x_test).argmax(dim=1) == y_test).float().mean())
        curve.append({"epoch": record["epoch"], "seconds": reached, "test_accuracy": accuracy})
        not_training = time.perf_counter() - started - reached

    result = fit(model, train, val, params, device, on_epoch=on_epoch)
    wall = time.perf_counter() - started - not_training
    model.load_state_dict(result.best_state)
    final = float((evaluate_logits(model, x_test).argmax(dim=1) == y_test).float().mean())
    first = next((point for point in curve if point["test_accuracy"] >= target), None)
    return {
        "train_seconds": wall,
        "seconds_to_target": first["seconds"] if first else None,
        "epoch_reaching_target": first["epoch"] if first else None,
        "test_accuracy": final,
        "best_epoch": result.best_epoch,
        "curve": curve,
    }


# --- the train stage and MLflow -----------------------------------------------------------


def train_stage(root: Path, params_file: Path, data_dir: Path, workdir: Path) -> dict:
    """Run stages/train.py as DVC does; wall seconds, its peak RSS and its test accuracy."""
    store = workdir / "mlflow.db"
    env = {
        **os.environ,
        "PYTHONPATH": str(root / "src"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{store}",
    }
    # the store's one-time schema creation is no part of a training run's cost
    subprocess.run(
        [sys.executable, "-m", "mnist_mlp.cli", "init-store"], cwd=root, env=env, check=True, capture_output=True
    )
    model_path, log_path, out_path = workdir / "model.pt", workdir / "training_log.csv", workdir / "stage.out"
    command = [sys.executable, str(root / "stages" / "train.py"), "--params", str(params_file),
               "--data", str(data_dir), "--model", str(model_path), "--log", str(log_path)]
    with open(out_path, "wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise BenchError(f"the train stage failed ({process.returncode}):\n{out_path.read_text()[-2000:]}")

    from mnist_mlp.checkpoint import load_checkpoint
    from mnist_mlp.evaluate import evaluate

    checkpoint = load_checkpoint(model_path)
    metrics, _ = evaluate(checkpoint.model, load_split(data_dir / "test.pt"))
    return {
        "seconds": seconds,
        "fit_seconds": checkpoint.info["train_seconds"],
        "peak_rss_mib": usage.ru_maxrss / 1024,  # Linux reports KiB
        "test_accuracy": metrics["accuracy"],
        "best_epoch": checkpoint.info["best_epoch"],
        "epochs": checkpoint.info["epochs"],
    }


def mlflow_costs(workdir: Path, params: Params, epochs: int, classifier: nn.Module, example) -> dict:
    """Seconds of the train stage's MLflow calls (run, params, one batch call per epoch, summary)
    and of the evaluate stage's model logging, against an already created store."""
    from mnist_mlp import tracking
    from mnist_mlp.params import flatten

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow-costs.db'}"
    try:
        tracking.ensure_experiment(params.tracking.experiment)
        record = {"epoch": 0, "train_loss": 0.1, "train_accuracy": 0.9, "val_loss": 0.1, "val_accuracy": 0.9,
                  "lr": 0.001, "seconds": 2.0, "samples_per_s": 27500.0}
        started = time.perf_counter()
        with tracking.training_run(params.tracking.experiment, flatten(params), {"device": "cpu"}) as run:
            for epoch in range(1, epochs + 1):
                run.log_epoch({**record, "epoch": epoch})
            run.log_metrics({"best_val_accuracy": 0.9, "best_epoch": 1, "train_seconds": 40.0})
        train_logging = time.perf_counter() - started
        started = time.perf_counter()
        with tracking.evaluation_run(run.run_id, params.tracking.experiment, flatten(params)) as evaluation:
            evaluation.log_model(classifier, example)
        model_logging = time.perf_counter() - started
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    return {"train_logging_seconds": train_logging, "model_logging_seconds": model_logging}


# --- the whole benchmark ------------------------------------------------------------------


def peak_memory(device: torch.device) -> dict:
    memory = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        memory["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return memory


def median(values: list[float]) -> float:
    return statistics.median(values)


def run_benchmark(
    raw_dir: Path,
    data_dir: Path,
    params: Params,
    fast: Optional[Params],
    repeats: int = 3,
    project_epochs_per_repeat: int = 2,
    stage_params_file: Optional[Path] = None,
    device_choice: str = "auto",
    log: Callable[[str], None] = print,
) -> dict:
    """Measure everything; return the report as a dict (see the module docstring)."""
    from mnist_mlp.train import resolve_device

    device = resolve_device(device_choice)
    settings = params.train.model_copy(update={"device": device.type})
    train, val = load_split(data_dir / "train.pt"), load_split(data_dir / "val.pt")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    load_before = os.getloadavg()

    baseline_s, project_s, step_rates, first_layer_rates = [], [], [], []
    with torchvision_root(raw_dir) as root:
        lecture = LectureLoop(root, settings, device, epochs=repeats)
        one_repeat = settings.model_copy(update={"epochs": project_epochs_per_repeat})
        for repeat in range(1, repeats + 1):
            baseline_s.append(lecture.epoch())
            project_s += project_epochs(train, val, one_repeat, device)
            rates = matmul_rate(settings.hidden_sizes, settings.batch_size, device)
            step_rates.append(rates["step_flop_per_s"])
            first_layer_rates.append(rates["first_layer_flop_per_s"])
            log(f"bench: repeat {repeat}/{repeats}: lecture {baseline_s[-1]:.2f}s, "
                f"project {', '.join(f'{s:.2f}s' for s in project_s[-project_epochs_per_repeat:])}, "
                f"matmul {step_rates[-1] / 1e9:.0f} GFLOP/s")
        baseline_samples = lecture.samples
    loop_memory = peak_memory(device)
    breakdown = step_breakdown(train, settings, device)
    log("bench: step breakdown: " + ", ".join(
        f"{name} {part['microseconds_per_step']:.0f} us ({part['ratio_to_matmuls']:.2f}x)" for name, part in breakdown.items()))

    flops = epoch_flops(settings.hidden_sizes, len(train.labels), len(val.labels))
    bound_s = flops / median(step_rates)
    bound_first_layer_s = flops / median(first_layer_rates)
    project_epoch, baseline_epoch = median(project_s), median(baseline_s)
    # Ratios are taken within each repeat, then the median over repeats: this machine's speed
    # drifts by tens of percent within minutes, and numbers measured together share the drift.
    per_repeat = [project_s[i * project_epochs_per_repeat : (i + 1) * project_epochs_per_repeat] for i in range(repeats)]
    speedups = [lecture / median(project) for lecture, project in zip(baseline_s, per_repeat)]
    ratios = [median(project) * rate / flops for project, rate in zip(per_repeat, step_rates)]
    first_layer_ratios = [median(project) * rate / flops for project, rate in zip(per_repeat, first_layer_rates)]
    report: dict = {
        "device": _describe_device(device),
        "threads": torch.get_num_threads(),
        "load_average_before": [round(x, 2) for x in load_before],
        "repeats": repeats,
        "net": "-".join(map(str, [INPUT_SIZE, *settings.hidden_sizes, NUM_CLASSES])),
        "batch_size": settings.batch_size,
        "baseline": {
            "what": "the lecture's loop: torchvision MNIST + DataLoader + ToTensor/Normalize, nn.Dropout, default AdamW",
            "epoch_seconds": baseline_epoch,
            "samples_per_s": baseline_samples / baseline_epoch,
            "samples_per_epoch": baseline_samples,
            "all_epoch_seconds": baseline_s,
        },
        "project": {
            "what": "mnist_mlp.train.fit: one epoch = training pass + validation",
            "epoch_seconds": project_epoch,
            "samples_per_s": len(train.labels) / project_epoch,
            "samples_per_epoch": len(train.labels) + len(val.labels),
            "all_epoch_seconds": project_s,
            "speedup_vs_baseline": median(speedups),
            "speedups_per_repeat": speedups,
            "ratio_to_bound": median(ratios),
            "ratios_to_bound_per_repeat": ratios,
            "ratio_to_first_layer_bound": median(first_layer_ratios),
        },
        "bound": {
            "what": "matmul FLOPs of one epoch / this machine's measured FLOP/s for one step's matmuls",
            "epoch_flops": flops,
            "training_flops_per_sample": training_flops_per_sample(settings.hidden_sizes),
            "step_matmul_flop_per_s": median(step_rates),
            "epoch_seconds": bound_s,
            "first_layer_shape": f"{settings.batch_size}x{INPUT_SIZE}x{settings.hidden_sizes[0]}",
            "first_layer_flop_per_s": median(first_layer_rates),
            "epoch_seconds_at_first_layer_rate": bound_first_layer_s,
        },
        "step_breakdown": breakdown,
        "memory": loop_memory,
    }

    if fast is not None:
        test = load_split(data_dir / "test.pt")
        fast_settings = fast.train.model_copy(update={"device": device.type})
        runs = [time_to_accuracy(train, val, test, fast_settings, device) for _ in range(repeats)]
        reached = [run["seconds_to_target"] for run in runs if run["seconds_to_target"] is not None]
        report["fast"] = {
            "params": fast_settings.model_dump(),
            "target_test_accuracy": TARGET_ACCURACY,
            "seconds_to_target": median(reached) if len(reached) == len(runs) else None,
            "train_seconds": median([run["train_seconds"] for run in runs]),
            "test_accuracy": runs[0]["test_accuracy"],
            "curve": runs[0]["curve"],
        }
        log(f"bench: fast preset: {report['fast']['test_accuracy']:.4f} test accuracy, "
            f"{report['fast']['train_seconds']:.2f}s training")

    if stage_params_file is not None:
        from mnist_mlp.checkpoint import load_checkpoint

        with tempfile.TemporaryDirectory(prefix="mnist-bench-") as workdir:
            stage = train_stage(repo_root(), stage_params_file.resolve(), data_dir.resolve(), Path(workdir))
            checkpoint = load_checkpoint(Path(workdir) / "model.pt")
            example = (load_split(data_dir / "test.pt").images[:2].reshape(2, -1).float() / 255.0).numpy()
            costs = mlflow_costs(Path(workdir), params, settings.epochs, checkpoint.classifier(), example)
        stage["mlflow_train_logging_seconds"] = costs["train_logging_seconds"]
        stage["mlflow_share_of_stage"] = costs["train_logging_seconds"] / stage["seconds"]
        stage["mlflow_model_logging_seconds"] = costs["model_logging_seconds"]
        report["train_stage"] = stage
        log(f"bench: train stage {stage['seconds']:.1f}s, test accuracy {stage['test_accuracy']:.4f}")

    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return report


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def markdown(report: dict) -> str:
    base, project, bound = report["baseline"], report["project"], report["bound"]
    lines = [
        "# Training benchmark",
        "",
        f"Device {report['device']}, {report['threads']} threads; net {report['net']}, batch {report['batch_size']}, fp32; "
        f"median of {report['repeats']} interleaved repeats (the ratios: median of each repeat's ratio). "
        f"Load average before/after: "
        f"{report['load_average_before'][0]} / {report['load_average_after'][0]}.",
        "",
        "| loop | epoch s | samples/s | vs lecture | vs bound |",
        "|---|---:|---:|---:|---:|",
        f"| lecture (torchvision + DataLoader) | {base['epoch_seconds']:.2f} | {base['samples_per_s']:,.0f} | 1.00x | "
        f"{base['epoch_seconds'] / bound['epoch_seconds']:.2f}x |",
        f"| project (`fit`) | {project['epoch_seconds']:.2f} | {project['samples_per_s']:,.0f} | "
        f"{project['speedup_vs_baseline']:.2f}x faster | {project['ratio_to_bound']:.2f}x |",
        f"| hardware bound | {bound['epoch_seconds']:.2f} | | | 1.00x |",
        "",
        f"Bound: {bound['epoch_flops'] / 1e9:.1f} GFLOP per epoch ({bound['training_flops_per_sample']:,} per training "
        f"sample) at {bound['step_matmul_flop_per_s'] / 1e9:.0f} GFLOP/s, the measured rate of one step's matmuls; "
        f"the {bound['first_layer_shape']} matmul alone runs at {bound['first_layer_flop_per_s'] / 1e9:.0f} GFLOP/s "
        f"({bound['epoch_seconds_at_first_layer_rate']:.2f} s per epoch, {project['ratio_to_first_layer_bound']:.2f}x).",
        "",
        "## Where a step's time goes",
        "",
        f"Batch {report['batch_size']}, interleaved windows of steps; microseconds per step (median) and the median "
        "of each window's ratio to the matmuls alone:",
        "",
        "| step | µs | vs matmuls |",
        "|---|---:|---:|",
        *[f"| {part['what']} | {part['microseconds_per_step']:,.0f} | {part['ratio_to_matmuls']:.2f}x |"
          for part in report["step_breakdown"].values()],
        "",
        "Peak memory of the benchmark process: " + ", ".join(f"{k} {v:,.0f}" for k, v in report["memory"].items()) + ".",
    ]
    if "fast" in report:
        fast = report["fast"]
        reached = fast["seconds_to_target"]
        p = fast["params"]
        lines += [
            "",
            "## `fast` preset",
            "",
            f"{'-'.join(map(str, [INPUT_SIZE, *p['hidden_sizes'], NUM_CLASSES]))}, batch {p['batch_size']}, "
            f"{p['optimizer']} {p['schedule']} lr {p['lr']}, dropout {p['dropout']}, {p['epochs']} epochs: "
            f"test accuracy {fast['test_accuracy']:.4f}; "
            + (f"{fast['target_test_accuracy']:.1%} reached after {reached:.2f} s" if reached is not None
               else f"{fast['target_test_accuracy']:.1%} not reached")
            + f"; whole training {fast['train_seconds']:.2f} s.",
        ]
    if "train_stage" in report:
        stage = report["train_stage"]
        lines += [
            "",
            "## Default train stage",
            "",
            f"{stage['epochs']} epochs: {stage['seconds']:.1f} s for the whole stage ({stage['fit_seconds']:.1f} s in `fit`), "
            f"peak RSS {stage['peak_rss_mib']:,.0f} MiB, test accuracy {stage['test_accuracy']:.4f}. "
            f"MLflow calls of the stage: {stage['mlflow_train_logging_seconds']:.2f} s "
            f"({stage['mlflow_share_of_stage']:.1%} of it); logging the model in evaluate: "
            f"{stage['mlflow_model_logging_seconds']:.2f} s.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mnist_mlp.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw", type=Path, default=Path("data/raw"), help="the four IDX files (for the lecture's loop)")
    parser.add_argument("--data", type=Path, default=Path("data/processed"), help="the preprocess stage's splits")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--fast", type=Path, default=Path("params/fast.yaml"), help="the preset timed to 98%%")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-stage", action="store_true", help="skip the full train stage (the longest part)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--out", type=Path, default=Path("reports"))
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise BenchError(f"--repeats {args.repeats}: expected at least 1")

    params = load_params(args.params)
    report = run_benchmark(
        args.raw, args.data, params, apply_preset(params, args.fast), repeats=args.repeats,
        stage_params_file=None if args.no_stage else args.params, device_choice=args.device,
    )
    files.write_json(args.out / "benchmarks.json", report)
    files.write_text(args.out / "benchmarks.md", markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    run_cli("bench", main)
