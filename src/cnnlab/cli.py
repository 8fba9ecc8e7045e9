"""The `cnnlab` command line: parse arguments, build a config, call the library. No logic of its own.

Each command is a pair: `_add_<name>(subparsers)` declares its arguments, `_run_<name>(args)` calls the
library. The library's packages (models, data, train, study, report: each loads torch, train and study
Lightning too) are imported inside the `_run_` functions, the one place cnnlab defers imports: `cnnlab
--help` stays at a tenth of a second instead of seconds (docs/architecture.md, "Imports").
A user error (CnnlabError) prints one line and exits 2; a failed run (or a study with failed runs) exits 1,
a diverged run 3; SIGINT/SIGTERM end the command with one line saying how to resume, exit 130/143.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import json
import os
import shlex
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

import yaml

from cnnlab import config
from cnnlab.errors import (
    EXIT_DIVERGED,
    EXIT_FAILED,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_USAGE,
    CnnlabError,
    ConfigError,
    DiskFull,
    Interrupted,
    describe_os_error,
    one_line,
    printable,
)
from cnnlab.interrupts import signals_raise
from cnnlab.version import __version__

EPILOG = (
    f"Exit codes: 0 success; {EXIT_FAILED} a run failed (study: some runs failed or diverged); "
    f"{EXIT_USAGE} invalid usage, configuration or data; "
    f"{EXIT_DIVERGED} run diverged; {EXIT_SIGINT} interrupted by SIGINT (Ctrl-C), {EXIT_SIGTERM} by SIGTERM "
    "(the run is kept as interrupted and resumes)."
)


def run_program() -> NoReturn:
    """The console script and `python -m cnnlab`: `main()`, then exit without the interpreter's final
    garbage collection. `gc.freeze()` leaves the objects of torch, Lightning and matplotlib out of it: it
    walked them for ~2 s of every command's exit on two cores. atexit handlers still run."""
    try:
        code = main()
    finally:
        gc.freeze()
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """The whole command line; returns the process exit code (`run_program` exits with it)."""
    parser = build_parser()
    # File names that are not UTF-8 print escaped, never crash; each line goes out as it is printed, so a
    # study's progress piped to `tee` or a log file is there as it happens, not when a buffer fills.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace", line_buffering=True)
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a usage error argparse already printed on one line
        return int(done.code or 0)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    empty = _empty_path_argument(args)
    if empty:
        print(
            f"cnnlab: error: {empty} is empty; give a file or folder path (. for this folder)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    _expand_home(args)
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_USAGE
    try:
        with signals_raise(), _writer_thread_errors_left_to_their_owner():
            return int(args.run(args) or 0)
    except CnnlabError as error:
        hint = getattr(args, "resume_hint", None) if isinstance(error, DiskFull) else None
        resume = f"; resume with: {hint}" if hint else ""
        print(f"cnnlab: error: {one_line(str(error))}{resume}", file=sys.stderr)
        return error.exit_code
    except BrokenPipeError:  # `cnnlab models | head -1`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0
    except OSError as error:  # a full disk, a read-only or foreign folder: the user's to fix
        print(f"cnnlab: error: {describe_os_error(error)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as error:
        failure = _queue_database_failure(error)
        if failure is None:
            raise
        print(
            f"cnnlab: error: the queue's database failed ({failure}); "
            "every run keeps its checkpoints: run the same command again once the database answers",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except (Interrupted, KeyboardInterrupt) as stop:
        signum = stop.signum if isinstance(stop, Interrupted) else 2
        hint = getattr(args, "resume_hint", None)
        name = "SIGINT" if signum == 2 else stop.signal_name
        resume = f"; resume with: {hint}" if hint else ""
        if not getattr(stop, "quiet", False):  # quiet: another DDP rank (rank zero says it)
            print(f"cnnlab: interrupted by {name}{resume}", file=sys.stderr)
        return 128 + signum


@contextlib.contextmanager
def _writer_thread_errors_left_to_their_owner() -> Iterator[None]:
    """A background writer thread that keeps its error for its owner to raise (TensorBoard's event writer:
    the next flush or close of its writer raises it) prints no traceback when it dies of it: a full disk or a
    run folder removed under it ends the command on one line, from the command's own thread."""
    previous = threading.excepthook

    def hook(args: Any) -> None:
        if getattr(args.thread, "exception", None) is not args.exc_value:
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def _queue_database_failure(error: Exception) -> str | None:
    """A study or tune storage's failure (a dropped connection, a stopped server, a lock) as a message
    quotes it; None for any other error. Only a command that opened a storage (and so imported optuna) can
    raise one."""
    if "optuna" not in sys.modules:
        return None
    from cnnlab.study.queue import STORAGE_ERRORS, describe_storage_error

    return describe_storage_error(error) if isinstance(error, STORAGE_ERRORS) else None


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (like every other cnnlab error) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"cnnlab: error: {one_line(message)} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole argument parser: one sub-command per library capability."""
    parser = OneLineParser(
        prog="cnnlab",
        description="Comparative experiments with convolutional image classifiers.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in COMMANDS:
        add(commands)
    return parser


def _command(
    commands: argparse._SubParsersAction, name: str, summary: str, run: Callable
) -> argparse.ArgumentParser:
    sub = commands.add_parser(name, help=summary, description=summary, epilog=EPILOG)
    sub.set_defaults(run=run)
    return sub


TRAIN_FLAGS = {  # flag -> (dotted config key, type, help)
    "model": ("model.name", str, "architecture from `cnnlab models`"),
    "data": ("data.name", str, "dataset from `cnnlab data` (digits, fashion-mnist, folder:PATH, ...)"),
    "data_dir": ("data.data_dir", str, "folder searched first for dataset files"),
    "epochs": ("train.epochs", int, "number of epochs"),
    "batch_size": ("data.batch_size", int, "training batch size"),
    "lr": ("optim.lr", str, "peak learning rate, or auto (Lightning's lr finder); default: the recipe's"),
    "optimizer": ("optim.optimizer", str, "sgd, adam or adamw; default: the recipe's (docs/training.md)"),
    "seed": ("train.seed", int, "seed of initialisation, split, data order and augmentation"),
    "init": ("train.init", str, "scratch, torchvision:<WEIGHTS>, file:<path> or run:<run dir>"),
    "finetune": ("train.finetune", str, "full, linear (frozen backbone) or gradual"),
    "devices": ("train.devices", str, "Lightning devices (auto, 1, 2, ...)"),
    "num_nodes": ("train.num_nodes", int, "Lightning number of nodes"),
    "strategy": ("train.strategy", str, "Lightning strategy (auto, ddp, ...)"),
    "plugin": (
        "model.plugin",
        str,
        "import your own networks first: a module or `cnnlab.models` entry point",
    ),
}


def _add_overrides(sub: argparse.ArgumentParser, text: str) -> None:
    """`--set KEY=VALUE`, repeatable: the dotted-key overrides of train, study run and tune."""
    sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=text)


CHECKPOINT_HELP = "checkpoint file, run directory or export directory"
PLUGIN_HELP = "import this plugin (module or `cnnlab.models` entry point) first, for a model it registers"


def _add_train(commands: argparse._SubParsersAction) -> None:
    sub = _command(commands, "train", "Train one run and write its run directory.", _run_train)
    sub.add_argument(
        "-c",
        "--config",
        help="run config YAML (deltas from the defaults); precedence: defaults < -c < flags < --set",
    )
    _add_overrides(
        sub,
        "override any config key, e.g. --set optim.weight_decay=0 (repeatable: applied in order, a later "
        "one wins; KEY=null: the key's default)",
    )
    for flag, (key, kind, text) in TRAIN_FLAGS.items():
        sub.add_argument(f"--{flag.replace('_', '-')}", type=kind, help=f"{text} [{key}{_default_note(key)}]")
    sub.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.ckpt")
    sub.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run of another config in OUT (only the files cnnlab wrote are removed)",
    )
    sub.add_argument(
        "--out",
        required=True,
        help="run directory: new, empty, or a run of the same config (refused when it holds other files "
        "or another run; one process at a time)",
    )


# Arguments that name a file or folder; a quoted "~/runs" reaches cnnlab unexpanded by the shell.
PATH_ARGUMENTS = ("checkpoint", "config", "data_dir", "dir", "images", "out", "plugin", "spec")


def _empty_path_argument(args: argparse.Namespace) -> str | None:
    """The first path argument given as "" (an unset shell variable: `--out "$OUT"`), named as typed; such a
    path would mean the working directory, so a study or run would be written among the user's files."""
    for name in PATH_ARGUMENTS:
        if getattr(args, name, None) == "":
            return name if name in ("dir", "spec") else "--" + name.replace("_", "-")
    return None


def _expand_home(args: argparse.Namespace) -> None:
    """`~` and `~user` at the start of a path argument mean the home folder, as in the shell, never a folder
    named "~" in the working directory."""
    for name in PATH_ARGUMENTS:
        value = getattr(args, name, None)
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, name, os.path.expanduser(value))


def _default_note(key: str) -> str:
    """', default X' for a dotted key with a fixed default; '' for one that is unset (None) by default."""
    section, _, name = key.partition(".")
    default = getattr(getattr(config.RunConfig(), section), name)
    return "" if default is None else f", default {default}"


def run_config_from_args(args: argparse.Namespace) -> Any:
    """The RunConfig of `cnnlab train`: defaults <- config file <- flags <- --set."""
    tree = config.load_yaml(args.config) if args.config else {}
    flags = {
        key: getattr(args, flag)
        for flag, (key, _, _) in TRAIN_FLAGS.items()
        if getattr(args, flag) is not None
    }
    tree = config.merge(tree, flags)
    tree = config.apply_assignments(tree, args.set)
    return config.from_dict(tree)


def _run_train(args: argparse.Namespace) -> int:
    from cnnlab.train import fit

    run_config = run_config_from_args(args)
    # once this run owns the folder, --overwrite would clear what it trained: the resume goes without it
    args.resume_hint = _with_flag([word for word in args.argv if word != "--overwrite"], "--resume")
    result = fit(run_config, args.out, resume=args.resume, overwrite=args.overwrite)
    if result.rank:  # another DDP rank: it trained its shard; rank zero prints and writes
        return {"diverged": EXIT_DIVERGED, "failed": EXIT_FAILED}.get(result.status, 0)
    summary = result.summary
    from cnnlab.train.health import flags_note

    print(f"{result.status}: {_run_scores(summary)} -> {result.out_dir}{flags_note(summary)}")
    if result.status == "diverged":
        print(f"cnnlab: run diverged: {summary['reason']}", file=sys.stderr)
        return EXIT_DIVERGED
    if result.status == "failed":
        error_log = result.out_dir / "error.log"
        print(f"cnnlab: run failed: {summary['reason']} (see {error_log})", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _with_flag(argv: Sequence[str], flag: str) -> str:
    """The command line as typed, with `flag` added when missing: what to run to resume."""
    words = ["cnnlab", *argv]
    return shlex.join(words if not flag or flag in words else [*words, flag])


def _run_scores(summary: dict[str, Any]) -> str:
    """'best val_acc 0.95 (epoch 2), test acc 0.94' with whatever the run has."""
    parts = []
    if summary.get("best"):
        parts.append(f"best val_acc {summary['best']['val_acc']:.4f} (epoch {summary['best']['epoch']})")
    if summary.get("test"):
        parts.append(f"test acc {summary['test']['acc']:.4f}")
    return ", ".join(parts) or "no epoch finished"


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    sub = _command(
        commands, "evaluate", "Print a trained model's metrics on a dataset split as JSON.", _run_evaluate
    )
    sub.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    sub.add_argument("--plugin", help=PLUGIN_HELP)
    sub.add_argument("--data", help="dataset to evaluate on (default: the run's own)")
    sub.add_argument("--data-dir", help="folder searched first for dataset files")
    sub.add_argument(
        "--split",
        default="test",
        choices=("test", "val", "train"),
        help="test (default); val: the run's validation images (its splits.json); train: the whole "
        "training split",
    )


def _run_evaluate(args: argparse.Namespace) -> int:
    from cnnlab.train import evaluate_checkpoint

    _load_plugin(args.plugin)
    metrics = evaluate_checkpoint(args.checkpoint, data=args.data, split=args.split, data_dir=args.data_dir)
    print(json.dumps(metrics, indent=2, allow_nan=False))
    if metrics["loss"] is None:
        print(
            "cnnlab: warning: the loss is not a finite number (printed as null): the model outputs NaN or "
            "infinity, so its accuracy means nothing; evaluate an earlier checkpoint of the run",
            file=sys.stderr,
        )
    return 0


def _add_predict(commands: argparse._SubParsersAction) -> None:
    sub = _command(
        commands, "predict", "Predict an image folder (or a dataset's test split) to CSV.", _run_predict
    )
    sub.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    sub.add_argument(
        "--images",
        required=True,
        help="folder of images (subfolders included), or a dataset name; each row's id is the file's stem "
        "(test1/1.jpg -> 1), or its path relative to the folder where stems repeat",
    )
    sub.add_argument("--plugin", help=PLUGIN_HELP)
    sub.add_argument("--out", required=True, help="CSV file to write")
    sub.add_argument(
        "--format",
        default="kaggle",
        choices=("kaggle", "probs"),
        help="kaggle: id,label (label = class index); probs: id and one column per class name",
    )
    sub.add_argument("--data-dir", help="folder searched first for dataset files")


def _run_predict(args: argparse.Namespace) -> int:
    from cnnlab.train import predict_images

    _load_plugin(args.plugin)
    written = predict_images(args.checkpoint, args.images, args.out, fmt=args.format, data_dir=args.data_dir)
    print(f"wrote {written.path} ({written.rows} rows)")
    labels = ", ".join(f"{index} = {name}" for index, name in enumerate(written.class_names))
    print(printable(f"labels: {labels}"))
    return 0


def _load_plugin(name: str | None) -> None:
    if name:
        from cnnlab.models import load_plugin

        load_plugin(name)


def _add_export(commands: argparse._SubParsersAction) -> None:
    sub = _command(
        commands, "export", "Export weights (safetensors) and a manifest, optionally ONNX.", _run_export
    )
    sub.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    sub.add_argument("--plugin", help=PLUGIN_HELP)
    sub.add_argument("--out", required=True, help="directory to write model.safetensors and manifest.json")
    sub.add_argument("--onnx", action="store_true", help="also write model.onnx")


def _run_export(args: argparse.Namespace) -> int:
    from cnnlab.train import export_checkpoint

    _load_plugin(args.plugin)
    out = export_checkpoint(args.checkpoint, args.out, onnx=args.onnx)
    print(f"exported to {out}")
    return 0


def _add_report(commands: argparse._SubParsersAction) -> None:
    sub = _command(
        commands, "report", "Write report.html, report.md and results.csv for a study folder.", _run_report
    )
    sub.add_argument("dir", metavar="DIR", help="study folder (or any folder of run directories)")
    sub.add_argument(
        "--out",
        metavar="FOLDER",
        help="write the report files into FOLDER instead of DIR (DIR on a read-only disk, say); DIR is only "
        "read. A suite's studies get FOLDER/<study>/ each",
    )


def _run_report(args: argparse.Namespace) -> int:
    from cnnlab.report import write_report
    from cnnlab.runfolder import is_suite_folder

    try:
        if is_suite_folder(args.dir):
            paths = _write_suite_report(args.dir, args.out)
        else:
            paths = write_report(args.dir, into=args.out)
    except OSError as error:
        if args.out is None and error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise ConfigError(
                f"cannot write the report into {args.dir}: {error.strerror}; "
                "write it elsewhere with --out FOLDER (DIR is then only read)"
            ) from None
        raise
    if paths.table:
        print(paths.table)
    print(f"wrote {paths.markdown}" if paths.csv is None else f"wrote {paths.csv} and {paths.markdown}")
    print(f"report: {paths.html}")
    return 0


def _add_models(commands: argparse._SubParsersAction) -> None:
    sub = _command(
        commands,
        "models",
        "List the model zoo: name, family, input, parameters, GFLOPs and torchvision's pretrained weights.",
        _run_models,
    )
    sub.add_argument("names", nargs="*", metavar="NAME", help="only these models (default: all)")
    sub.add_argument("--plugin", help="import this plugin first, so its models are listed too")
    sub.add_argument("--json", action="store_true", help="print a JSON list (same data as the table)")
    sub.add_argument(
        "--input-size",
        metavar="CxHxW",
        help="count parameters and GFLOPs at this input for every model, e.g. 1x28x28; ImageNet-shaped nets "
        "take the small stem below 64 px, as model.stem=auto does (default: each model's own input size)",
    )
    sub.add_argument(
        "--num-classes",
        type=int,
        metavar="N",
        help="classifier outputs (default: each model's native count: 1000 for the ImageNet nets, "
        "10 for lenet5 and the CIFAR nets)",
    )


def _run_models(args: argparse.Namespace) -> int:
    from cnnlab.models import describe_zoo, format_zoo_table, parse_input_size

    _load_plugin(args.plugin)
    input_size = parse_input_size(args.input_size) if args.input_size is not None else None
    rows = describe_zoo(args.names or None, input_size=input_size, num_classes=args.num_classes)
    print(json.dumps([row.to_dict() for row in rows], indent=2) if args.json else format_zoo_table(rows))
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
    sub = _command(
        commands,
        "study",
        "Run a study spec (grid × seeds × folds, stages, select, ensembles).",
        lambda args: _usage(sub),
    )
    actions = sub.add_subparsers(title="study commands", metavar="ACTION")
    run = actions.add_parser(
        "run",
        help="run or continue a study",
        epilog=EPILOG,
        description="Run a study spec, or continue it: completed runs are never re-run. "
        "Several processes (here or on other machines sharing DIR) may run one spec "
        "against one --storage; each run executes once.",
    )
    run.set_defaults(run=_run_study)
    run.add_argument(
        "spec",
        metavar="SPEC",
        help="study spec YAML, or a suite of studies (a `studies:` list; see docs/studies.md and studies/)",
    )
    run.add_argument("--out", required=True, metavar="DIR", help="study folder (runs/, splits/, report)")
    _add_overrides(
        run,
        "override a spec key, e.g. --set base.data.name=cifar10 or --set seeds=[0]; in a suite, "
        "--set studies.<name>.<key>=VALUE or studies.*.<key>=VALUE (repeatable; see docs/studies.md)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes on this machine (at most one per core)",
    )
    run.add_argument(
        "--restart",
        action="store_true",
        help="DIR holds a study of another spec: discard that study's files (runs, splits, queue, report) "
        "and start this one; without it such a folder is refused",
    )
    run.add_argument(
        "--storage",
        metavar="URL",
        help="SQLAlchemy URL of the shared queue (default: the database server DIR/study.json records, "
        "else sqlite:///DIR/study.db; postgresql://... across machines)",
    )
    run.add_argument(
        "--worker-only",
        action="store_true",
        help="only work through the queue another `study run` fills (waits up to 10 min for it); "
        "no ensembles or report",
    )
    run.add_argument(
        "--heartbeat",
        type=int,
        metavar="S",
        help="seconds between heartbeats (default 10); a run silent for 3 beats is retried elsewhere",
    )
    run.add_argument(
        "--max-attempts",
        type=int,
        metavar="N",
        help="tries per run whose worker died before finishing an epoch (default 3; a run that fails or "
        "diverges is not retried)",
    )
    status = actions.add_parser(
        "status",
        help="count completed/running/interrupted/failed/diverged/pending runs",
        epilog=EPILOG,
        description="Count a study's runs by state: completed, running, interrupted, failed, diverged, "
        "pending; list the ones that need attention.",
    )
    status.set_defaults(run=_run_study_status)
    status.add_argument("dir", metavar="DIR", help="study folder")
    status.add_argument("--storage", metavar="URL", help="queue storage (default: the one in DIR/study.json)")
    status.add_argument("--json", action="store_true", help="print counts and every run as JSON")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_USAGE


def _run_study(args: argparse.Namespace) -> int:
    from cnnlab.study.queue import WorkerOptions
    from cnnlab.study.runner import run_study

    if any(value is not None and value < 1 for value in (args.workers, args.heartbeat, args.max_attempts)):
        raise ConfigError("--workers, --heartbeat and --max-attempts must be at least 1")
    cores = os.cpu_count() or 1
    if args.workers > cores:
        raise ConfigError(
            f"--workers {args.workers} is more than this machine's {cores} CPU cores (a worker trains one "
            f"run at a time on its share of them); use at most {cores}, and `study run --worker-only` on "
            "other machines for more"
        )
    given = {"storage": args.storage, "heartbeat_s": args.heartbeat, "max_attempts": args.max_attempts}
    options = WorkerOptions(**{key: value for key, value in given.items() if value is not None})
    args.resume_hint = _with_flag([word for word in args.argv if word != "--restart"], "")
    from cnnlab.study.suite import is_suite

    if is_suite(args.spec):
        return _run_suite(args, options)
    outcome = run_study(args.spec, args.out, **_study_run_options(args, options))
    print(
        f"study {outcome.study_dir}: {_counts(outcome)} (this process trained {outcome.trained}, "
        f"found {outcome.skipped} already completed)"
    )
    unfinished = outcome.counts["failed"] + outcome.counts["diverged"]
    if args.worker_only:
        return EXIT_FAILED if unfinished else 0
    from cnnlab.report import write_report

    paths = write_report(outcome.study_dir)
    print(paths.table)
    print(f"report: {paths.html}")
    return _exit_for_unfinished(unfinished, outcome.study_dir)


def _study_run_options(args: argparse.Namespace, options: Any) -> dict[str, Any]:
    """The keyword arguments `run_study` and `run_suite` share, from `study run`'s flags."""
    return {
        "workers": args.workers,
        "worker_only": args.worker_only,
        "options": options,
        "overrides": args.set,
        "restart": args.restart,
    }


def _counts(outcome: Any) -> str:
    """'3 completed, 1 failed': a study outcome's non-zero run counts."""
    return ", ".join(f"{number} {state}" for state, number in outcome.counts.items() if number)


def _exit_for_unfinished(unfinished: int, folder: Any) -> int:
    """Exit 1 with one line when runs failed or diverged, else 0."""
    if not unfinished:
        return 0
    message = f"cnnlab: {unfinished} run(s) failed or diverged; see `cnnlab study status {folder}`"
    print(message, file=sys.stderr)
    return EXIT_FAILED


def _run_suite(args: argparse.Namespace, options: Any) -> int:
    """`study run` of a suite spec: every sub-study into DIR/<name>/, then one report with a section each."""
    from cnnlab.study.suite import run_suite

    suite = run_suite(args.spec, args.out, **_study_run_options(args, options))
    for name, outcome in suite.outcomes:
        print(
            f"study {name}: {_counts(outcome)} (this process trained {outcome.trained}, "
            f"found {outcome.skipped} done)"
        )
    if not args.worker_only:
        paths = _write_suite_report(suite.out_dir)
        if paths.table:
            print(paths.table)
        print(f"report: {paths.html}")
    return _exit_for_unfinished(suite.unfinished, suite.out_dir)


def _write_suite_report(folder: Any, into: Any = None) -> Any:
    """Each sub-study's own report, then the suite's report.html / report.md with a section per sub-study."""
    from cnnlab.report.suite import write_suite_report

    return write_suite_report(folder, into)


def _run_study_status(args: argparse.Namespace) -> int:
    from cnnlab.runfolder import is_suite_folder, suite_studies
    from cnnlab.study.status import format_status, study_status

    if is_suite_folder(args.dir):
        return _print_suite_status(suite_studies(args.dir), args)
    status = study_status(args.dir, storage=args.storage)
    if args.json:
        print(json.dumps(status.to_json(), indent=2))
    else:
        print(format_status(status))
    return 0


def _print_suite_status(studies: Sequence[tuple[str, Any]], args: argparse.Namespace) -> int:
    """`study status` of a suite folder: each sub-study's status (a sub-study not started yet says so)."""
    from cnnlab.study.status import format_status, study_status

    found = {name: study_status(folder) for name, folder in studies if (folder / "study.json").is_file()}
    if args.json:
        shown = {name: status.to_json() for name, status in found.items()}
        print(
            json.dumps({"studies": shown, "not_started": [n for n, _ in studies if n not in found]}, indent=2)
        )
        return 0
    for name, folder in studies:
        print(f"[{name}] " + (format_status(found[name]) if name in found else f"{folder}: not started"))
    return 0


def _add_tune(commands: argparse._SubParsersAction) -> None:
    sub = _command(
        commands, "tune", "Search hyperparameters (TPE, pruning by fold) over a YAML space.", _run_tune
    )
    sub.add_argument("spec", metavar="SPEC", help="tune spec YAML: base, space, cv (see docs/studies.md)")
    sub.add_argument("--out", required=True, metavar="DIR", help="tune folder (runs/, best.yaml, tune.json)")
    _add_overrides(sub, "override a spec key, e.g. --set base.data.name=cifar10 (repeatable)")
    sub.add_argument(
        "--trials",
        type=int,
        metavar="N",
        help="finished trials wanted over all processes sharing the storage (default: the spec's)",
    )
    sub.add_argument(
        "--storage",
        metavar="URL",
        help="SQLAlchemy URL shared by tune processes (default sqlite:///DIR/tune.db)",
    )
    sub.add_argument(
        "--heartbeat",
        type=int,
        metavar="S",
        help="seconds between heartbeats (default 10); a trial silent for 3 beats is retried",
    )
    sub.add_argument(
        "--restart",
        action="store_true",
        help="DIR holds the search of another tune spec: discard that search's files (runs, queue, "
        "best.yaml, tune.json) and start this one; without it such a folder is refused",
    )


def _run_tune(args: argparse.Namespace) -> int:
    from cnnlab.study.tune import run_tune

    if any(value is not None and value < 1 for value in (args.trials, args.heartbeat)):
        raise ConfigError("--trials and --heartbeat must be at least 1")
    # the same command, without --restart, goes on with the trials left
    args.resume_hint = _with_flag([word for word in args.argv if word != "--restart"], "")
    outcome = run_tune(
        args.spec,
        args.out,
        trials=args.trials,
        storage=args.storage,
        heartbeat_s=args.heartbeat,
        overrides=args.set,
        restart=args.restart,
    )
    if outcome.best_trial is None:
        print(f"tune {outcome.out_dir}: {outcome.finished} finished trials, none completed")
        return 0
    print(
        f"best of {outcome.finished} finished trials: trial {outcome.best_trial}, "
        f"mean validation accuracy {outcome.best_value:.4f}"
    )
    print(yaml.safe_dump(outcome.best_params, sort_keys=False).rstrip())
    print(f"best config: {outcome.best_file}")
    return 0


def _add_explain(commands: argparse._SubParsersAction) -> None:
    sub = _command(
        commands,
        "explain",
        "Write Grad-CAM overlays (where the model looks) for a folder of your own images.",
        _run_explain,
    )
    sub.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    sub.add_argument(
        "--images", required=True, help="folder of image files, subfolders included (decoded as in training)"
    )
    sub.add_argument("--out", required=True, help="folder to write one <image name>.png overlay per image")
    sub.add_argument("--plugin", help=PLUGIN_HELP)


def _run_explain(args: argparse.Namespace) -> int:
    from cnnlab.train.gradcam import explain_images

    _load_plugin(args.plugin)
    for explained in explain_images(args.checkpoint, args.images, args.out):
        prediction = f"predicted {explained.predicted} ({explained.probability:.1%})"
        print(f"{explained.name}: {prediction} -> {explained.path}")
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_train,
    _add_evaluate,
    _add_predict,
    _add_export,
    _add_report,
    _add_models,
    _add_data,
    _add_study,
    _add_tune,
    _add_explain,
]
