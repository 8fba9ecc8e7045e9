"""The run folder: its file names, the result.json schema, the one reader and writer of results,
predictions and metrics, the one vocabulary of run states, and the lock that gives a folder one owner.

Every other module (train, study, status, report) reads and writes a run's files through this one, so a
file's format has exactly one owner. It imports nothing from models, data, train, study or report.

```
run_dir/
  .cnnlab-run          marker and lock: {"run_id", "pid", "host"} of the process that last held the folder
  config.yaml          the resolved config (written first)
  result.json          RunResultFile (written last; "completed" marks a finished run)
  metrics.csv          one row per epoch (METRIC_COLUMNS)
  predictions/{val,test}.npz   probs (N, K) float32, labels (N,) int64, indices (N,) int64
  checkpoints/{last,best}.ckpt
  tensorboard/         event files
  error.log            traceback of a failed run
  bad_images.txt       folder images excluded by bad_images: skip
  splits.json          the run's own splits (runs outside a study)
```
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import io as text_io
import json
import math
import os
import shutil
import socket
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from cnnlab import io
from cnnlab.errors import CnnlabError

MARKER_FILE = ".cnnlab-run"
CONFIG_FILE = "config.yaml"
RESULT_FILE = "result.json"
METRICS_FILE = "metrics.csv"
ERROR_LOG = "error.log"
BAD_IMAGES_FILE = "bad_images.txt"
SPLITS_FILE = "splits.json"
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
BEST_CHECKPOINT = "best.ckpt"
PREDICTIONS_DIR = "predictions"
TENSORBOARD_DIR = "tensorboard"
PREDICTION_SPLITS = ("val", "test")
METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s")

# The run states, used by train (result.json), the study queue, `study status` and the report.
PENDING = "pending"  # planned, not started (or waiting for a retry)
RUNNING = "running"  # a live worker holds it
COMPLETED = "completed"  # finished; never trained again
FAILED = "failed"  # stopped by an error (error.log), or its worker died on every attempt
DIVERGED = "diverged"  # stopped on a non-finite loss; the last good checkpoint is kept
INTERRUPTED = "interrupted"  # stopped by SIGINT/SIGTERM (or its worker vanished); resumes from its checkpoint
STATES = (COMPLETED, RUNNING, INTERRUPTED, FAILED, DIVERGED, PENDING)
RESULT_STATES = (COMPLETED, FAILED, DIVERGED, INTERRUPTED)  # what result.json can say
FINISHED_STATES = (COMPLETED, FAILED, DIVERGED)  # final: a study does not run these again


class RunFolderError(CnnlabError):
    """A run folder cannot be used: foreign files, another run, in use, or a malformed file."""


class EpochScores(TypedDict, total=False):
    epoch: int
    val_acc: float | None
    val_loss: float | None
    train_acc: float
    train_loss: float


class RunResultFile(TypedDict, total=False):
    """result.json of a run (docs/architecture.md); numbers are finite or null."""

    run_id: str
    status: str  # one of RESULT_STATES
    reason: str | None
    model: str
    dataset: str
    class_names: list[str]
    epochs_run: int
    best: EpochScores | None
    last: EpochScores | None
    test: dict[str, float] | None  # {"acc", "loss"}
    per_class_accuracy: dict[str, float] | None
    params: int
    gflops: float
    wall_time_s: float
    train_time_s: float
    train_images_per_s: float | None
    config: dict[str, Any]
    tags: dict[str, Any]
    provenance: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Predictions:
    """One split's saved class probabilities, sorted by index into the source split."""

    probs: np.ndarray  # (N, K) float64
    labels: np.ndarray  # (N,) int64
    indices: np.ndarray  # (N,) int64


# --- result.json -------------------------------------------------------------------------------------------


def write_result(folder: str | Path, summary: Mapping[str, Any]) -> Path:
    """Write result.json (or an ensemble's) atomically as strict JSON: non-finite numbers become null."""
    text = json.dumps(_finite(summary), indent=2, allow_nan=False, default=_json_default) + "\n"
    return io.atomic_write_text(Path(folder) / RESULT_FILE, text)


def read_result(folder: str | Path) -> dict[str, Any] | None:
    """The folder's result.json, None when there is none; a file that is not a result is a RunFolderError."""
    path = Path(folder) / RESULT_FILE
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFolderError(f"cannot read {path}: {error}") from None
    if not isinstance(result, dict) or not ("status" in result or result.get("kind") == "ensemble"):
        raise RunFolderError(f"{path} is not a run result (expected a mapping with a status)")
    return result


def completed_result(folder: str | Path) -> dict[str, Any] | None:
    """The result of a run whose result.json says completed, else None."""
    result = read_result(folder)
    return result if result is not None and result.get("status") == COMPLETED else None


# --- predictions and metrics -------------------------------------------------------------------------------


def predictions_path(folder: str | Path, split: str) -> Path:
    """Where a run (or ensemble) keeps the predictions of `split` (val or test)."""
    return Path(folder) / PREDICTIONS_DIR / f"{split}.npz"


def write_predictions(
    folder: str | Path, split: str, probs: np.ndarray, labels: np.ndarray, indices: np.ndarray
) -> Path:
    """Save one split's probabilities, labels and source indices atomically."""
    path = predictions_path(folder, split)
    with io.atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            probs=np.asarray(probs, dtype=np.float32),
            labels=np.asarray(labels, dtype=np.int64),
            indices=np.asarray(indices, dtype=np.int64),
        )
    return path


def read_predictions(folder: str | Path, split: str) -> Predictions | None:
    """One split's predictions sorted by source index; None when absent; a bad file is a RunFolderError."""
    path = predictions_path(folder, split)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            probs = np.asarray(data["probs"], dtype=np.float64)
            labels = np.asarray(data["labels"], dtype=np.int64)
            indices = np.asarray(data["indices"], dtype=np.int64) if "indices" in data else None
    except (OSError, KeyError, ValueError, EOFError) as error:
        raise RunFolderError(
            f"cannot read predictions {path}: {error}; expected keys probs, labels, indices"
        ) from None
    indices = np.arange(len(labels)) if indices is None else indices
    if probs.ndim != 2 or len(probs) != len(labels) or len(indices) != len(labels):
        raise RunFolderError(f"{path}: probs, labels and indices disagree in length")
    order = np.argsort(indices, kind="stable")
    return Predictions(probs[order], labels[order], indices[order])


def write_metrics(folder: str | Path, rows: Sequence[Mapping[str, float]]) -> Path:
    """metrics.csv: a header and one row per epoch, written atomically."""
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return io.atomic_write_text(Path(folder) / METRICS_FILE, buffer.getvalue())


def read_metrics(folder: str | Path) -> dict[str, np.ndarray] | None:
    """metrics.csv as float columns (missing cells NaN), None when absent or empty."""
    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise RunFolderError(f"cannot read {path}: {error}") from None
    if not rows or "epoch" not in rows[0]:
        return None
    columns = [name for name in METRIC_COLUMNS if name in rows[0]]
    return {name: np.array([_float(row.get(name)) for row in rows], dtype=np.float64) for name in columns}


def epochs_recorded(folder: str | Path) -> int:
    """How many epochs metrics.csv records (0 when it is absent or unreadable): a run's progress."""
    try:
        metrics = read_metrics(folder)
    except RunFolderError:
        return 0
    return 0 if metrics is None else len(metrics["epoch"])


def checkpoint_path(folder: str | Path, name: str = LAST_CHECKPOINT) -> Path:
    """checkpoints/<name> of a run folder."""
    return Path(folder) / CHECKPOINTS_DIR / name


# --- ownership and the lock --------------------------------------------------------------------------------


def is_run_folder(folder: str | Path) -> bool:
    """A folder cnnlab made for a run: its marker, or (older runs) a config.yaml beside a result.json."""
    folder = Path(folder)
    return (folder / MARKER_FILE).is_file() or (
        (folder / CONFIG_FILE).is_file() and (folder / RESULT_FILE).is_file()
    )


def folder_run_id(folder: str | Path) -> str | None:
    """The run id recorded in a run folder (marker first, then result.json), None when it has none."""
    folder = Path(folder)
    with contextlib.suppress(OSError, ValueError, AttributeError):
        run_id = json.loads((folder / MARKER_FILE).read_text()).get("run_id")
        if run_id:
            return str(run_id)
    with contextlib.suppress(RunFolderError):
        result = read_result(folder)
        if result and result.get("run_id"):
            return str(result["run_id"])
    return None


def check_folder(folder: str | Path, run_id: str, *, overwrite: bool = False) -> None:
    """Refuse a folder that holds anything but this run: foreign files, or another run (unless overwrite)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"--out {_quote(folder)} is a file, not a folder; give a folder path")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    if not is_run_folder(folder):
        raise RunFolderError(
            f"--out {_quote(folder)} holds files that cnnlab did not write; "
            "give an empty or new folder (cnnlab never deletes files it did not write)"
        )
    existing = folder_run_id(folder)
    if existing is not None and existing != run_id and not overwrite:
        status = (read_result(folder) or {}).get("status", "unfinished")
        raise RunFolderError(
            f"--out {_quote(folder)} holds another run ({existing}, {status}) with a different config than "
            f"this one ({run_id}); use another --out, or --overwrite to replace it"
        )


@contextlib.contextmanager
def hold(folder: str | Path, run_id: str) -> Iterator[Path]:
    """Own a run folder while the body runs: an exclusive OS lock (released on any death) on its marker.

    A second process gets a RunFolderBusy naming the holder. A folder this call created is removed again
    when the body fails before writing anything but the marker.
    """
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / MARKER_FILE, "a+")  # noqa: SIM115 - held open as the lock
    except OSError as error:
        raise RunFolderError(f"cannot write the run folder {_quote(folder)}: {error.strerror}") from None
    try:
        _lock(handle, folder)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname()}))
        handle.flush()
        yield folder
    except BaseException:
        if created and [p.name for p in folder.iterdir()] == [MARKER_FILE]:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        handle.close()  # closing releases the lock


class RunFolderBusy(RunFolderError):
    """Another live process holds the run folder."""


def _lock(handle: Any, folder: Path) -> None:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(handle)
        raise RunFolderBusy(
            f"run folder {_quote(folder)} is in use by {holder}; wait for it to finish or use another --out"
        ) from None


def _holder(handle: Any) -> str:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        handle.seek(0)
        info = json.loads(handle.read())
        return f"process {info['pid']} on {info['host']}"
    return "another process"


def is_held(folder: str | Path) -> bool:
    """Does another process hold this run folder right now? (A quick look; `hold` is the real test.)"""
    path = Path(folder) / MARKER_FILE
    if not path.is_file():
        return False
    try:
        with open(path) as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


# Files a fresh start (or --overwrite) may remove: only what cnnlab writes, never anything else.
OWN_FILES = (
    CONFIG_FILE,
    RESULT_FILE,
    METRICS_FILE,
    ERROR_LOG,
    BAD_IMAGES_FILE,
    SPLITS_FILE,
    f"{CHECKPOINTS_DIR}/{LAST_CHECKPOINT}",
    f"{CHECKPOINTS_DIR}/{BEST_CHECKPOINT}",
    *(f"{PREDICTIONS_DIR}/{split}.npz" for split in PREDICTION_SPLITS),
)


def clear_run_files(folder: str | Path) -> None:
    """Remove what cnnlab wrote into a run folder (not the marker); other files stay untouched."""
    folder = Path(folder)
    for name in OWN_FILES:
        (folder / name).unlink(missing_ok=True)
    board = folder / TENSORBOARD_DIR
    if board.is_dir():
        for path in board.iterdir():
            if path.name.startswith("events.out.tfevents.") or path.name == "hparams.yaml":
                path.unlink(missing_ok=True)
    for name in (CHECKPOINTS_DIR, PREDICTIONS_DIR, TENSORBOARD_DIR):
        with contextlib.suppress(OSError):
            (folder / name).rmdir()  # only when empty


# --- helpers -----------------------------------------------------------------------------------------------


def _quote(path: Path) -> str:
    """A path for a one-line message: control characters escaped, long paths shortened."""
    text = str(path)
    return repr(text if len(text) <= 160 else text[:70] + "..." + text[-70:])


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if isinstance(value, (np.floating, np.integer)):
        return _finite(value.item())
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
