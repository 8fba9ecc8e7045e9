"""The `cnnlab` command line: parse arguments, build a config, call the library. No logic of its own.

Each command is a pair: `_add_<name>(subparsers)` declares its arguments, `_run_<name>(args)` calls the
library. Library modules are imported inside the `_run_` functions so `cnnlab --help` stays fast.
A user error (CnnlabError) prints one line and exits 2; a diverged run exits 3.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from cnnlab.errors import EXIT_DIVERGED, EXIT_USAGE, CnnlabError

EPILOG = f"Exit codes: 0 success; {EXIT_USAGE} invalid usage, configuration or data; {EXIT_DIVERGED} run diverged."


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.run(args) or 0)
    except CnnlabError as error:
        print(f"cnnlab: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("cnnlab: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The whole argument parser: one sub-command per library capability."""
    parser = argparse.ArgumentParser(
        prog="cnnlab",
        description="Comparative experiments with convolutional image classifiers.",
        epilog=EPILOG,
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in COMMANDS:
        add(commands)
    return parser


def _command(commands: argparse._SubParsersAction, name: str, summary: str, run: Callable) -> argparse.ArgumentParser:
    sub = commands.add_parser(name, help=summary, description=summary, epilog=EPILOG)
    sub.set_defaults(run=run)
    return sub


def _add_report(commands: argparse._SubParsersAction) -> None:
    sub = _command(
        commands, "report", "Write report.html, report.md and results.csv for a study folder.", _run_report
    )
    sub.add_argument("dir", metavar="DIR", help="study folder (or any folder of run directories)")


def _run_report(args: argparse.Namespace) -> int:
    from cnnlab.report import write_report

    paths = write_report(args.dir)
    print(paths.table)
    print(f"wrote {paths.csv} and {paths.markdown}")
    print(f"report: {paths.html}")
    return 0


def _add_data(commands: argparse._SubParsersAction) -> None:
    sub = _command(commands, "data", "List known datasets and where they are, or describe one (no download).",
                   _run_data)
    sub.add_argument("name", nargs="?", metavar="NAME",
                     help="dataset to describe (digits, fashion-mnist, cifar10, folder:PATH, ...)")
    sub.add_argument("--data-dir", help="folder searched first for dataset files")
    sub.add_argument("--image-size", type=int, help="side in pixels (folders are decoded and cached at it)")
    sub.add_argument("--bad-images", choices=("error", "skip"),
                     help="folders: stop on bad image files (error, the default) or exclude them (skip)")


def _run_data(args: argparse.Namespace) -> int:
    from cnnlab import config
    from cnnlab.data.describe import dataset_table, describe_dataset

    if args.name is None:
        print(dataset_table(args.data_dir))
        return 0
    keys = {"name": args.name, "data_dir": args.data_dir, "image_size": args.image_size,
            "bad_images": args.bad_images}
    data = config.from_dict({"data": {k: v for k, v in keys.items() if v is not None}}).data
    print(describe_dataset(data))
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_report, _add_data]
