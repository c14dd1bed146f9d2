"""Many workers on one study: the study storage on PostgreSQL under load, none lost.

    python benchmarks/study_load.py [--workers 8] [--points 200] [--trial-s 0.5] [--out reports/study_load]

Needs `make server-deps` (PostgreSQL and the MLflow role). Makes a throwaway database on that PostgreSQL
(dropped afterwards), then one grid study of `--points` points through the project's own code
(storage.create: WAITING trials with GridSampler's ids), then `--workers` processes that each run the
project's worker loop (worker.take_trials: stale-trial check, pop, heartbeats every HEARTBEAT_S, tell) with
an objective that sleeps `--trial-s` instead of training. Every storage call each worker makes is
timed (the RDBStorage methods, wrapped). The result is INVALID (exit 1) unless every point ends
COMPLETE exactly once and no trial is left RUNNING, WAITING or FAIL (a point two workers took in a
race is PRUNED in the later trial). Writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import secrets as token
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from any folder: `ops` importable

import numpy as np  # noqa: E402

from mnist_mlp.project import run_cli  # noqa: E402
from ops import server  # noqa: E402

STUDY = "study-load"
# every RDBStorage method a worker's loop reaches through Optuna's cache (_get_trials: the trial lists)
TIMED = (
    "create_new_trial",
    "set_trial_param",
    "set_trial_state_values",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "_get_trials",
    "get_trial",
    "record_heartbeat",
    "_get_stale_trial_ids",
)


def _worker(url: str, trial_s: float, out: multiprocessing.Queue) -> None:
    """One worker process: the project's loop with a sleeping objective; every storage call timed."""
    import contextlib
    import io

    import optuna

    from mnist_mlp.sweeps import storage as studies
    from mnist_mlp.sweeps import worker

    timings: dict[str, list[float]] = {name: [] for name in TIMED}

    def timed(name, method):
        def call(*args, **kwargs):
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                timings[name].append(time.perf_counter() - started)

        return call

    for name in TIMED:
        if hasattr(optuna.storages.RDBStorage, name):
            setattr(optuna.storages.RDBStorage, name, timed(name, getattr(optuna.storages.RDBStorage, name)))
    loaded, definition = studies.load(STUDY, studies.open_storage(url))

    def sleep(trial):
        values = definition.suggest(trial)
        time.sleep(trial_s)
        return float(sum(hash(str(value)) % 100 for value in values.values()))

    with contextlib.redirect_stdout(io.StringIO()):  # one line per trial from 8 workers would bury the result
        worker.take_trials(loaded, definition, sleep, poll_s=0.5)
    out.put({name: values for name, values in timings.items() if values})


def measure(workers: int, points: int, trial_s: float) -> dict:
    from mnist_mlp.sweeps import definition as definitions
    from mnist_mlp.sweeps import storage as studies

    base = server.Settings.from_env({})
    password = server.read_secrets().get("MLFLOW_DB_PASSWORD")
    server.check_database(base, password)
    database = f"mlflow_studyload_{token.token_hex(4)}"
    os.environ["PGPASSWORD"] = password or ""
    url = base.db_uri(database)
    with server.connect(base, password) as admin:
        admin.execute(f"CREATE DATABASE {database}")
    try:
        storage = studies.open_storage(url)
        grid = {"train.seed": list(range(points))}
        made = studies.create(STUDY, definitions.Definition("grid", "0" * 40, "study-load", {}, grid=grid), storage)
        queue: multiprocessing.Queue = multiprocessing.Queue()
        started = time.monotonic()
        processes = [multiprocessing.Process(target=_worker, args=(url, trial_s, queue)) for _ in range(workers)]
        for process in processes:
            process.start()
        timings = [queue.get(timeout=1800) for _ in processes]
        for process in processes:
            process.join()
        wall = time.monotonic() - started
        trials = made.get_trials()
        states: dict[str, int] = {}
        for trial in trials:
            states[trial.state.name] = states.get(trial.state.name, 0) + 1
        complete = [trial.params["train.seed"] for trial in trials if trial.state.name == "COMPLETE"]
        storage.engine.dispose()
    finally:
        with server.connect(base, password) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
    merged: dict[str, list[float]] = {}
    for timing in timings:
        for name, values in timing.items():
            merged.setdefault(name, []).extend(values)
    every = [value for values in merged.values() for value in values]
    percentile = lambda values, q: round(float(np.percentile(values, q)) * 1000, 1)  # noqa: E731
    calls = {
        name: {
            "calls": len(values),
            "p50_ms": percentile(values, 50),
            "p95_ms": percentile(values, 95),
            "max_ms": round(max(values) * 1000, 1),
        }
        for name, values in sorted(merged.items())
    }
    # a race can hand two workers one point: the later trial yields (PRUNED); nothing else may be left
    valid = (
        sorted(complete) == list(range(points))
        and not set(states) - {"COMPLETE", "PRUNED"}
        and all(p.exitcode == 0 for p in processes)
    )
    return {
        "valid": valid,
        "workers": workers,
        "points": points,
        "trial_s": trial_s,
        "wall_s": round(wall, 1),
        "packing_limit_s": round(points * trial_s / workers, 1),
        "states": states,
        "complete_once": sorted(complete) == list(range(points)),
        "storage_calls": len(every),
        "p50_ms": percentile(every, 50),
        "p95_ms": percentile(every, 95),
        "max_ms": round(max(every) * 1000, 1),
        "by_call": calls,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
    }


def markdown(result: dict) -> str:
    lines = [
        f"# Study storage under load: {result['workers']} workers, {result['points']} trials, PostgreSQL",
        "",
        f"Generated by `python benchmarks/study_load.py` on {result['machine']}. "
        f"{'VALID' if result['valid'] else 'INVALID'}: trial states {result['states']}; every point COMPLETE "
        f"exactly once: {result['complete_once']}.",
        "",
        f"Wall {result['wall_s']} s against a packing limit of {result['packing_limit_s']} s "
        f"({result['points']} x {result['trial_s']} s of sleep over {result['workers']} workers). "
        f"{result['storage_calls']} storage calls: p50 {result['p50_ms']} ms, **p95 {result['p95_ms']} ms**, "
        f"max {result['max_ms']} ms.",
        "",
        "| call | calls | p50 ms | p95 ms | max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {name} | {row['calls']} | {row['p50_ms']} | {row['p95_ms']} | {row['max_ms']} |"
        for name, row in result["by_call"].items()
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--trial-s", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=Path("reports/study_load"))
    args = parser.parse_args()
    result = measure(args.workers, args.points, args.trial_s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result), end="")
    if not result["valid"]:
        raise SystemExit(1)


if __name__ == "__main__":
    run_cli("study_load", main)
