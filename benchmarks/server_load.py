"""Logging under load: a SQLite file vs the tracking server on PostgreSQL, side by side, and a server restart.

    python benchmarks/server_load.py [--trainings 8] [--epochs 40] [--out reports/server_load]

Needs `make server-deps` (PostgreSQL and the MLflow role); starts its own throwaway server (a fresh
database, a free port: ops.server.scratch_server) and a fresh SQLite file, so it measures nothing
else's runs. For each store, `--trainings` worker processes open a run at once through the project's
tracking code (runs.training_run: the params and tags of a training), wait until all are open, then
log a training's metrics as fast as they can: one batch of 7 metrics per epoch (Run.log_epoch, what
the train stage sends), then the summary. No torch work in between: the figures are the logging path's.
Every run must end FINISHED with every metric at every step; a lost run or metric makes the result
INVALID (exit 1). Then one run logs an epoch every `--pause` s while the server is restarted under it:
it must end FINISHED with all its metrics (MLflow's client retries carry it over the restart).
Writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script (python benchmarks/server_load.py) from any folder: `ops` importable

from mnist_mlp import files  # noqa: E402
from mnist_mlp.errors import UserError  # noqa: E402
from mnist_mlp.project import run_cli  # noqa: E402
from mnist_mlp.tracking import runs, store  # noqa: E402
from ops import server  # noqa: E402

EXPERIMENT = "server-load"
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds", "samples_per_s")
SUMMARY_METRICS = ("best_val_accuracy", "best_epoch", "train_seconds")


def worker(epochs: int, go: Path, pause: float) -> None:
    """One training's logging; prints `open`, `epoch N` as it goes, then a JSON line with its timings."""
    opened = time.perf_counter()
    params = {"epochs": epochs, "hidden_sizes": [512, 512], "activation": "relu", "dropout": 0.2, "lr": 0.002}
    latencies = []
    with runs.training_run(EXPERIMENT, params, {"load_worker": str(os.getpid())}) as run:
        open_seconds = time.perf_counter() - opened
        print("open", flush=True)
        while not go.exists():
            time.sleep(0.01)
        logging_started = time.perf_counter()  # CLOCK_MONOTONIC: comparable across the workers
        for epoch in range(1, epochs + 1):
            record = {"epoch": epoch, **{name: 1.0 / (epoch + index) for index, name in enumerate(EPOCH_METRICS)}}
            started = time.perf_counter()
            run.log_epoch(record)
            latencies.append(time.perf_counter() - started)
            print(f"epoch {epoch}", flush=True)
            time.sleep(pause)
        logging_ended = time.perf_counter()
        run.log_metrics(dict.fromkeys(SUMMARY_METRICS, 0.5))
        closing = time.perf_counter()
    print(
        json.dumps(
            {
                "run_id": run.run_id,
                "open": open_seconds,
                "close": time.perf_counter() - closing,
                "latencies": latencies,
                "start": logging_started,
                "end": logging_ended,
            }
        )
    )


def _spawn(uri: str, epochs: int, go: Path, pause: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, __file__, "worker", "--epochs", str(epochs), "--go", str(go), "--pause", str(pause)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _lost(uri: str, run_ids: list[str], expected: int, epochs: int) -> tuple[int, int]:
    """(runs not FINISHED or missing, metric values missing) in the store, for `expected` runs."""
    os.environ["MLFLOW_TRACKING_URI"] = uri
    client = store.client()
    found = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id], max_results=1000)
    finished = {run.info.run_id for run in found if run.info.status == "FINISHED"}
    lost_runs = expected - len(finished & set(run_ids))
    missing = 0
    for run_id in finished & set(run_ids):
        for name in EPOCH_METRICS:
            steps = {metric.step for metric in client.get_metric_history(run_id, name)}
            missing += len(set(range(1, epochs + 1)) - steps)
        missing += len(set(SUMMARY_METRICS) - set(client.get_run(run_id).data.metrics))
    return lost_runs, missing


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def load(label: str, uri: str, trainings: int, epochs: int, folder: Path) -> dict:
    """`trainings` concurrent workers against `uri`; their logging timed, the store checked."""
    print(f"{label}: {trainings} trainings x {epochs} epochs", file=sys.stderr, flush=True)
    go = folder / f"go-{label}"
    workers = [_spawn(uri, epochs, go) for _ in range(trainings)]
    for process in workers:  # every run open before any logs: they log at the same time
        line = process.stdout.readline()
        if line.strip() != "open":
            process.wait()
            raise UserError(
                f"{label}: a worker failed before logging: {(process.stderr.read().strip().splitlines() or ['?'])[-1]}"
            )
    go.touch()
    results, failures = [], []
    for process in workers:
        out, err = process.communicate()
        if process.returncode == 0:
            results.append(json.loads(out.strip().splitlines()[-1]))
        else:
            failures.append((err.strip().splitlines() or [f"exit {process.returncode}"])[-1])
    latencies = [value for result in results for value in result["latencies"]]
    span = max((r["end"] for r in results), default=0) - min((r["start"] for r in results), default=0)
    lost_runs, missing = _lost(uri, [r["run_id"] for r in results], trainings, epochs)
    return {
        "store": label,
        "uri": uri,
        "trainings": trainings,
        "epochs": epochs,
        "worker_failures": failures,
        "runs_lost": lost_runs,
        "metric_values_missing": missing,
        "log_calls": len(latencies),
        "span_s": span,
        "calls_per_s": len(latencies) / span if span else 0.0,
        "metric_values_per_s": len(latencies) * len(EPOCH_METRICS) / span if span else 0.0,
        "latency_ms": {
            "p50": 1000 * statistics.median(latencies),
            "p95": 1000 * _percentile(latencies, 0.95),
            "max": 1000 * max(latencies),
        }
        if latencies
        else {},
        "run_open_ms_median": 1000 * statistics.median(r["open"] for r in results) if results else None,
        "run_close_ms_median": 1000 * statistics.median(r["close"] for r in results) if results else None,
    }


def restart_under_a_run(scratch: server.ServerProcess, epochs: int, pause: float, folder: Path) -> dict:
    """One run logs an epoch every `pause` s; after a third of its epochs the server is stopped and started."""
    print(
        f"restart: one run of {epochs} epochs, the server restarted after epoch {max(1, epochs // 3)}",
        file=sys.stderr,
        flush=True,
    )
    go = folder / "go-restart"
    go.touch()
    process = _spawn(scratch.uri, epochs, go, pause)
    restart_at = max(1, epochs // 3)
    restart_seconds = None
    for line in process.stdout:
        if line.strip() == f"epoch {restart_at}":
            started = time.perf_counter()
            scratch.restart()
            restart_seconds = time.perf_counter() - started
            break
    out, err = process.communicate()
    lines = out.strip().splitlines() or [""]
    result = json.loads(lines[-1]) if process.returncode == 0 else None
    lost_runs, missing = _lost(scratch.uri, [result["run_id"]] if result else [], 1, epochs)
    return {
        "epochs": epochs,
        "pause_s": pause,
        "restarted_after_epoch": restart_at,
        "restart_s": restart_seconds,
        "exit_code": process.returncode,
        "error": None if result else (err.strip().splitlines() or ["?"])[-1],
        "status": "FINISHED" if result and not lost_runs else "LOST",
        "metric_values_missing": missing,
        "longest_call_s": max(result["latencies"]) if result else None,
    }


def markdown(report: dict) -> str:
    rows = [
        "| store | runs lost | metric values missing | log calls | calls/s | metric values/s | p50 ms | p95 ms | max ms | run open ms | run close ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["load"]:
        lat = r["latency_ms"]
        rows.append(
            f"| {r['store']} | {r['runs_lost']} | {r['metric_values_missing']} | {r['log_calls']} | {r['calls_per_s']:.0f} | "
            f"{r['metric_values_per_s']:.0f} | {lat.get('p50', 0):.1f} | {lat.get('p95', 0):.1f} | {lat.get('max', 0):.0f} | "
            f"{r['run_open_ms_median']:.0f} | {r['run_close_ms_median']:.0f} |"
        )
    restart = report["restart"]
    verdict = "VALID" if report["valid"] else f"INVALID: {report['why']}"
    return "\n".join(
        [
            f"### Logging under load: {report['trainings']} concurrent trainings x {report['epochs']} epochs "
            f"(one 7-metric batch per epoch), {verdict}",
            "",
            f"`{report['command']}` on {report['machine']}, {report['date']}; load average {report['load_average_before']:.1f} "
            f"before, {report['load_average_after']:.1f} after (other jobs on the machine)",
            "",
            *rows,
            "",
            f"Server restarted under a run (an epoch every {restart['pause_s']} s, restart after epoch "
            f"{restart['restarted_after_epoch']} of {restart['epochs']}, the restart took {restart['restart_s'] or 0:.1f} s): "
            f"run {restart['status']}, {restart['metric_values_missing']} metric values missing, "
            f"longest logging call {restart['longest_call_s'] or 0:.1f} s (the client's retries)"
            + (f"; error: {restart['error']}" if restart["error"] else ""),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="measure", choices=["measure", "worker"])
    parser.add_argument("--trainings", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument(
        "--pause", type=float, default=0.5, help="seconds between epochs of the restart run (worker: any)"
    )
    parser.add_argument("--restart-epochs", type=int, default=30)
    parser.add_argument("--go", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "server_load")
    args = parser.parse_args()
    if args.mode == "worker":
        worker(args.epochs, args.go, args.pause)
        return
    load_before = os.getloadavg()[0]  # other jobs on the machine slow both stores
    with tempfile.TemporaryDirectory(prefix="server-load-") as temp:
        folder = Path(temp)
        sqlite_uri = f"sqlite:///{folder / 'mlflow.db'}"
        with server.scratch_server(folder / "server") as scratch:
            # both stores made and migrated before the clock runs
            for uri in (sqlite_uri, scratch.uri):
                os.environ["MLFLOW_TRACKING_URI"] = uri
                store.ensure_experiment(EXPERIMENT, root=folder)
            results = [
                load("SQLite file", sqlite_uri, args.trainings, args.epochs, folder),
                load("server on PostgreSQL", scratch.uri, args.trainings, args.epochs, folder),
            ]
            restart = restart_under_a_run(scratch, args.restart_epochs, args.pause, folder)
    problems = [
        f"{r['store']}: {r['runs_lost']} runs lost, {r['metric_values_missing']} metric values missing"
        for r in results
        if r["runs_lost"] or r["metric_values_missing"]
    ]
    if restart["status"] != "FINISHED" or restart["metric_values_missing"]:
        problems.append(f"restart: run {restart['status']}, {restart['metric_values_missing']} metric values missing")
    report = {
        "command": " ".join(["python benchmarks/server_load.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
        "trainings": args.trainings,
        "epochs": args.epochs,
        "load": results,
        "restart": restart,
        "valid": not problems,
        "why": "; ".join(problems) or None,
    }
    files.write_json(args.out.with_suffix(".json"), report)
    files.write_text(args.out.with_suffix(".md"), markdown(report))
    print(markdown(report))
    if problems:
        raise UserError("INVALID: " + "; ".join(problems))


if __name__ == "__main__":
    run_cli("server_load", main)
