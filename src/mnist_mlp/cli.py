"""`mnist-mlp`: the project's command line. Each subcommand is a thin wrapper over the library."""

from __future__ import annotations

import argparse
from pathlib import Path

from mnist_mlp.params import SWEEP_KEYS, Params, load_params, preset_values, validate_params
from mnist_mlp.project import repo_root, run_cli
from mnist_mlp.serving.rest import DEFAULT_PORT as DEFAULT_SERVE_PORT


def cmd_preset(args: argparse.Namespace) -> None:
    from mnist_mlp.experiments.sweep import override_text

    # `dvc exp run $(mnist-mlp preset NAME)` splits this on whitespace and removes no quotes
    values = preset_values(repo_root(), args.name)
    print(" ".join(f"-S {override_text(key, value)}" for key, value in values.items()))


def configured_params() -> Params:
    """The project's params.yaml, or the defaults outside a project."""
    path = repo_root() / "params.yaml"
    return load_params(path) if path.is_file() else Params()


def configured_experiment(override: str | None = None) -> str:
    """The MLflow experiment a command uses: its --experiment, else params.yaml's tracking.experiment."""
    return override or configured_params().tracking.experiment


def cmd_init_store(args: argparse.Namespace) -> None:
    from mnist_mlp.tracking import location, store

    experiment = configured_experiment(args.experiment)
    experiment_id = store.ensure_experiment(experiment)
    print(f"MLflow store {location.tracking_uri()}, experiment '{experiment}' (id {experiment_id})")


def cmd_close_stale_runs(args: argparse.Namespace) -> None:
    from mnist_mlp.tracking import location, stale

    closed = stale.close_stale_runs(args.older_than, dry_run=args.dry_run)
    verb = "would close" if args.dry_run else "closed"
    for run in closed:
        print(f"{verb} run {run.run_id} ({run.experiment}/{run.run_name}) as KILLED: {run.reason}")
    print(f"{len(closed)} stale run(s) {verb} in {location.tracking_uri()}")


def _minutes(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected minutes >= 0")
    return value


def cmd_predict(args: argparse.Namespace) -> None:
    import sys

    from mnist_mlp.serving import predict

    results = predict.predict_files(args.images, predict.load_classifier(args.model), args.top_k)
    output = predict.format_json(results, args.model) if args.json else predict.format_text(results)
    if output:
        print(output)
    failed = [result for result in results if result.error is not None]
    for result in failed:
        print(f"mnist-mlp predict: error: {result.error}", file=sys.stderr)
    if failed:
        raise predict.ImageError(f"{len(failed)} of {len(results)} image(s) could not be classified")


def _top_k(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 10:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number from 1 to 10")
    return int(text)


def cmd_render_samples(args: argparse.Namespace) -> None:
    from mnist_mlp.serving.samples import render_samples

    for path in render_samples(args.test, args.out_dir):
        print(path)


def cmd_serve(args: argparse.Namespace) -> None:
    import os
    import signal
    import subprocess
    import sys

    from mnist_mlp.serving import rest as serve
    from mnist_mlp.tracking import loading, location, store

    model_uri = args.model_uri or serve.default_model_uri(args.metrics)
    store_uri = location.tracking_uri()
    store.check_tracking_server(store_uri)  # before the server starts: mlflow's own retries would take minutes
    if not serve.is_loopback(args.host):
        print(
            f"serve: warning: --host {args.host} accepts requests from other machines; the REST API has no login",
            file=sys.stderr,
        )
    # MLflow is handed only the verified private copy, never the URI: nothing of a crafted model runs
    with loading.verified_model(model_uri) as local:
        print(f"serving {model_uri} from {store_uri} at http://{args.host}:{args.port}/invocations", file=sys.stderr)
        quiet = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
        server = subprocess.Popen(
            serve.serve_command(str(local), args.host, args.port),
            env={
                **quiet,
                **os.environ,
                "MLFLOW_TRACKING_URI": store_uri,
                **loading.NO_PICKLE_ENV,
                **serve.SERVER_BOUNDS,
            },
        )
        # a SIGTERM to this pid stops the server too, then the copy is removed
        signal.signal(signal.SIGTERM, lambda signum, frame: server.terminate())
        try:
            returncode = server.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the server as well: let it finish
            returncode = server.wait()
    if returncode not in (0, -signal.SIGTERM, -signal.SIGINT):
        raise SystemExit(returncode)


def cmd_app(args: argparse.Namespace) -> None:
    from mnist_mlp.serving import app

    models = app.Models(args.model, args.uris, configured_experiment(args.experiment), args.sweep)
    app.serve(models, args.port or app.DEFAULT_PORT)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a port number from 1 to 65535")
    return int(text)


def cmd_check_metrics(args: argparse.Namespace) -> None:
    from mnist_mlp.experiments import gate

    report = gate.run_gate(args.metrics, args.rules, args.baseline, args.baseline_rev)
    print(report.markdown(), flush=True)
    if report.failures:
        raise gate.MetricsRegressed("\n".join(report.failures))


def cmd_promote(args: argparse.Namespace) -> None:
    from mnist_mlp.experiments import promote
    from mnist_mlp.tracking import registry

    # a name the evaluate stage could have registered, checked as params.yaml's is
    name = (
        validate_params({"tracking": {"registered_model": args.model}}, source="--model").tracking.registered_model
        if args.model
        else configured_params().tracking.registered_model
    )
    run_id = None if args.version else (args.run_id or registry.evaluated_run_id(args.metrics, "--run-id or --version"))
    print(
        promote.promote(
            name, args.rules, run_id, args.version, allow_level=args.allow_level, test=local_test(args.test)
        ).line()
    )


def cmd_restore(args: argparse.Namespace) -> None:
    from mnist_mlp.experiments import restore

    root = repo_root()
    missing = [] if args.no_rebuild else restore.fetch_missing(root, args.rev)
    if missing:
        print(
            f"restore: {args.rev}'s {restore.describe(missing)} in no local cache or remote: rebuilding with `dvc repro` "
            f"from {args.rev}'s params and code (on another CPU kind than the lock's, other bytes: docs/reproducibility.md)",
            flush=True,
        )
    same = restore.restore(root, args.rev, rebuild=not args.no_rebuild)
    if same is False:
        print(
            f"restore: the workspace holds {args.rev}'s params and code, and the model rebuilt from them: other bytes than "
            f"{args.rev}'s dvc.lock names, as on another CPU kind (`git status` shows dvc.lock and the reports)"
        )
    else:
        print(
            f"restore: the workspace holds {args.rev}'s params, dvc.lock, model and reports (`git status`, `dvc status` to see)"
        )


def _sizes(text: str) -> list[int]:
    try:
        return [int(size) for size in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 64 or 256,128, got {text!r}"
        ) from None


def cmd_check_reproducible(args: argparse.Namespace) -> None:
    from mnist_mlp.core.model import architecture
    from mnist_mlp.core.reproducible import check_reproducible

    configured = load_params(args.params).model_dump()
    threads = configured["train"]["threads"] if args.threads is None else args.threads
    configured["train"] |= {
        "epochs": args.epochs,
        "hidden_sizes": args.hidden_sizes,
        "device": "cpu",
        "threads": threads,
    }
    params = validate_params(configured, source="check-reproducible options")
    raw = args.raw if args.raw.is_dir() else None
    print(
        f"training {architecture(params.train.hidden_sizes)}, {params.train.epochs} epoch(s), seed {params.train.seed}, "
        f"{params.train.threads} thread(s) twice, each in a fresh process, on {args.data}"
        + (f"; the splits rebuilt from {raw} each time" if raw else ""),
        flush=True,
    )
    outcome = check_reproducible(args.data, params, raw)
    print(
        f"reproducible: test accuracy {outcome.test_accuracy!r} and loss {outcome.test_loss!r} in both runs; "
        f"all {len(outcome.state)} weight tensors bit-identical; the same md5 for "
        + ", ".join(f"{name} ({md5[:8]})" for name, md5 in outcome.file_md5s.items())
    )


def sweep_plan(args: argparse.Namespace):
    """The sweep the command line asks for (--preset NAME: every key of the preset, --set keys win)."""
    from mnist_mlp.experiments import sweep

    preset = preset_values(repo_root(), args.preset) if args.preset else None
    return sweep.plan(args.activations, args.dropouts, args.seeds, args.set, args.study, preset)


def study_definition(args: argparse.Namespace, root: Path):
    """(study name, Definition) from the command line: a grid, or with --search a TPE search space."""
    from mnist_mlp.experiments import space, study, sweep

    planned = sweep_plan(args)
    if args.search and (args.activations or args.dropouts or args.seeds):
        raise sweep.SweepError(
            "--search draws its own params; give fixed ones with --set, not --activations/--dropouts/--seeds"
        )
    searched = space.read(args.search, fixed={*planned.sets, *SWEEP_KEYS}) if args.search else None
    keys = [*planned.sets, *([] if searched else planned.grid)]
    if searched and args.trials:
        searched = searched.model_copy(update={"trials": args.trials})
    base = sweep.sweep_base(root, [*keys, *(searched.space if searched else [])], args.from_workspace)
    taken = study.taken_values(root, base.split("+")[1:])
    experiment = configured_experiment(planned.experiment)
    if searched:
        return planned.sweep_id, study.search_definition(searched, planned.sets, base, experiment, taken)
    return planned.sweep_id, study.grid_definition(planned, base, experiment, taken)


def cmd_sweep(args: argparse.Namespace) -> None:
    from mnist_mlp.experiments import study

    root = repo_root()
    if args.as_worker:  # one of the workers `mnist-mlp sweep` starts: trials only, no report
        study.work(root, args.study, study.storage_url(root), args.push)
        return
    if args.join:
        if not args.study:
            raise study.StudyError("--join needs --study NAME: the study to work on")
        study.join(root, args.study, args.jobs, args.push)
        name = args.study
    else:
        name, definition = study_definition(args, root)
        study.start(root, name, definition, args.jobs, args.push)
    print(f"next: mnist-mlp compare --study {name}")


def local_test(path: Path = Path("data/processed/test.pt")):
    """The local test split as tracking.predictions.LocalTest (pixels in [0, 1], labels); None before `dvc repro`."""
    from mnist_mlp.data.mnist import load_split
    from mnist_mlp.tracking.predictions import LocalTest

    path = path if path.is_absolute() else repo_root() / path
    if not path.is_file():
        return None
    split = load_split(path)
    pixels = split.images.reshape(len(split.images), -1).numpy().astype("float32") / 255.0  # (N, 784) in [0, 1]
    return LocalTest(pixels, split.labels.numpy(), str(path))


def cmd_compare(args: argparse.Namespace) -> None:
    from mnist_mlp.experiments import compare

    experiment = configured_experiment(args.experiment)
    if args.presets:
        table = compare.compare_presets(experiment, repo_root())
        print(table.to_string(index=False))
        print(f"wrote {compare.write_presets_report(table, experiment, args.reports)}")
        return
    if args.study:  # a grid is reported as a sweep, in the study's own MLflow experiment
        from mnist_mlp.experiments import study

        searched = study.search_report(repo_root(), args.study, args.reports)
        if searched is not None:
            print(searched)
            return
        experiment = args.experiment or study.experiment_of(repo_root(), args.study)
    result = compare.compare(experiment, compare.ALL if args.all else args.study or args.sweep_id, local_test())
    table, picture = compare.write_report(result, args.reports)
    print(compare.settings_table(result).to_string(index=False))
    print("\n".join([compare.headline(result), *compare.notes(result)]))
    print(f"wrote {table} and {picture} ({len(result.runs)} runs, sweep {result.sweep_id})")


def _positive_text(text: str) -> str:
    return str(_positive(text))


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number, 1 or more")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mnist-mlp", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    preset = commands.add_parser("preset", help="print `dvc exp run` -S overrides of a params/<name>.yaml preset")
    preset.add_argument("name", help="e.g. tutorial, fast")
    preset.set_defaults(func=cmd_preset)

    init_store = commands.add_parser("init-store", help="create the MLflow store and experiment (absolute paths)")
    init_store.add_argument("--experiment", help="default: tracking.experiment in params.yaml")
    init_store.set_defaults(func=cmd_init_store)

    stale = commands.add_parser(
        "close-stale-runs",
        help="end RUNNING runs left by a crash as KILLED: those whose process is gone from this host, "
        "and those from elsewhere started over --older-than minutes ago",
    )
    stale.add_argument("--older-than", type=_minutes, default=60.0, metavar="MINUTES")
    stale.add_argument("--dry-run", action="store_true", help="list them, change nothing")
    stale.set_defaults(func=cmd_close_stale_runs)

    predict = commands.add_parser(
        "predict", help="classify your own digit images (PNG/JPEG, any size, colors, dark-on-light or light-on-dark)"
    )
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument(
        "--model",
        default="models/model.pt",
        help="checkpoint file, or MLflow model URI: runs:/<run id>/model, models:/mnist-mlp@champion, models:/<model id> (default %(default)s)",
    )
    predict.add_argument("--top-k", type=_top_k, default=3, metavar="K", help="probabilities shown (default 3)")
    predict.add_argument("--json", action="store_true", help="one JSON document on stdout")
    predict.set_defaults(func=cmd_predict)

    samples = commands.add_parser(
        "render-samples", help="write ten real MNIST test digits as PNG/JPEG in different styles, to try `predict`"
    )
    samples.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    samples.add_argument("--test", type=Path, default=Path("data/processed/test.pt"), help="default %(default)s")
    samples.set_defaults(func=cmd_render_samples)

    serve = commands.add_parser("serve", help="serve the evaluated model over REST (mlflow models serve)")
    serve.add_argument(
        "--model-uri", help="e.g. models:/mnist-mlp@champion (default: runs:/<mlflow_run_id in --metrics>/model)"
    )
    serve.add_argument("--metrics", type=Path, default=Path("reports/metrics.json"), help="default %(default)s")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument(
        "--port", type=_port, default=DEFAULT_SERVE_PORT, help="default %(default)s (the MLflow UI has 5000)"
    )
    serve.set_defaults(func=cmd_serve)

    web = commands.add_parser(
        "app", help="a web page on 127.0.0.1: draw a digit, see the current model and every model of a sweep answer"
    )
    web.add_argument(
        "uris",
        nargs="*",
        metavar="MODEL_URI",
        help="runs:/<run id>/model or models:/<name>@<alias> to show beside the current model "
        "(default: the models of the latest sweep)",
    )
    web.add_argument(
        "--model", default="models/model.pt", help="the current model: checkpoint or MLflow URI (default %(default)s)"
    )
    web.add_argument(
        "--sweep",
        metavar="ID",
        help="the sweep whose models answer (default: the latest; a page's ?sweep=ID overrides)",
    )
    web.add_argument(
        "--experiment", help="MLflow experiment of the sweeps (default: tracking.experiment in params.yaml)"
    )
    web.add_argument("--port", type=_port, help="on 127.0.0.1 (default: 8000, app.DEFAULT_PORT)")
    web.set_defaults(func=cmd_app)
    check = commands.add_parser(
        "check-metrics",
        help="fail (exit 1) when reports/metrics.json regressed against a baseline or broke a floor; prints a markdown table",
    )
    check.add_argument("--metrics", type=Path, default=Path("reports/metrics.json"), help="default %(default)s")
    check.add_argument("--rules", type=Path, default=Path("metrics_rules.yaml"), help="default %(default)s")
    baseline = check.add_mutually_exclusive_group()
    baseline.add_argument("--baseline", type=Path, metavar="FILE", help="compare with this metrics file instead of git")
    baseline.add_argument(
        "--baseline-rev",
        default="main",
        metavar="REV",
        help="git revision whose committed metrics file is the baseline (default %(default)s)",
    )
    check.set_defaults(func=cmd_check_metrics)

    promote = commands.add_parser(
        "promote",
        help="move the registered model's `champion` alias to a run's version when it passes the metric gate "
        "against the current champion and is better beyond noise on the same test digits (exit 1 and one line when not)",
    )
    candidate = promote.add_mutually_exclusive_group()
    candidate.add_argument(
        "--run-id", help="the version registered from this run (default: mlflow_run_id in --metrics)"
    )
    candidate.add_argument("--version", type=_positive_text, help="this version number of the registered model")
    promote.add_argument("--metrics", type=Path, default=Path("reports/metrics.json"), help="default %(default)s")
    promote.add_argument("--model", help="registered model (default: tracking.registered_model in params.yaml)")
    promote.add_argument("--rules", type=Path, default=Path("metrics_rules.yaml"), help="default %(default)s")
    promote.add_argument(
        "--allow-level",
        action="store_true",
        help="also promote a candidate level with the champion within noise (not better beyond it on the "
        "same test digits)",
    )
    promote.add_argument(
        "--test",
        type=Path,
        default=Path("data/processed/test.pt"),
        help="the test split both models run on (default %(default)s)",
    )
    promote.set_defaults(func=cmd_promote)

    reproducible = commands.add_parser(
        "check-reproducible",
        help="train a short config twice on CPU from data/processed; fail unless accuracy, weights and file md5s are bit-identical",
    )
    reproducible.add_argument("--data", type=Path, default=Path("data/processed"), help="default %(default)s")
    reproducible.add_argument(
        "--params", default="params.yaml", help="train settings to start from (default %(default)s)"
    )
    reproducible.add_argument("--epochs", type=int, default=1, help="default %(default)s")
    reproducible.add_argument("--hidden-sizes", type=_sizes, default=[64], metavar="N[,N...]", help="default 64")
    reproducible.add_argument(
        "--raw",
        type=Path,
        default=Path("data/raw"),
        help="rebuild the splits from these IDX files in each run and compare them too, when present (default %(default)s)",
    )
    reproducible.add_argument(
        "--threads",
        type=int,
        default=None,  # checked with the params, as train.threads
        help="CPU threads of both runs (default: train.threads of --params)",
    )
    reproducible.set_defaults(func=cmd_check_reproducible)

    back = commands.add_parser(
        "restore",
        help="go back to a commit's params, lock file, model and reports (dvc exp apply); what no cache or remote holds is rebuilt",
    )
    back.add_argument("rev", nargs="?", default="HEAD", help="a commit, branch or tag (default %(default)s)")
    back.add_argument(
        "--no-rebuild", action="store_true", help="refuse, changing nothing, when an output is in no cache or remote"
    )
    back.set_defaults(func=cmd_restore)

    sweep = commands.add_parser(
        "sweep",
        help="an Optuna study of activation x dropout x seed (or a TPE search): each trial a `dvc exp run --temp`",
    )
    sweep.add_argument(
        "--activations", nargs="+", metavar="NAME", help="default: relu tanh sigmoid (with --preset: the preset's)"
    )
    sweep.add_argument(
        "--dropouts", nargs="+", type=float, metavar="P", help="default: 0.0 0.2 0.5 (with --preset: the preset's)"
    )
    sweep.add_argument(
        "--preset",
        metavar="NAME",
        help="every trial runs params/NAME.yaml over the defaults, as `mnist-mlp preset NAME` "
        "prints it; --set keys win, e.g. --preset best --seeds 0 1 2",
    )
    sweep.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[],
        metavar="N",
        help="several seeds per setting (default: params.yaml's train.seed)",
    )
    sweep.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another override for every trial, e.g. --set train.epochs=2 (repeatable)",
    )
    sweep.add_argument(
        "--search",
        type=Path,
        metavar="FILE",
        help="a TPE search over the ranges of FILE (e.g. params/search/default.yaml) instead of the grid",
    )
    sweep.add_argument(
        "--trials", type=_positive, metavar="N", help="with --search: trials in all (default: the file's)"
    )
    sweep.add_argument(
        "--jobs", "-j", type=_positive, default=2, help="worker processes on this machine (default %(default)s)"
    )
    sweep.add_argument(
        "--study",
        "--sweep-id",
        dest="study",
        metavar="NAME",
        help="the study's name, also the runs' sweep_id (default: the current time, YYYYMMDD-HHMMSS)",
    )
    sweep.add_argument(
        "--join",
        action="store_true",
        help="work on the existing study --study NAME (its grid or space, its --set values, its commit), "
        "e.g. from another machine with the same STUDY_STORAGE and MLFLOW_TRACKING_URI",
    )
    sweep.add_argument(
        "--push",
        metavar="REMOTE",
        help="`dvc exp push REMOTE` each trial's experiment as it ends (a team: every clone's `dvc exp pull` gets it)",
    )
    sweep.add_argument(
        "--from-workspace",
        action="store_true",
        help="sweep from params.yaml as it is in the workspace, even where it differs from HEAD",
    )
    sweep.add_argument("--as-worker", action="store_true", help=argparse.SUPPRESS)
    sweep.set_defaults(func=cmd_sweep)

    compare = commands.add_parser(
        "compare", help="reports/compare.md and figures/compare.png from the MLflow runs of a sweep"
    )
    which = compare.add_mutually_exclusive_group()
    which.add_argument("--sweep-id", default="latest", help="default: the latest sweep")
    which.add_argument(
        "--study",
        metavar="NAME",
        help="a study (its sweep id); a TPE search is reported by trial, with Optuna's parameter importances",
    )
    which.add_argument("--all", action="store_true", help="every run of the experiment, swept or not")
    which.add_argument(
        "--presets",
        action="store_true",
        help="default and every preset side by side (reports/presets.md): each run under the preset "
        "whose params it logged, ranked on validation, 95 % intervals",
    )
    compare.add_argument("--experiment", help="MLflow experiment (default: tracking.experiment in params.yaml)")
    compare.add_argument("--reports", type=Path, default=Path("reports"), help="default %(default)s")
    compare.set_defaults(func=cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_cli(f"mnist-mlp {args.command}", lambda: args.func(args))


if __name__ == "__main__":
    main()
