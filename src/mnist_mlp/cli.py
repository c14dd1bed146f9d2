"""`mnist-mlp`: the project's command line. Each subcommand is a thin wrapper over the library."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import yaml

from mnist_mlp.params import ParamsError, validate_params
from mnist_mlp.project import repo_root, run_cli


def _preset_overrides(name: str) -> list[str]:
    """`-S key=value` arguments for `dvc exp run` from params/<name>.yaml, validated first."""
    path = repo_root() / "params" / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ParamsError(f"{path}: no such preset; available: {', '.join(available) or 'none'}")
    overrides = yaml.safe_load(path.read_text()) or {}
    validate_params(overrides, source=str(path))
    arguments = []
    for section, values in overrides.items():
        for key, value in values.items():
            # YAML flow style keeps lists as [512, 512]; `...` is its end-of-document marker
            text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
            arguments += ["-S", shlex.quote(f"{section}.{key}={text}")]
    return arguments


def cmd_preset(args: argparse.Namespace) -> None:
    print(" ".join(_preset_overrides(args.name)))


def cmd_init_store(args: argparse.Namespace) -> None:
    from mnist_mlp import tracking

    experiment_id = tracking.ensure_experiment(args.experiment)
    print(f"MLflow store {tracking.tracking_uri()}, experiment '{args.experiment}' (id {experiment_id})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mnist-mlp", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    preset = commands.add_parser("preset", help="print `dvc exp run` -S overrides of a params/<name>.yaml preset")
    preset.add_argument("name", help="e.g. tutorial, fast")
    preset.set_defaults(func=cmd_preset)

    init_store = commands.add_parser("init-store", help="create the MLflow store and experiment (absolute paths)")
    init_store.add_argument("--experiment", default="mnist-mlp")
    init_store.set_defaults(func=cmd_init_store)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_cli(f"mnist-mlp {args.command}", lambda: args.func(args))


if __name__ == "__main__":
    main()
