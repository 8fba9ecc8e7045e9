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
  images/{augmented,hardest,confused,gradcam}.npz   thumbnails for the report (ImageSamples)
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

from cnnlab import config as cfg
from cnnlab import safeio
from cnnlab.config import quoted
from cnnlab.errors import CnnlabError, ConfigError, describe_os_error

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
IMAGES_DIR = "images"
# images/<kind>.npz, written at the end of a run: augmented training samples, the highest-loss evaluation
# images, misclassified images of the most-confused class pairs, and Grad-CAM maps of a few images.
IMAGE_KINDS = ("augmented", "hardest", "confused", "gradcam")
METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s")
TEST_COLUMNS = ("test_loss", "test_acc")  # train.test_every_epoch only: written when the rows have them

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

# Names of a study folder that the study (which writes them) and the report (which reads them) share; they
# live here, below both, because the report never imports cnnlab.study.
PLAN_FILE = "study.json"  # a study's expanded plan: its stages and runs in spec order
SPEC_FILE = "study.yaml"  # the study spec as given (with --set overrides applied)
RUNS_DIR = "runs"  # a study's (and a tune's) run folders: runs/<run_id>/
SUITE_FILE = "suite.json"  # a suite folder: its name and sub-studies, in order (study/suite.py writes it)
# A tune folder's own files (study/tune.py writes them); any of them marks a folder as a tune's
TUNE_SPEC_FILE = "tune.yaml"
TUNE_SUMMARY_FILE = "tune.json"
TUNE_STORAGE_FILE = "tune.db"
TUNE_BEST_FILE = "best.yaml"
TUNE_FILES = (TUNE_SPEC_FILE, TUNE_SUMMARY_FILE, TUNE_STORAGE_FILE, TUNE_BEST_FILE)
ROLE_FINAL = "final"  # tags.role of a run retrained on all training data after selection


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
    # train.precision as trained: {"precision", "requested", "reason", "probe": figures or null}
    # (cnnlab.train.precision.PrecisionChoice.as_dict)
    precision: dict[str, Any]
    config: dict[str, Any]
    tags: dict[str, Any]
    provenance: dict[str, Any]
    flags: list[str]  # completed runs: why it may not have learned (train/health.py); [] when it did


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
    return safeio.atomic_write_text(Path(folder) / RESULT_FILE, text)


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
    problem = result_problem(result)
    if problem:
        raise RunFolderError(
            f"{path}: {problem}; the file was edited or damaged (rerun the run to rewrite it)"
        )
    return result


# key → (low, high) for the numbers a result holds; None is always allowed (not measured)
_SCORES = {"val_acc": (0.0, 1.0), "train_acc": (0.0, 1.0), "acc": (0.0, 1.0)}
_LOSSES = ("val_loss", "train_loss", "loss")


def result_problem(result: Mapping[str, Any]) -> str | None:
    """What is wrong with a result mapping's status and numbers, or None: scores finite in [0, 1], losses
    finite and 0 or more, per-class accuracies in [0, 1]."""
    if result.get("kind") != "ensemble" and result.get("status") not in RESULT_STATES:
        return f"status {result.get('status')!r} is not one of {', '.join(RESULT_STATES)}"
    for section in ("best", "last", "test", "val"):
        scores = result.get(section)
        if scores is None:
            continue
        if not isinstance(scores, Mapping):
            return f"{section} must be a mapping or null"
        for key, value in scores.items():
            problem = _loss_problem(value) if key in _LOSSES else _number_problem(value, _SCORES.get(key))
            if problem:
                return f"{section}.{key}={value!r} {problem}"
    per_class = result.get("per_class_accuracy")
    if per_class is not None:
        if not isinstance(per_class, Mapping):
            return "per_class_accuracy must be a mapping or null"
        for name, value in per_class.items():
            problem = _number_problem(value, (0.0, 1.0))
            if problem:
                return f"per_class_accuracy[{name!r}]={value!r} {problem}"
    return _shape_problem(result) or _cost_problem(result)


_COSTS = ("train_time_s", "wall_time_s", "train_images_per_s", "params", "gflops")


def _shape_problem(result: Mapping[str, Any]) -> str | None:
    """config must be a mapping of mappings, tags a mapping, the seed and fold whole numbers (or absent)."""
    config = result.get("config")
    if config is not None and not (
        isinstance(config, Mapping) and all(isinstance(part, Mapping) for part in config.values())
    ):
        return "config must be a mapping of sections (data, model, train, ...)"
    for name in ("tags", "provenance"):
        if result.get(name) is not None and not isinstance(result.get(name), Mapping):
            return f"{name} must be a mapping or null"
    numbers = [("config.train.seed", (config or {}).get("train", {}).get("seed"))]
    numbers += [("config.data.fold", (config or {}).get("data", {}).get("fold"))]
    numbers += [("provenance.seed", (result.get("provenance") or {}).get("seed"))]
    for name, value in numbers:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            return f"{name}={value!r} is not a whole number"
    return None


def _cost_problem(result: Mapping[str, Any]) -> str | None:
    """Times, throughput, parameter counts and GFLOPs are finite and 0 or more (or null: not measured)."""
    for key in _COSTS:
        problem = _number_problem(result.get(key), (0.0, math.inf))
        if problem:
            return f"{key}={result.get(key)!r} {problem}"
    return None


def _loss_problem(value: Any) -> str | None:
    """A loss may be NaN or infinite (a diverged run's last loss), never text or negative."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return _number_problem(value, (0.0, math.inf))


def _number_problem(value: Any, bounds: tuple[float, float] | None) -> str | None:
    if bounds is None or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite_number(value):
        return "is not a finite number"
    low, high = bounds
    return None if low <= value <= high else f"is outside [{low:g}, {high:g}]"


def _finite_number(value: float) -> bool:
    """Whether a JSON number is finite as a float (an integer too big for a float is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


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
    with safeio.atomic_path(path) as tmp, open(tmp, "wb") as handle:
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
    tested = rows and all(name in rows[-1] for name in TEST_COLUMNS)
    columns = METRIC_COLUMNS + TEST_COLUMNS if tested else METRIC_COLUMNS
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return safeio.atomic_write_text(Path(folder) / METRICS_FILE, buffer.getvalue())


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
    columns = [name for name in METRIC_COLUMNS + TEST_COLUMNS if name in rows[0]]
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


# --- image samples (images/<kind>.npz) ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageSamples:
    """Thumbnails a run saved at its end, with what a caption needs: true class, file name, prediction."""

    split: str  # where the images come from: train (augmented), test or val
    images: np.ndarray  # (N, C, H, W) uint8, C = 1 or 3
    labels: np.ndarray  # (N,) int64 true class
    indices: np.ndarray  # (N,) int64 index into the split (the row of predictions/<split>.npz)
    ids: tuple[str, ...]  # file stem (folder datasets) or "#<index>"
    probs: np.ndarray | None = None  # (N, K) float32 predicted probabilities (evaluation images)
    maps: np.ndarray | None = None  # (N, H, W) float32 in [0, 1]: Grad-CAM of the predicted class
    variants: np.ndarray | None = None  # (N,) int64, augmented: 0 the original, 1.. augmentation draws

    def __len__(self) -> int:
        return int(len(self.labels))


_SAMPLE_ARRAYS = ("probs", "maps", "variants")


def image_samples_path(folder: str | Path, kind: str) -> Path:
    """images/<kind>.npz of a run folder (kind: one of IMAGE_KINDS)."""
    if kind not in IMAGE_KINDS:
        raise ValueError(f"unknown image kind {kind!r}; known: {', '.join(IMAGE_KINDS)}")
    return Path(folder) / IMAGES_DIR / f"{kind}.npz"


def write_image_samples(folder: str | Path, kind: str, samples: ImageSamples) -> Path:
    """Save thumbnails compressed and atomically; Grad-CAM maps are stored as uint8 (1/255 steps)."""
    arrays: dict[str, np.ndarray] = {
        "split": np.asarray(samples.split),
        "images": np.asarray(samples.images, dtype=np.uint8),
        "labels": np.asarray(samples.labels, dtype=np.int64),
        "indices": np.asarray(samples.indices, dtype=np.int64),
        "ids": np.asarray(samples.ids, dtype=np.str_).reshape(-1),
    }
    if samples.probs is not None:
        arrays["probs"] = np.asarray(samples.probs, dtype=np.float32)
    if samples.maps is not None:
        arrays["maps"] = np.rint(255 * np.clip(samples.maps, 0, 1)).astype(np.uint8)
    if samples.variants is not None:
        arrays["variants"] = np.asarray(samples.variants, dtype=np.int64)
    path = image_samples_path(folder, kind)
    with safeio.atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    return path


def read_image_samples(folder: str | Path, kind: str) -> ImageSamples | None:
    """One kind of saved thumbnails; None when absent; a malformed file is a RunFolderError."""
    path = image_samples_path(folder, kind)
    if not path.is_file():
        return None
    expected = "split, images, labels, indices, ids (optional probs, maps, variants)"
    try:
        with np.load(path, allow_pickle=False) as data:
            fields = {key: data[key] for key in ("split", "images", "labels", "indices", "ids")}
            optional = {key: data[key] for key in _SAMPLE_ARRAYS if key in data}
    except (OSError, KeyError, ValueError, EOFError) as error:
        raise RunFolderError(f"cannot read {path}: {error}; expected keys {expected}") from None
    if "maps" in optional:
        optional["maps"] = optional["maps"].astype(np.float32) / 255
    samples = ImageSamples(
        split=str(fields["split"]),
        images=fields["images"].astype(np.uint8),
        labels=fields["labels"].astype(np.int64),
        indices=fields["indices"].astype(np.int64),
        ids=tuple(str(item) for item in fields["ids"]),
        **optional,
    )
    _check_samples(path, samples)
    return samples


def _check_samples(path: Path, samples: ImageSamples) -> None:
    """Every array has one entry per image; images are (N, 1|3, H, W); maps match the images' side."""
    count = len(samples.labels)
    sizes = [len(samples.images), len(samples.indices), len(samples.ids)]
    sizes += [len(value) for value in (samples.probs, samples.maps, samples.variants) if value is not None]
    shaped = samples.images.ndim == 4 and samples.images.shape[1] in (1, 3)
    if samples.maps is not None:
        shaped = shaped and samples.maps.shape[1:] == samples.images.shape[2:]
    if samples.probs is not None:
        shaped = shaped and samples.probs.ndim == 2
    if any(size != count for size in sizes) or not shaped:
        raise RunFolderError(f"{path}: images, labels, indices, ids, probs and maps disagree in shape")


# --- ownership and the lock --------------------------------------------------------------------------------


def resolved_folder(path: str | Path) -> Path:
    """The absolute, resolved path of a folder a user named (a run, study, tune, suite or report folder); a
    symbolic link on its path that loops is one line (CnnlabError, exit 2), not pathlib's RuntimeError."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as error:
        raise CnnlabError(
            f"cannot use the folder {quoted(path)}: {error}; a symbolic link on its path points in a "
            "loop (or cannot be followed); give a real folder"
        ) from None


def is_run_folder(folder: str | Path) -> bool:
    """A folder cnnlab made for a run: its marker, or (older runs) a config.yaml beside a result.json that
    records a run id. A user's config.yaml and result.json of another tool are not a run."""
    folder = Path(folder)
    if (folder / MARKER_FILE).is_file():
        return True
    return (folder / CONFIG_FILE).is_file() and folder_run_id(folder) is not None


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


def non_utf8_out_problem(folder: Path) -> str | None:
    """Why an --out folder whose path is not UTF-8 text cannot be used (TensorBoard cannot name its files
    there: every run would fail mid-way), or None when it is UTF-8."""
    try:
        str(folder.absolute()).encode("utf-8")
    except UnicodeEncodeError:
        return (
            f"--out {quoted(folder.absolute())} has a name that is not UTF-8 text; give a folder whose path "
            "is UTF-8 (TensorBoard logs cannot be written there)"
        )
    return None


def check_folder(
    folder: str | Path, run_id: str, *, overwrite: bool = False, config: Mapping[str, Any] | None = None
) -> None:
    """Refuse a folder that holds anything but this run: foreign files, or another run (unless overwrite),
    naming the keys where its config differs from `config` (this run's, nested) when given."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"--out {quoted(folder)} is a file, not a folder; give a folder path")
    problem = non_utf8_out_problem(folder)
    if problem:
        raise RunFolderError(problem)
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    if not is_run_folder(folder):
        raise RunFolderError(
            f"--out {quoted(folder)} holds files that cnnlab did not write; "
            "give an empty or new folder (cnnlab never deletes files it did not write)"
        )
    existing = folder_run_id(folder)
    if existing is not None and existing != run_id and not overwrite:
        status = (read_result(folder) or {}).get("status", "unfinished")
        differences = _config_differences(folder, config) if config is not None else ""
        raise RunFolderError(
            f"--out {quoted(folder)} holds another run ({existing}, {status}) with a different config than "
            f"this one ({run_id}){differences}; use another --out, or --overwrite to replace it"
        )


def _config_differences(folder: Path, config: Mapping[str, Any], shown: int = 3) -> str:
    """': a.b is X here, Y there; ...' for the first `shown` keys where the folder's config.yaml differs
    from `config` ('' when it cannot be read): a resume with one setting changed says which."""
    try:
        theirs = cfg.flatten(cfg.load_yaml(folder / CONFIG_FILE))
    except CnnlabError:
        return ""
    ours = cfg.flatten(config)
    keys = [key for key in sorted(ours.keys() | theirs.keys()) if ours.get(key) != theirs.get(key)]
    parts = [f"{key} is {cfg.short(ours.get(key))} here, {cfg.short(theirs.get(key))} there" for key in keys]
    more = f" (and {len(keys) - shown} more)" if len(keys) > shown else ""
    return f": {'; '.join(parts[:shown])}{more}" if parts else ""


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
        raise RunFolderError(
            f"cannot write the run folder {quoted(folder)}: {describe_os_error(error)}"
        ) from None
    try:
        _lock(handle, folder)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname()}))
        handle.flush()
        _HELD[folder] = _file_identity(os.fstat(handle.fileno()))
        yield folder
    except BaseException:
        if created and folder.is_dir() and [p.name for p in folder.iterdir()] == [MARKER_FILE]:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        _HELD.pop(folder, None)
        handle.close()  # closing releases the lock


_HELD: dict[Path, tuple[int, int]] = {}  # folder -> (device, inode) of the marker this process holds locked


def _file_identity(status: os.stat_result) -> tuple[int, int]:
    return status.st_dev, status.st_ino


class RunFolderLost(RunFolderError):
    """The run folder this process holds was removed, moved or replaced while it worked there."""


def check_still_held(folder: str | Path) -> None:
    """Raise RunFolderLost when the folder this process holds (`hold`) is no longer the one it locked: its
    marker is gone or another file (the folder was removed, moved or replaced). Writing on would recreate the
    folder without its marker or config (a folder cnnlab then refuses as not its own), beside a second
    process that may lock the new one."""
    folder = Path(folder)
    held = _HELD.get(folder)
    if held is None:
        return
    try:
        now = _file_identity(os.stat(folder / MARKER_FILE))
    except OSError:
        now = None
    if now != held:
        raise RunFolderLost(
            f"the run folder {quoted(folder)} was removed, moved or replaced while this run worked in it "
            f"(its {MARKER_FILE} is gone); the run stopped and wrote nothing more there; train it again into "
            "a folder that nothing else removes"
        )


class RunFolderBusy(RunFolderError):
    """Another live process holds the run folder."""


def _lock(handle: Any, folder: Path) -> None:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(handle)
        raise RunFolderBusy(
            f"run folder {quoted(folder)} is in use by {holder}; wait for it to finish or use another --out"
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
    *(f"{IMAGES_DIR}/{kind}.npz" for kind in IMAGE_KINDS),
)


def remove_scoring_files(folder: str | Path) -> None:
    """The predictions and image samples of a run's final scoring: an interrupted run records none, even when
    the signal came while they were being written."""
    folder = Path(folder)
    for name in OWN_FILES:
        if name.startswith((f"{PREDICTIONS_DIR}/", f"{IMAGES_DIR}/")):
            (folder / name).unlink(missing_ok=True)


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
    for name in (CHECKPOINTS_DIR, PREDICTIONS_DIR, IMAGES_DIR, TENSORBOARD_DIR):
        with contextlib.suppress(OSError):
            (folder / name).rmdir()  # only when empty


# --- helpers -----------------------------------------------------------------------------------------------


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


# --- suite.json (a suite folder's record; written by study/suite.py) ----------------------------------------


def is_suite_folder(folder: str | Path) -> bool:
    """Was the folder written by a suite (it holds suite.json)?"""
    return (Path(folder) / SUITE_FILE).is_file()


def suite_studies(folder: str | Path) -> list[tuple[str, Path]]:
    """(name, folder) of each sub-study of a suite folder, in the suite's order."""
    folder = Path(folder)
    try:
        record = safeio.read_json(folder / SUITE_FILE)
        names = [item["name"] for item in record["studies"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"{folder / SUITE_FILE} is not a cnnlab suite file ({error})") from None
    for name in names:  # each sub-study is a folder inside the suite's, never a path leading out of it
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
            raise ConfigError(
                f"{folder / SUITE_FILE} is not a cnnlab suite file (study name {name!r} is not a folder name)"
            )
    return [(name, folder / name) for name in names]


def suite_name(folder: str | Path) -> str:
    """The suite's name, as suite.json records it."""
    return str(safeio.read_json(Path(folder) / SUITE_FILE).get("name", Path(folder).name))
