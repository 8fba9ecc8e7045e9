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
    sub = _command(
        commands, "data", "List known datasets and where they are, or describe one (no download).", _run_data
    )
    sub.add_argument(
        "name",
        nargs="?",
        metavar="NAME",
        help="dataset to describe (digits, fashion-mnist, cifar10, folder:PATH, ...)",
    )
    sub.add_argument("--data-dir", help="folder searched first for dataset files")
    sub.add_argument("--image-size", type=int, help="side in pixels (folders are decoded and cached at it)")
    sub.add_argument(
        "--bad-images",
        choices=("error", "skip"),
        help="folders: stop on bad image files (error, the default) or exclude them (skip)",
    )


def _run_data(args: argparse.Namespace) -> int:
    from cnnlab import config
    from cnnlab.data.describe import dataset_table, describe_dataset

    if args.name is None:
        print(dataset_table(args.data_dir))
        return 0
    keys = {
        "name": args.name,
        "data_dir": args.data_dir,
        "image_size": args.image_size,
        "bad_images": args.bad_images,
    }
    data = config.from_dict({"data": {k: v for k, v in keys.items() if v is not None}}).data
    print(describe_dataset(data))
    return 0


def _add_study(commands: argparse._SubParsersAction) -> None:
    sub = _command(commands, "study", "Run a study spec (grid × seeds × folds, stages, select, ensembles).",
                   lambda args: _usage(sub))
    actions = sub.add_subparsers(title="study commands", metavar="ACTION")
    run = actions.add_parser("run", help="run or continue a study", epilog=EPILOG,
                             description="Run a study spec, or continue it: completed runs are never re-run. "
                             "Several processes (here or on other machines sharing DIR) may run one spec "
                             "against one --storage; each run executes once.")
    run.set_defaults(run=_run_study)
    run.add_argument("spec", metavar="SPEC", help="study spec YAML (see docs/studies.md and studies/)")
    run.add_argument("--out", required=True, metavar="DIR", help="study folder (runs/, splits/, report)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a spec key, e.g. --set base.data.name=cifar10 or --set seeds=[0] "
                     "(repeatable; see docs/studies.md)")
    run.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes on this machine")
    run.add_argument("--storage", metavar="URL",
                     help="SQLAlchemy URL of the shared queue (default sqlite:///DIR/study.db; "
                     "postgresql://... across machines)")
    run.add_argument("--worker-only", action="store_true",
                     help="only work through the queue another `study run` filled; no ensembles or report")
    run.add_argument("--heartbeat", type=int, default=10, metavar="S",
                     help="seconds between heartbeats; a run silent for 3 beats is retried elsewhere")
    run.add_argument("--max-attempts", type=int, default=3, metavar="N",
                     help="tries per run whose worker died (a run that fails or diverges is not retried)")
    status = actions.add_parser("status", help="count done/running/failed/pending runs", epilog=EPILOG,
                                description="Count the done, running, failed and pending runs of a study.")
    status.set_defaults(run=_run_study_status)
    status.add_argument("dir", metavar="DIR", help="study folder")
    status.add_argument("--storage", metavar="URL", help="queue storage (default: the one in DIR/study.json)")
    status.add_argument("--json", action="store_true", help="print counts and every run as JSON")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_USAGE


def _run_study(args: argparse.Namespace) -> int:
    from cnnlab.errors import ConfigError
    from cnnlab.study import WorkerOptions, run_study

    if args.workers < 1 or args.heartbeat < 1 or args.max_attempts < 1:
        raise ConfigError("--workers, --heartbeat and --max-attempts must be at least 1")
    options = WorkerOptions(storage=args.storage, heartbeat_s=args.heartbeat, max_attempts=args.max_attempts)
    outcome = run_study(
        args.spec, args.out, workers=args.workers, worker_only=args.worker_only, options=options,
        overrides=args.set,
    )
    counts = ", ".join(f"{number} {state}" for state, number in outcome.counts.items())
    print(f"study {outcome.study_dir}: {counts} (this process trained {outcome.trained}, "
          f"found {outcome.skipped} already completed)")
    if args.worker_only:
        return 0
    from cnnlab.report import write_report

    paths = write_report(outcome.study_dir)
    print(paths.table)
    print(f"report: {paths.html}")
    return 0


def _run_study_status(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from cnnlab.study import format_status, study_status

    status = study_status(args.dir, storage=args.storage)
    if args.json:
        print(json.dumps({"study_dir": str(status.study_dir), "counts": status.counts,
                          "runs": [dataclasses.asdict(run) for run in status.runs]}, indent=2))
    else:
        print(format_status(status))
    return 0


def _add_tune(commands: argparse._SubParsersAction) -> None:
    sub = _command(
        commands, "tune", "Search hyperparameters (TPE, pruning by fold) over a YAML space.", _run_tune
    )
    sub.add_argument("spec", metavar="SPEC", help="tune spec YAML: base, space, cv (see docs/studies.md)")
    sub.add_argument("--out", required=True, metavar="DIR", help="tune folder (runs/, best.yaml, tune.json)")
    sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a spec key, e.g. --set base.data.name=cifar10 (repeatable)")
    sub.add_argument("--trials", type=int, metavar="N",
                     help="finished trials wanted over all processes sharing the storage "
                     "(default: the spec's)")
    sub.add_argument("--storage", metavar="URL",
                     help="SQLAlchemy URL shared by tune processes (default sqlite:///DIR/tune.db)")
    sub.add_argument("--heartbeat", type=int, default=10, metavar="S",
                     help="seconds between heartbeats; a trial silent for 3 beats is retried")


def _run_tune(args: argparse.Namespace) -> int:
    import yaml

    from cnnlab.errors import ConfigError
    from cnnlab.study import run_tune

    if (args.trials is not None and args.trials < 1) or args.heartbeat < 1:
        raise ConfigError("--trials and --heartbeat must be at least 1")
    outcome = run_tune(
        args.spec, args.out, trials=args.trials, storage=args.storage, heartbeat_s=args.heartbeat,
        overrides=args.set,
    )
    if outcome.best_trial is None:
        print(f"tune {outcome.out_dir}: {outcome.finished} finished trials, none completed")
        return 0
    print(f"best of {outcome.finished} finished trials: trial {outcome.best_trial}, "
          f"mean validation accuracy {outcome.best_value:.4f}")
    print(yaml.safe_dump(outcome.best_params, sort_keys=False).rstrip())
    print(f"best config: {outcome.best_file}")
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction, _add_study, _add_tune], None]] = [_add_report, _add_data]
