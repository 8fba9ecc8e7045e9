"""Checks a plan can pass before any run starts: model names and switches, dataset names and presets; and
the checks of the --out folder a study, tune or suite writes into (its kind, foreign files, its lock).

`config.from_dict` checks keys, types and ranges; these checks need the zoo and the dataset catalog, so a
typo in a grid value (`model.name: lenet` or `model.norm: group` on a net without it) stops the study at
once with the configuration named, instead of failing its runs one by one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import fnmatch
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from cnnlab import config as cfg
from cnnlab import runfolder, safeio
from cnnlab.data import check_data_config, load_split
from cnnlab.data import folder as folder_data
from cnnlab.data.catalog import FOLDER_PREFIX
from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.models import check_switches
from cnnlab.runfolder import SUITE_FILE, TUNE_FILES, TUNE_SUMMARY_FILE
from cnnlab.study.ensemble import ENSEMBLES_DIR
from cnnlab.study.plan import PLAN_FILE, RUNS_DIR, SPEC_FILE, SPLITS_DIR, StudyPlan
from cnnlab.study.selection import SELECT_FILE
from cnnlab.study.suite import INLINE_DIR, SUITE_SPEC_FILE
from cnnlab.train.distributed import check_single_process
from cnnlab.train.resolve import model_switches


def check_plan(plan: StudyPlan) -> None:
    """Every planned config names a known model with switches it supports and a known dataset."""
    seen: set[str] = set()
    checked: set[str] = set()
    for run in plan.runs:
        if run.config is None:
            continue
        key = run.run_id
        if key in seen:
            raise ConfigError(
                f"study spec: stage {run.stage!r}, configuration {run.configuration!r} seed "
                f"{run.seed} plans the same run twice; two grid values give the same config"
            )
        seen.add(key)
        try:
            check_config(run.config)
            check_init_file(run.config.train.init, checked)
        except CnnlabError as error:
            raise ConfigError(f"stage {run.stage!r}, configuration {run.configuration!r}: {error}") from None


def check_data(plan: StudyPlan) -> None:
    """Every training-data selection of the plan is there and valid: a missing dataset or photo folder, or
    keys that cannot go together (data.subset with a stage's data.per_class), stop the study (or the suite)
    before anything is written or trains; the error names the first configuration that has the data."""
    checked: set[str | None] = set()
    for run in plan.runs:
        if run.config is None or run.config.data.splits_file in checked:
            continue
        checked.add(run.config.data.splits_file)
        try:
            check_training_data(run.config.data)
        except CnnlabError as error:
            raise ConfigError(f"stage {run.stage!r}, configuration {run.configuration!r}: {error}") from None


def check_training_data(data: cfg.DataConfig) -> None:
    """Load the training split (memoised per process: the splits and the runs that follow reuse it)."""
    load_split(data, "train")


def check_init_file(init: str, checked: set[str]) -> None:
    """A `file:` init must exist and load as weights before the first run trains (each file read once)."""
    scheme, _, path = init.partition(":")
    if scheme != "file" or path in checked:
        return
    if not Path(path).is_file():
        raise ConfigError(f"train.init: weights file {path!r} not found; give the path of a state_dict file")
    safeio.load_checkpoint(path)
    checked.add(path)


def check_config(config: cfg.RunConfig) -> None:
    """One config's model switches and data keys, checked against the zoo and the dataset catalog."""
    try:
        check_switches(config.model.name, model_switches(config.model))
    except ConfigError as error:
        message = str(error)
        raise ConfigError(message if message.startswith("model.") else f"model.name: {message}") from None
    check_data_config(config.data)
    check_single_process(config)  # a study's run trains in its worker: no DDP (Lightning would re-run it)


# --- the --out folder of a study, a tune or a suite ---------------------------------------------------------
#
# A folder holds one kind of thing (one study, one tune or one suite) of one spec, and only what cnnlab wrote
# there. Each command checks that before it writes anything, then checks again and claims the folder under
# the folder's lock, so two processes started at once cannot both take it for different specs.

FOLDER_LOCK = ".cnnlab-folder"  # flock'd by the process checking and claiming the folder
USERS_LOCK = (
    ".cnnlab-users"  # flock'd shared by each process working in the folder, exclusively to discard it
)
LOCK_FILES = (FOLDER_LOCK, USERS_LOCK)
STUDY_STORAGE_FILE = "study.db"
REPORT_FILES = ("report.html", "report.md", "results.csv")  # written by `cnnlab report` (and `study run`)
REPORT_DIR = "report_files"  # the report's figures (cnnlab.report.document.PLOT_DIR)
SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")  # SQLite's files beside a database
SPLITS_FILES = f"{SPLITS_DIR}/{'[0-9a-f]' * 12}.json"  # plan.splits_plan names them by a 12-digit digest
ENSEMBLE_FILES = (
    f"{ENSEMBLES_DIR}/*/{runfolder.RESULT_FILE}",
    *(f"{ENSEMBLES_DIR}/*/{runfolder.PREDICTIONS_DIR}/{split}.npz" for split in runfolder.PREDICTION_SPLITS),
)
FIGURE_FILES = (f"{REPORT_DIR}/*.png", f"{REPORT_DIR}/.figures.json")


class StudyFolderError(CnnlabError):
    """An --out folder a study, tune or suite may not use: another kind, another spec, or foreign files."""


@dataclasses.dataclass(frozen=True)
class FolderKind:
    """One kind of --out folder: the files that tell it apart, and every name cnnlab writes at its top."""

    name: str  # study | tune | suite
    markers: tuple[str, ...]  # any of these present: the folder is of this kind
    files: tuple[str, ...]
    dirs: tuple[str, ...]
    own_in_dirs: tuple[str, ...]  # glob patterns, relative to the folder, of what it writes below its dirs
    # patterns of files it may hold but never removes: a queue database given by --storage (a retry's)
    accepted: tuple[str, ...] = ()


STUDY_FOLDER = FolderKind(
    "study",
    markers=(SPEC_FILE, PLAN_FILE, STUDY_STORAGE_FILE),
    files=(SPEC_FILE, PLAN_FILE, STUDY_STORAGE_FILE, SELECT_FILE, *REPORT_FILES),
    dirs=(RUNS_DIR, SPLITS_DIR, ENSEMBLES_DIR, REPORT_DIR),
    own_in_dirs=(SPLITS_FILES, *ENSEMBLE_FILES, *FIGURE_FILES),
    accepted=("*.db",),
)
TUNE_FOLDER = FolderKind(
    "tune",
    markers=TUNE_FILES,
    files=(*TUNE_FILES, *REPORT_FILES),
    dirs=(RUNS_DIR, SPLITS_DIR, REPORT_DIR),
    own_in_dirs=(SPLITS_FILES, *FIGURE_FILES),
    accepted=("*.db",),
)
SUITE_FOLDER = FolderKind(
    "suite",
    markers=(SUITE_SPEC_FILE, SUITE_FILE),
    files=(SUITE_SPEC_FILE, SUITE_FILE, *REPORT_FILES),
    dirs=(INLINE_DIR, REPORT_DIR),  # and one study folder per sub-study (checked as a study folder)
    own_in_dirs=(f"{INLINE_DIR}/*.yaml", *FIGURE_FILES),
)
FOLDER_KINDS = (STUDY_FOLDER, TUNE_FOLDER, SUITE_FOLDER)


def check_out_folder(folder: Path, kind: FolderKind, *, also_own: Iterable[str] = ()) -> None:
    """Refuse, before anything is written, an --out folder that is a file, holds another kind's files (a
    tune's in a study's folder, say), or holds files cnnlab did not write. `also_own`: more top-level names
    this folder may hold (a suite's sub-study folders, a SQLite --storage file kept in the folder)."""
    if folder.exists() and not folder.is_dir():
        raise StudyFolderError(f"--out {cfg.quoted(folder)} is a file, not a folder; give a folder path")
    problem = runfolder.non_utf8_out_problem(folder)
    if problem:
        raise StudyFolderError(problem)
    _check_not_inside_another(folder)
    entries = _entries(folder)
    if not entries:
        return
    for other in FOLDER_KINDS:
        found = _marker(folder, other)
        if other is not kind and found:
            raise StudyFolderError(
                f"--out {cfg.quoted(folder)} holds a {other.name} ({found}), not a {kind.name}: a folder "
                f"holds one study, tune or suite; use another --out for this {kind.name}"
            )
    marked = _marker(folder, kind)
    foreign = _first_foreign(folder, kind, set(also_own)) if marked else _first_unmarked_entry(folder, kind)
    if foreign is not None:
        raise StudyFolderError(
            f"--out {cfg.quoted(folder)} holds files that cnnlab did not write ({cfg.quoted(foreign)}); "
            "give an empty or new folder, or move them away (cnnlab never deletes files it did not write)"
        )


def check_out_outside_data(folder: Path, data_names: Iterable[str]) -> None:
    """Refuse an --out folder inside (or equal to) a photo folder the study trains on (`data.name:
    folder:PATH`): its report figures and run images would become a class of that dataset at its next load."""
    out = folder.expanduser().resolve()
    for name in sorted(set(data_names)):
        path = name[len(FOLDER_PREFIX) :] if name.startswith(FOLDER_PREFIX) else ""
        if not path.strip():  # a named dataset, or `folder:` without a path (refused by the config check)
            continue
        data = folder_data.resolve_folder(path).resolve()
        if out == data or data in out.parents:
            raise StudyFolderError(
                f"--out {cfg.quoted(folder)} is inside the photo folder {cfg.quoted(data)} "
                f"(data.name={name}): the figures written there would become images of that dataset; "
                "give an --out outside it"
            )


def _check_not_inside_another(folder: Path) -> None:
    """Refuse an --out folder below a study's or a tune's folder: that one's report collects every
    result.json under it, so it would count this folder's runs as its own (and refuse its own reruns)."""
    for parent in folder.absolute().parents:
        kind = _recorded_kind(parent)
        if kind is not None:
            raise StudyFolderError(
                f"--out {cfg.quoted(folder)} is inside the {kind} folder {cfg.quoted(parent)}, whose report "
                "would count its runs as its own; give an --out outside it"
            )


def _recorded_kind(folder: Path) -> str | None:
    """'study' or 'tune' when the folder holds the record cnnlab writes for one (a study.json plan, a
    tune.json search), else None; a spec file merely named study.yaml or tune.yaml does not count."""
    for kind, name, key in (("study", PLAN_FILE, "plan_hash"), ("tune", TUNE_SUMMARY_FILE, "spec_hash")):
        path = folder / name
        if not path.is_file():
            continue
        with contextlib.suppress(OSError, ValueError):
            record = safeio.read_json(path)
            if isinstance(record, dict) and key in record:
                return kind
    return None


def storage_files_in(folder: Path, *urls: str | None) -> tuple[str, ...]:
    """The names of the SQLite queue databases among `urls` (sqlite:///PATH) that lie in `folder`, with
    their side files: files a study or tune folder may hold beside its own (a --storage kept there)."""
    names: list[str] = []
    for url in urls:
        if isinstance(url, str) and url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///") :])
            if path.parent.resolve() == folder.resolve():
                names += [path.name, *(path.name + side for side in SQLITE_SIDE_FILES)]
    return tuple(names)


def _entries(folder: Path) -> list[Path]:
    """The folder's entries, sorted, without its lock files; [] for a folder that does not exist."""
    return [path for path in _listed(folder) if path.name not in LOCK_FILES]


def _marker(folder: Path, kind: FolderKind) -> str | None:
    """The first file present that marks the folder as one of this kind, else None."""
    return next((name for name in kind.markers if (folder / name).exists()), None)


def _first_foreign(folder: Path, kind: FolderKind, also_own: set[str]) -> Path | None:
    """The first entry (at the top, or in runs/ and splits/) that cnnlab did not write, else None."""
    for path in _entries(folder):
        own_name = _own_file_name(path.name, kind.files, kind.accepted)
        if path.name in also_own or (own_name and path.is_file()) or _vanished(path):
            continue
        if not (path.is_dir() and path.name in kind.dirs):
            return path
        inside = _first_foreign_inside(path)
        if inside is not None:
            return inside
    return None


def _first_unmarked_entry(folder: Path, kind: FolderKind) -> Path | None:
    """In a folder without the kind's marker, every entry is foreign but a marker being written (its
    temporary file, before the rename, or a SQLite side file) by another cnnlab process setting the folder
    up, and an entry gone since the listing."""
    for path in _entries(folder):
        if not (_own_file_name(path.name, kind.markers) or _vanished(path)):
            return path
    return None


def _first_foreign_inside(folder: Path) -> Path | None:
    """runs/ holds run folders (or empty folders), splits/ splits files; other folders are not looked in."""
    if folder.name not in (RUNS_DIR, SPLITS_DIR):
        return None
    own = _is_run_entry if folder.name == RUNS_DIR else _is_splits_entry
    return next((path for path in _listed(folder) if not (own(path) or _vanished(path))), None)


def _is_run_entry(path: Path) -> bool:
    """A run folder, or an empty folder (one a run is being created in: its marker comes next). Listed
    before the marker is looked for, so a marker written in between is not taken for a foreign file."""
    if not path.is_dir():
        return False
    return not _listed(path) or runfolder.is_run_folder(path) or not _listed(path)  # or emptied meanwhile


def _is_splits_entry(path: Path) -> bool:
    own = fnmatch.fnmatch(f"{SPLITS_DIR}/{path.name}", SPLITS_FILES) or safeio.TEMP_NAME.fullmatch(path.name)
    return path.is_file() and bool(own)


def _listed(folder: Path) -> list[Path]:
    """The folder's entries, sorted; [] when it is gone (another cnnlab process removed it meanwhile)."""
    try:
        return sorted(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _vanished(path: Path) -> bool:
    """Gone since the folder was listed: a temporary file renamed into place, a failed run's folder removed
    by the process that made it. Another cnnlab process at work, not a foreign file."""
    return not os.path.lexists(path)


def _own_file_name(name: str, own: Iterable[str], patterns: Iterable[str] = ()) -> bool:
    """A name cnnlab writes: one of `own` (or matching one of `patterns`), a SQLite side file of one, or a
    temporary file of either."""
    temp = safeio.TEMP_NAME.fullmatch(name)
    name = temp["name"] if temp else name
    bases = {name} | {name[: -len(side)] for side in SQLITE_SIDE_FILES if name.endswith(side)}
    return bool(bases & set(own)) or any(
        fnmatch.fnmatch(base, pattern) for base in bases for pattern in patterns
    )


@contextlib.contextmanager
def folder_lock(folder: Path, *, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the folder's lock (an exclusive flock on its FOLDER_LOCK file) while the body checks and claims
    it: a second process waits (saying so once), then finds the folder claimed. Creates the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / FOLDER_LOCK, "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another cnnlab process that is setting up {folder}")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield  # closing the file releases the lock


@contextlib.contextmanager
def folder_in_use(folder: Path) -> Iterator[None]:
    """Hold a shared lock on the folder's USERS_LOCK while the body works in the folder (each study, worker
    and tune process does, from its set-up on): `folder_unused` then knows the folder is in use. The folder
    must exist."""
    path = folder / USERS_LOCK
    while True:
        handle = open(path, "a+")  # noqa: SIM115 - held open as the lock; readable, as NFS's flock needs
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        if _is_same_file(handle.fileno(), path):
            break
        handle.close()  # a discard removed the lock file while this process waited: lock the new one
    with handle:  # closing the file releases the lock
        yield


@contextlib.contextmanager
def folder_unused(folder: Path, kind: FolderKind) -> Iterator[None]:
    """Hold the folder's USERS_LOCK exclusively while the body discards the files of a study or tune of
    another spec (`--restart`); StudyFolderError, nothing removed, while another process works in the
    folder (`folder_in_use`): its queue, its runs and its results would go from under it. The lock file goes
    too (a process waiting for it locks the one made next)."""
    path = folder / USERS_LOCK
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StudyFolderError(
                f"{kind.name} folder {cfg.quoted(folder)} is in use by another cnnlab process working on its "
                f"{kind.name}; stop it (or let it finish) before discarding that {kind.name} with --restart"
            ) from None
        yield
        path.unlink(missing_ok=True)


def _is_same_file(descriptor: int, path: Path) -> bool:
    """Is the open file still the one at `path` (not removed, nor replaced by a new one)?"""
    try:
        found = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (found.st_dev, found.st_ino) == (opened.st_dev, opened.st_ino)


def remove_own_files(folder: Path, kind: FolderKind) -> None:
    """Remove what cnnlab wrote into a folder of this kind (its files, its run folders' files, the files
    below its folders) and the folders left empty; every other file stays where it is."""
    for path in _entries(folder):
        if path.is_file() and _own_file_name(path.name, kind.files):
            path.unlink(missing_ok=True)
    for pattern in kind.own_in_dirs:
        for path in folder.glob(pattern):
            if path.is_file():
                path.unlink(missing_ok=True)
    for run_dir in sorted((folder / RUNS_DIR).glob("*")):
        if run_dir.is_dir() and runfolder.is_run_folder(run_dir):
            _remove_run_files(run_dir)
    for name in kind.dirs:
        _remove_temp_files_and_empty_dirs(folder / name)


def _remove_run_files(run_dir: Path) -> None:
    """A run folder's own files (runfolder.clear_run_files), then its marker once nothing else is left."""
    runfolder.clear_run_files(run_dir)
    _remove_temp_files_and_empty_dirs(run_dir)
    if run_dir.is_dir() and [path.name for path in run_dir.iterdir()] == [runfolder.MARKER_FILE]:
        (run_dir / runfolder.MARKER_FILE).unlink()
        run_dir.rmdir()


def _remove_temp_files_and_empty_dirs(root: Path) -> None:
    """Leftover temporary files of atomic writes, then every folder left empty, deepest first."""
    if not root.is_dir():
        return
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_file() and safeio.TEMP_NAME.fullmatch(path.name):
            path.unlink(missing_ok=True)
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    if not any(root.iterdir()):
        root.rmdir()
