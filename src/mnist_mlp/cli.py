"""`mnist-mlp`: the project's command line. Each subcommand is a parser and a handler side by side; the handler
calls the library and prints what it returns."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mnist_mlp.params import Params, load_params, override_text, preset_values, validate_params
from mnist_mlp.project import repo_root, run_cli
from mnist_mlp.serving.rest import DEFAULT_PORT as DEFAULT_SERVE_PORT
from mnist_mlp.tracking.failures import store_failure

TEST_SPLIT = Path("data/processed/test.pt")
METRICS = Path("reports/metrics.json")
RULES = Path("metrics_rules.yaml")


# --- argument types ---------------------------------------------------------------------------------


def _whole(low: int, high: int | None, what: str):
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < low or (high is not None and int(text) > high):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {what}")
        return int(text)

    return parse


_positive = _whole(1, None, "a whole number, 1 or more")
_port = _whole(1, 65535, "a port number from 1 to 65535")
_top_k = _whole(1, 10, "a whole number from 1 to 10")


def _minutes(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected minutes >= 0")
    return value


def _sizes(text: str) -> list[int]:
    try:
        return [int(size) for size in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 64 or 256,128, got {text!r}"
        ) from None


def _default(text: str = "") -> str:
    return f"{text} (default %(default)s)".strip()


# --- what several commands read ---------------------------------------------------------------------


def configured_params() -> Params:
    """The project's params.yaml, or the defaults outside a project."""
    path = repo_root() / "params.yaml"
    return load_params(path) if path.is_file() else Params()


def configured_experiment(override: str | None = None) -> str:
    """The MLflow experiment a command uses: its --experiment, else params.yaml's tracking.experiment."""
    return override or configured_params().tracking.experiment


def local_test(path: Path = TEST_SPLIT):
    from mnist_mlp.verdicts.local_split import local_test as read

    return read(path if path.is_absolute() else repo_root() / path)


# --- the commands -----------------------------------------------------------------------------------


def cmd_preset(args: argparse.Namespace) -> None:
    # `dvc exp run $(mnist-mlp preset NAME)` splits this on whitespace and removes no quotes
    values = preset_values(repo_root(), args.name)
    print(" ".join(f"-S {override_text(key, value)}" for key, value in values.items()))


def add_preset(commands) -> None:
    parser = commands.add_parser("preset", help="print `dvc exp run` -S overrides of a params/<name>.yaml preset")
    parser.add_argument("name", help="e.g. tutorial, fast")
    parser.set_defaults(func=cmd_preset)


def cmd_init_store(args: argparse.Namespace) -> None:
    from mnist_mlp.tracking import location, store

    experiment = configured_experiment(args.experiment)
    experiment_id = store.ensure_experiment(experiment)
    print(f"MLflow store {location.tracking_uri()}, experiment '{experiment}' (id {experiment_id})")


def add_init_store(commands) -> None:
    parser = commands.add_parser("init-store", help="create the MLflow store and experiment (absolute paths)")
    parser.add_argument("--experiment", help="default: tracking.experiment in params.yaml")
    parser.set_defaults(func=cmd_init_store)


def cmd_close_stale_runs(args: argparse.Namespace) -> None:
    from mnist_mlp.tracking import location, stale

    closed = stale.close_stale_runs(args.older_than, dry_run=args.dry_run)
    verb = "would close" if args.dry_run else "closed"
    for run in closed:
        print(f"{verb} run {run.run_id} ({run.experiment}/{run.run_name}) as KILLED: {run.reason}")
    print(f"{len(closed)} stale run(s) {verb} in {location.tracking_uri()}")


def add_close_stale_runs(commands) -> None:
    parser = commands.add_parser(
        "close-stale-runs",
        help="end RUNNING runs left by a crash as KILLED: those whose process is gone from this host, "
        "and those from elsewhere started over --older-than minutes ago",
    )
    parser.add_argument("--older-than", type=_minutes, default=60.0, metavar="MINUTES")
    parser.add_argument("--dry-run", action="store_true", help="list them, change nothing")
    parser.set_defaults(func=cmd_close_stale_runs)


def cmd_predict(args: argparse.Namespace) -> None:
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


def add_predict(commands) -> None:
    parser = commands.add_parser(
        "predict", help="classify your own digit images (PNG/JPEG, any size, colors, dark-on-light or light-on-dark)"
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument(
        "--model",
        default="models/model.pt",
        help=_default(
            "checkpoint file, or MLflow model URI: runs:/<run id>/model, models:/mnist-mlp@champion, models:/<model id>"
        ),
    )
    parser.add_argument("--top-k", type=_top_k, default=3, metavar="K", help="probabilities shown (default 3)")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.set_defaults(func=cmd_predict)


def cmd_render_samples(args: argparse.Namespace) -> None:
    from mnist_mlp.serving.samples import render_samples

    for path in render_samples(args.test, args.out_dir):
        print(path)


def add_render_samples(commands) -> None:
    parser = commands.add_parser(
        "render-samples", help="write ten real MNIST test digits as PNG/JPEG in different styles, to try `predict`"
    )
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    parser.add_argument("--test", type=Path, default=TEST_SPLIT, help=_default())
    parser.set_defaults(func=cmd_render_samples)


def cmd_serve(args: argparse.Namespace) -> None:
    import signal

    from mnist_mlp.serving import rest

    returncode = rest.serve_verified(args.model_uri or rest.default_model_uri(args.metrics), args.host, args.port)
    if returncode not in (0, -signal.SIGTERM, -signal.SIGINT):
        raise SystemExit(returncode)


def add_serve(commands) -> None:
    parser = commands.add_parser("serve", help="serve the evaluated model over REST (mlflow models serve)")
    parser.add_argument(
        "--model-uri", help="e.g. models:/mnist-mlp@champion (default: runs:/<mlflow_run_id in --metrics>/model)"
    )
    parser.add_argument("--metrics", type=Path, default=METRICS, help=_default())
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=_port, default=DEFAULT_SERVE_PORT, help="default %(default)s (the MLflow UI has 5000)"
    )
    parser.set_defaults(func=cmd_serve)


def cmd_app(args: argparse.Namespace) -> None:
    from mnist_mlp.serving import app

    models = app.Models(args.model, args.uris, configured_experiment(args.experiment), args.sweep)
    app.serve(models, args.port or app.DEFAULT_PORT)


def add_app(commands) -> None:
    parser = commands.add_parser(
        "app", help="a web page on 127.0.0.1: draw a digit, see the current model and every model of a sweep answer"
    )
    parser.add_argument(
        "uris",
        nargs="*",
        metavar="MODEL_URI",
        help="runs:/<run id>/model or models:/<name>@<alias> to show beside the current model "
        "(default: the models of the latest sweep)",
    )
    parser.add_argument("--model", default="models/model.pt", help=_default("the current model: checkpoint or URI"))
    parser.add_argument(
        "--sweep",
        metavar="ID",
        help="the sweep whose models answer (default: the latest; a page's ?sweep=ID overrides)",
    )
    parser.add_argument("--experiment", help="MLflow experiment of the sweeps (default: tracking.experiment)")
    parser.add_argument("--port", type=_port, help="on 127.0.0.1 (default: 8000, app.DEFAULT_PORT)")
    parser.set_defaults(func=cmd_app)


def cmd_check_metrics(args: argparse.Namespace) -> None:
    from mnist_mlp.verdicts import gate

    report = gate.run_gate(args.metrics, args.rules, args.baseline, args.baseline_rev)
    print(report.markdown(), flush=True)
    if report.failures:
        raise gate.MetricsRegressed("\n".join(report.failures))


def add_check_metrics(commands) -> None:
    parser = commands.add_parser(
        "check-metrics",
        help="fail (exit 1) when reports/metrics.json regressed against a baseline or broke a floor; prints a markdown table",
    )
    parser.add_argument("--metrics", type=Path, default=METRICS, help=_default())
    parser.add_argument("--rules", type=Path, default=RULES, help=_default())
    baseline = parser.add_mutually_exclusive_group()
    baseline.add_argument("--baseline", type=Path, metavar="FILE", help="compare with this metrics file instead of git")
    baseline.add_argument(
        "--baseline-rev",
        default="main",
        metavar="REV",
        help=_default("git revision whose metrics file is the baseline"),
    )
    parser.set_defaults(func=cmd_check_metrics)


def cmd_promote(args: argparse.Namespace) -> None:
    from mnist_mlp.tracking import registry
    from mnist_mlp.verdicts import promote

    # a name the evaluate stage could have registered, checked as params.yaml's is
    name = (
        validate_params({"tracking": {"registered_model": args.model}}, source="--model").tracking.registered_model
        if args.model
        else configured_params().tracking.registered_model
    )
    run_id = None if args.version else (args.run_id or registry.evaluated_run_id(args.metrics, "--run-id or --version"))
    promotion = promote.promote(
        name, args.rules, run_id, args.version, allow_level=args.allow_level, test=local_test(args.test)
    )
    print(promotion.line())


def add_promote(commands) -> None:
    parser = commands.add_parser(
        "promote",
        help="move the registered model's `champion` alias to a run's version when it passes the metric gate "
        "against the current champion and is better beyond noise on the same test digits (exit 1 and one line when not)",
    )
    candidate = parser.add_mutually_exclusive_group()
    candidate.add_argument(
        "--run-id", help="the version registered from this run (default: mlflow_run_id in --metrics)"
    )
    candidate.add_argument("--version", type=lambda text: str(_positive(text)), help="this version of the model")
    parser.add_argument("--metrics", type=Path, default=METRICS, help=_default())
    parser.add_argument("--model", help="registered model (default: tracking.registered_model in params.yaml)")
    parser.add_argument("--rules", type=Path, default=RULES, help=_default())
    parser.add_argument(
        "--allow-level",
        action="store_true",
        help="also promote a candidate within noise of the champion (not better beyond it on the same test digits)",
    )
    parser.add_argument("--test", type=Path, default=TEST_SPLIT, help=_default("the split both models run on"))
    parser.set_defaults(func=cmd_promote)


def cmd_check_reproducible(args: argparse.Namespace) -> None:
    from mnist_mlp.core.model import architecture
    from mnist_mlp.core.reproducible import check_reproducible

    configured = load_params(args.params).model_dump()
    threads = configured["train"]["threads"] if args.threads is None else args.threads
    shortened = {"epochs": args.epochs, "hidden_sizes": args.hidden_sizes, "device": "cpu", "threads": threads}
    configured["train"] |= shortened
    params = validate_params(configured, source="check-reproducible options")
    raw = args.raw if args.raw.is_dir() else None
    train = params.train
    print(
        f"training {architecture(train.hidden_sizes)}, {train.epochs} epoch(s), seed {train.seed}, {train.threads} "
        f"thread(s) twice, each in a fresh process, on {args.data}"
        + (f"; the splits rebuilt from {raw} each time" if raw else ""),
        flush=True,
    )
    outcome = check_reproducible(args.data, params, raw)
    print(
        f"reproducible: test accuracy {outcome.test_accuracy!r} and loss {outcome.test_loss!r} in both runs; "
        f"all {len(outcome.state)} weight tensors bit-identical; the same md5 for "
        + ", ".join(f"{name} ({md5[:8]})" for name, md5 in outcome.file_md5s.items())
    )


def add_check_reproducible(commands) -> None:
    parser = commands.add_parser(
        "check-reproducible",
        help="train a short config twice on CPU from data/processed; fail unless accuracy, weights and file md5s are bit-identical",
    )
    parser.add_argument("--data", type=Path, default=Path("data/processed"), help=_default())
    parser.add_argument("--params", default="params.yaml", help=_default("train settings to start from"))
    parser.add_argument("--epochs", type=int, default=1, help=_default())
    parser.add_argument("--hidden-sizes", type=_sizes, default=[64], metavar="N[,N...]", help="default 64")
    parser.add_argument(
        "--raw",
        type=Path,
        default=Path("data/raw"),
        help=_default("rebuild the splits from these IDX files in each run and compare them too, when present"),
    )
    # None: checked with the params, as train.threads
    parser.add_argument("--threads", type=int, help="CPU threads of both runs (default: train.threads of --params)")
    parser.set_defaults(func=cmd_check_reproducible)


def cmd_restore(args: argparse.Namespace) -> None:
    from mnist_mlp.pipeline import restore

    root = repo_root()
    missing = [] if args.no_rebuild else restore.fetch_missing(root, args.rev)
    if missing:
        print(
            f"restore: {args.rev}'s {restore.describe(missing)} in no local cache or remote: rebuilding with `dvc repro` "
            f"from {args.rev}'s params and code (on another CPU kind than the lock's, other bytes: docs/reproducibility.md)",
            flush=True,
        )
    if restore.restore(root, args.rev, rebuild=not args.no_rebuild) is False:
        print(
            f"restore: the workspace holds {args.rev}'s params and code, and the model rebuilt from them: other bytes than "
            f"{args.rev}'s dvc.lock names, as on another CPU kind (`git status` shows dvc.lock and the reports)"
        )
    else:
        print(
            f"restore: the workspace holds {args.rev}'s params, dvc.lock, model and reports (`git status`, `dvc status` to see)"
        )


def add_restore(commands) -> None:
    parser = commands.add_parser(
        "restore",
        help="go back to a commit's params, lock file, model and reports (dvc exp apply); what no cache or remote holds is rebuilt",
    )
    parser.add_argument("rev", nargs="?", default="HEAD", help=_default("a commit, branch or tag"))
    parser.add_argument(
        "--no-rebuild", action="store_true", help="refuse, changing nothing, when an output is in no cache or remote"
    )
    parser.set_defaults(func=cmd_restore)


def cmd_sweep(args: argparse.Namespace) -> None:
    from mnist_mlp.sweeps import plan, study

    root = repo_root()
    if args.join:
        if not args.study:
            raise study.StudyError("--join needs --study NAME: the study to work on")
        study.join(root, args.study, args.jobs, args.push)
    else:
        if args.search and (args.activations or args.dropouts or args.seeds):
            raise plan.SweepError(
                "--search draws its own params; give fixed ones with --set, not --activations/--dropouts/--seeds"
            )
        preset = preset_values(root, args.preset) if args.preset else None
        grid = plan.plan(args.activations, args.dropouts, args.seeds, args.set, args.study, preset)
        experiment = configured_experiment(grid.experiment)
        definition = study.definition_from(root, grid, experiment, args.search, args.trials, args.from_workspace)
        study.start(root, grid.sweep_id, definition, args.jobs, args.push)
    print(f"next: mnist-mlp compare --study {args.study or grid.sweep_id}")


def add_sweep(commands) -> None:
    parser = commands.add_parser(
        "sweep",
        help="an Optuna study of activation x dropout x seed (or a TPE search): each trial a `dvc exp run --temp`",
    )
    grid = parser.add_argument_group("the grid")
    grid.add_argument("--activations", nargs="+", metavar="NAME", help="default: relu tanh sigmoid (or the preset's)")
    grid.add_argument("--dropouts", nargs="+", type=float, metavar="P", help="default: 0.0 0.2 0.5 (or the preset's)")
    grid.add_argument("--seeds", nargs="+", type=int, default=[], metavar="N", help="default: train.seed")
    grid.add_argument(
        "--preset",
        metavar="NAME",
        help="every trial runs params/NAME.yaml over the defaults, as `mnist-mlp preset NAME` prints it; "
        "--set keys win, e.g. --preset best --seeds 0 1 2",
    )
    grid.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="for every trial, e.g. train.epochs=2"
    )
    grid.add_argument(
        "--search", type=Path, metavar="FILE", help="a TPE search over FILE's ranges (params/search/default.yaml)"
    )
    grid.add_argument(
        "--trials", type=_positive, metavar="N", help="with --search: trials in all (default: the file's)"
    )
    grid.add_argument(
        "--from-workspace", action="store_true", help="sweep from params.yaml as it is, even where it differs from HEAD"
    )
    add_study_options(parser.add_argument_group("the study"))
    parser.set_defaults(func=cmd_sweep)


def add_study_options(group) -> None:
    group.add_argument("--jobs", "-j", type=_positive, default=2, help=_default("worker processes on this machine"))
    group.add_argument(
        "--study",
        "--sweep-id",
        dest="study",
        metavar="NAME",
        help="the study's name, also the runs' sweep_id (default: the current time, YYYYMMDD-HHMMSS)",
    )
    group.add_argument(
        "--join",
        action="store_true",
        help="work on the existing study --study NAME (its grid or space, its --set values, its commit), "
        "e.g. from another machine with the same STUDY_STORAGE and MLFLOW_TRACKING_URI",
    )
    group.add_argument(
        "--push",
        metavar="REMOTE",
        help="`dvc exp push REMOTE` each trial's experiment as it ends (a team: every clone's `dvc exp pull` gets it)",
    )


def ui_links(experiment: str, sweep_id: str) -> str:
    """The MLflow UI's saved view of the sweep: its runs table with the columns that compare settings, its charts."""
    from mnist_mlp.errors import UserError
    from mnist_mlp.tracking.ui_view import chart_view, sweep_view_url

    try:
        runs = sweep_view_url(experiment, sweep_id)  # saves the view once; both links open it
    except UserError as exc:
        return f"note: no MLflow UI view saved for the sweep ({exc})"
    return (
        f"In the MLflow UI (`make ui`): the sweep's runs {runs}\n"
        f"  and its charts (dropout x validation accuracy) {chart_view(runs)}"
    )


def cmd_compare(args: argparse.Namespace) -> None:
    from mnist_mlp.verdicts import compare, presets

    experiment = configured_experiment(args.experiment)
    if args.presets:
        table = presets.presets_table(experiment, repo_root())
        print(table.to_string(index=False))
        print(f"wrote {presets.write_report(table, experiment, args.reports)}")
        return
    if args.study:  # a grid is reported as a sweep, in the study's own MLflow experiment
        from mnist_mlp.sweeps import storage
        from mnist_mlp.verdicts import search

        study, definition = storage.load_study(repo_root(), args.study)
        if definition.kind == "search":
            print(search.search_report(study, definition, args.reports))
            return
        experiment = args.experiment or definition.experiment
    result = compare.compare(experiment, compare.ALL if args.all else args.study or args.sweep_id, local_test())
    table, picture = compare.write_report(result, args.reports)
    print(compare.settings_table(result).to_string(index=False))
    print("\n".join([compare.headline(result), *compare.notes(result)]))
    if result.sweep_id != compare.ALL:
        print(ui_links(experiment, result.sweep_id))
    print(f"wrote {table} and {picture} ({len(result.runs)} runs, sweep {result.sweep_id})")


def add_compare(commands) -> None:
    parser = commands.add_parser(
        "compare", help="reports/compare.md and figures/compare.png from the MLflow runs of a sweep"
    )
    which = parser.add_mutually_exclusive_group()
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
        "whose params it logged, ranked on validation, 95 %% intervals",
    )
    parser.add_argument("--experiment", help="MLflow experiment (default: tracking.experiment in params.yaml)")
    parser.add_argument("--reports", type=Path, default=Path("reports"), help=_default())
    parser.set_defaults(func=cmd_compare)


COMMANDS = [
    add_preset,
    add_init_store,
    add_close_stale_runs,
    add_predict,
    add_render_samples,
    add_serve,
    add_app,
    add_check_metrics,
    add_promote,
    add_check_reproducible,
    add_restore,
    add_sweep,
    add_compare,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mnist-mlp", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_cli(f"mnist-mlp {args.command}", lambda: args.func(args), store_failure)


if __name__ == "__main__":
    main()
