"""Read a study (or any folder of runs) from its result files and group the runs into configurations.

Only files are read: every `**/result.json` of a run (ensemble folders excluded), its `metrics.csv`,
`predictions/*.npz` and `images/*.npz`, every `ensembles/*/result.json`, and `study.yaml` / `study.json` when
present. A run folder's files are read through `cnnlab.runfolder`, their one owner. No model is built and
nothing from `cnnlab.models` or `cnnlab.train` is imported.

A configuration is a run's config minus the per-run keys (`train.seed`, `data.fold`, `data.splits_file`),
plus the stage/role the study tagged it with; `tags.configuration`, when present, is the study's own label.
A `train.init` of `run:<dir>` pointing at a run of this study becomes `run:<that run's configuration>`, so
the fine-tune runs of every seed (each initialised from its own pretraining run) form one configuration.

Configurations are ordered stage by stage: the stages in study.json's order, else a stage before the stages
its runs initialise. The last stage is the final one, the stage the study exists for.

A study folder's study.json is also its plan: a planned run without a result.json (not started, or stopped
before it wrote one) is pending, or running while a live process holds its folder, and the report says the
study is incomplete rather than look finished; a plan with no result yet is a report of pending runs.

A run is counted once however many folders hold a copy of it (a backup beside the study, two `fit`s of one
config): copies share a run_id, and the report names the folders of each run found more than once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab import runfolder
from cnnlab.config import flatten
from cnnlab.errors import CnnlabError, escape_surrogates
from cnnlab.runfolder import ImageSamples, Predictions, resolved_folder

PER_RUN_KEYS = ("train.seed", "data.fold", "data.splits_file")
TAG_KEYS = ("stage", "role")
SPEC_FILES = (runfolder.SPEC_FILE, runfolder.PLAN_FILE)  # the spec as given, else the expanded plan
SELECT_FILE = "select.json"  # written by a study's select stage: the chosen configuration and every score


class ReportError(CnnlabError):
    """The folder given to the report holds no readable runs, or one of its result files is malformed."""


@dataclasses.dataclass(frozen=True, eq=False)
class RunRecord:
    """One run directory as the report sees it: its result, per-epoch metrics and identity in the study."""

    run_dir: Path
    result: dict[str, Any]
    settings: dict[str, Any]  # flattened config minus per-run keys, plus tags.stage / tags.role
    metrics: dict[str, np.ndarray] | None  # metrics.csv columns (epoch first); None when absent

    @property
    def run_id(self) -> str:
        """The run's id from result.json, else its folder name."""
        return str(self.result.get("run_id") or self.run_dir.name)

    @property
    def status(self) -> str:
        """One of runfolder.RESULT_STATES: completed, failed, diverged or interrupted."""
        return str(self.result.get("status", "unknown"))

    @property
    def completed(self) -> bool:
        """Only completed runs enter means, intervals, comparisons and plots."""
        return self.status == runfolder.COMPLETED

    @property
    def reason(self) -> str | None:
        """Why a run failed, diverged or was interrupted (None for a completed run)."""
        return self.result.get("reason")

    @property
    def seed(self) -> int | None:
        """The training seed (config first, provenance second)."""
        seed = _dig(self.result, "config", "train", "seed")
        return seed if seed is not None else _dig(self.result, "provenance", "seed")

    @property
    def fold(self) -> int | None:
        """The validation fold under k-fold cross-validation, None for a holdout split."""
        if _dig(self.result, "config", "data", "folds") is None:
            return None
        return _dig(self.result, "config", "data", "fold")

    @property
    def val_acc(self) -> float | None:
        """Best validation accuracy over epochs (the checkpoint the run keeps and selection uses)."""
        return _number(_dig(self.result, "best", "val_acc"))

    @property
    def test_acc(self) -> float | None:
        """Test accuracy, None when the run was not tested."""
        return _number(_dig(self.result, "test", "acc"))

    @property
    def flags(self) -> list[str]:
        """Why a completed run may not have learned (result.json `flags`, train/health.py); [] when it did."""
        flags = self.result.get("flags") if self.completed else None
        return [str(flag) for flag in flags] if isinstance(flags, list) else []

    @property
    def class_names(self) -> list[str]:
        """Class names in label order."""
        return [str(name) for name in self.result.get("class_names") or []]

    def predictions(self, split: str) -> Predictions | None:
        """The saved predictions of `split` (val or test) sorted by index, None when the file is absent."""
        with _report_errors():
            return runfolder.read_predictions(self.run_dir, split)

    def images(self, kind: str) -> ImageSamples | None:
        """Thumbnails the run saved at its end (`runfolder.IMAGE_KINDS`), None when the file is absent; their
        ids (file names) with surrogates escaped, as the result's strings."""
        with _report_errors():
            samples = runfolder.read_image_samples(self.run_dir, kind)
        if samples is None:
            return None
        return dataclasses.replace(samples, ids=tuple(escape_surrogates(item) for item in samples.ids))


@dataclasses.dataclass(frozen=True, eq=False)
class Configuration:
    """The runs that share every setting but the seed and fold."""

    ident: str  # C1, C2, ... in table order; what legends and `run:` inits refer to
    label: str  # the settings that tell this configuration apart from the others
    settings: dict[str, Any]
    runs: tuple[RunRecord, ...]

    @property
    def completed_runs(self) -> tuple[RunRecord, ...]:
        """Runs that finished; failed, diverged and interrupted runs are listed, never averaged."""
        return tuple(run for run in self.runs if run.completed)

    @property
    def stage(self) -> str | None:
        """The study stage its runs were tagged with (`main` for a study without stages), None untagged."""
        stage = self.settings.get("tags.stage")
        return None if stage is None else str(stage)

    @property
    def point(self) -> dict[str, str] | None:
        """Grid axis → chosen value's label, as the study recorded it (None for runs outside a study)."""
        point = (self.runs[0].result.get("tags") or {}).get("point")
        return {str(axis): str(value) for axis, value in point.items()} if isinstance(point, dict) else None

    @property
    def title(self) -> str:
        """`C1: model.name=lenet5` — the name used in legends and sentences."""
        return f"{self.ident}: {self.label}"


@dataclasses.dataclass(frozen=True, eq=False)
class EnsembleRecord:
    """An ensemble folder: its members (run ids) and accuracies."""

    ensemble_dir: Path
    result: dict[str, Any]

    @property
    def name(self) -> str:
        """The ensemble's name from the spec."""
        return str(self.result.get("name") or self.ensemble_dir.name)

    @property
    def members(self) -> list[str]:
        """Member run ids."""
        return [str(member) for member in self.result.get("members") or []]

    @property
    def val_acc(self) -> float | None:
        """Validation accuracy of the combined predictions."""
        return _number(_dig(self.result, "val", "acc"))

    @property
    def test_acc(self) -> float | None:
        """Test accuracy of the combined predictions."""
        return _number(_dig(self.result, "test", "acc"))


@dataclasses.dataclass(frozen=True)
class PendingRun:
    """A run of the study's plan (study.json) with no result.json yet: not started, or stopped before it
    wrote one."""

    stage: str | None
    configuration: str  # the plan's label of its grid point (`selected` for a select stage's final run)
    seed: int | None
    fold: int | None
    role: str | None  # member, or final for a run retrained on all training data after selection
    running: bool = False  # a live process holds its folder: it is training now


@dataclasses.dataclass(frozen=True, eq=False)
class Study:
    """Everything a report is drawn from."""

    root: Path
    configurations: tuple[Configuration, ...]
    ensembles: tuple[EnsembleRecord, ...]
    varying_keys: tuple[str, ...]  # settings whose values differ between configurations
    spec_text: str | None  # study.yaml as given (or study.json), None for a plain folder of runs
    spec_name: str | None
    selection: dict[str, Any] | None  # select.json when the study selected a configuration
    planned: int = 0  # runs in study.json's plan (0 for a folder of runs without one)
    pending: tuple[PendingRun, ...] = ()  # planned runs without a result.json, in plan order
    copies: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (run id, its folders) for runs found twice or more
    name: str = ""  # the spec's name (study.json), else the folder's

    @property
    def title(self) -> str:
        """The study's name, with its folder's when they differ (`cats-vs-dogs (cvd)`)."""
        if not self.name or self.name == self.root.name:
            return self.root.name
        return f"{self.name} ({self.root.name})"

    @property
    def interrupted(self) -> int:
        """Runs stopped by a signal: they resume from their checkpoint when the study runs again."""
        return sum(run.status == runfolder.INTERRUPTED for run in self.runs)

    @property
    def incomplete(self) -> bool:
        """Whether `cnnlab study run` has runs left to train: planned runs pending or interrupted."""
        return self.planned > 0 and bool(self.pending or self.interrupted)

    @property
    def runs(self) -> tuple[RunRecord, ...]:
        """Every run, in configuration order."""
        return tuple(run for configuration in self.configurations for run in configuration.runs)

    def run_by_id(self, run_id: str) -> RunRecord | None:
        """The run with this id (or folder name), None when not in the study."""
        for run in self.runs:
            if run_id in (run.run_id, run.run_dir.name):
                return run
        return None

    def configuration_of(self, run: RunRecord) -> Configuration:
        """The configuration a run belongs to."""
        return next(configuration for configuration in self.configurations if run in configuration.runs)

    @property
    def stages(self) -> tuple[str | None, ...]:
        """The stages that have runs, in study order; the last is the final stage."""
        return tuple(dict.fromkeys(configuration.stage for configuration in self.configurations))

    @property
    def running(self) -> int:
        """Planned runs without a result that a live process is training now."""
        return sum(run.running for run in self.pending)

    @property
    def final_stage(self) -> str | None:
        """The stage the study exists for (the last of study.json's stages, else the deepest in the `run:`
        init chain): its configurations make the headline table, the best row and the figures."""
        return self.stages[-1] if self.stages else None

    @property
    def staged(self) -> bool:
        """Whether the runs come from more than one stage (a study without stages has one, `main`)."""
        return len(self.stages) > 1

    def stage_configurations(self, stage: str | None) -> tuple[Configuration, ...]:
        """The configurations of one stage, in table order."""
        return tuple(configuration for configuration in self.configurations if configuration.stage == stage)

    def feeds(self, stage: str | None) -> tuple[str | None, ...]:
        """The other stages with runs initialised (`train.init: run:`) from runs of `stage`."""
        sources = {f"run:{configuration.ident}" for configuration in self.stage_configurations(stage)}
        fed = [c.stage for c in self.configurations if c.settings.get("train.init") in sources]
        return tuple(name for name in dict.fromkeys(fed) if name != stage)


def load_study(root: str | Path) -> Study:
    """Read every run and ensemble under `root`; a missing folder or one without runs is a ReportError."""
    root = resolved_folder(root)
    if not root.is_dir():
        raise ReportError(f"study folder not found: {root} (give the folder a study or run wrote)")
    read = [_read_run(path.parent) for path in _run_result_files(root)]
    runs, copies = _counted_once([run for run in read if run is not None], root)
    _check_one_study(root, runs)
    plan = _read_plan(root / runfolder.PLAN_FILE)
    entries = _plan_entries(plan)
    if not runs and not entries:
        raise ReportError(
            f"no run results in {root}: expected runs/<run_id>/result.json (run `cnnlab study run`)"
        )
    spec_name, spec_text = _read_spec(root)
    configurations, varying = _group(runs, _plan_positions(plan), _plan_stages(plan)) if runs else ([], [])
    ensembles = tuple(_read_ensemble(path.parent) for path in _ensemble_result_files(root))
    selection = _read_selection(root / SELECT_FILE)
    pending = _pending_runs(entries, runs, selection, root)
    return Study(
        root,
        tuple(configurations),
        ensembles,
        tuple(varying),
        spec_text,
        spec_name,
        selection,
        len(entries),
        pending,
        copies,
        _plan_name(plan),
    )


def format_value(value: Any) -> str:
    """A setting as a user writes it in YAML: null, true, 0.001, [a, b]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    return str(value)


def input_files(root: Path) -> list[Path]:
    """Every file `load_study` and the figures read from a study folder, in a fixed order: what a report
    depends on (`cnnlab.report.figure_cache` keys the figures by their content)."""
    files = [root / name for name in (*SPEC_FILES, SELECT_FILE)]
    run_dirs = [path.parent for path in _run_result_files(root)]
    for run_dir in run_dirs + [path.parent for path in _ensemble_result_files(root)]:
        files += [run_dir / runfolder.RESULT_FILE, run_dir / runfolder.METRICS_FILE]
        files += [runfolder.predictions_path(run_dir, split) for split in runfolder.PREDICTION_SPLITS]
        files += [runfolder.image_samples_path(run_dir, kind) for kind in runfolder.IMAGE_KINDS]
    return [path for path in files if path.is_file()]


def _ensemble_result_files(root: Path) -> list[Path]:
    """Every ensemble's result.json (ensembles/<name>/), sorted."""
    return sorted(root.glob(f"ensembles/*/{runfolder.RESULT_FILE}"))


def _run_result_files(root: Path) -> list[Path]:
    """Every run's result.json under root, ensembles and report output excluded."""
    found = []
    for path in sorted(root.glob(f"**/{runfolder.RESULT_FILE}")):
        parts = path.relative_to(root).parts
        if "ensembles" in parts or "report_files" in parts:
            continue
        found.append(path)
    return found


@contextlib.contextmanager
def _report_errors() -> Iterator[None]:
    """A malformed run-folder file is a ReportError (its message names the file)."""
    try:
        yield
    except runfolder.RunFolderError as error:
        raise ReportError(str(error)) from None


def _counted_once(
    runs: Sequence[RunRecord], root: Path
) -> tuple[list[RunRecord], tuple[tuple[str, tuple[str, ...]], ...]]:
    """One record per run id (a completed copy first, else the first found) and, for each id found in
    several folders, those folders relative to `root`."""
    by_id: dict[str, list[RunRecord]] = {}
    for run in runs:
        by_id.setdefault(run.run_id, []).append(run)
    kept = [max(found, key=lambda run: run.completed) for found in by_id.values()]
    copies = tuple(
        (run_id, tuple(_relative(run.run_dir, root) for run in found))
        for run_id, found in by_id.items()
        if len(found) > 1
    )
    return kept, copies


def _check_one_study(root: Path, runs: Sequence[RunRecord]) -> None:
    """A folder that is not a study itself may hold one study (and copies of it, the same spec) beside plain
    runs, never the runs of several different specs: their configurations would merge into one table that
    no spec describes."""
    if any((root / name).is_file() for name in SPEC_FILES):
        return
    by_spec: dict[str, list[Path]] = {}
    for folder in sorted({_study_folder(run.run_dir, root) for run in runs} - {None}):
        by_spec.setdefault(_read_spec(folder)[1] or "", []).append(folder)
    if len(by_spec) > 1:
        first = [folders[0] for folders in by_spec.values()]
        names = ", ".join(_relative(folder, root) for folder in first)
        suites = [folder.parent for folder in first if (folder.parent / runfolder.SUITE_FILE).is_file()]
        advice = (
            f"report the suite (`cnnlab report {suites[0]}`: a section per study)"
            if suites
            else f"report each one (`cnnlab report {first[0]}`), or run them as one suite (docs/studies.md)"
        )
        raise ReportError(f"{root} holds {len(by_spec)} studies of different specs ({names}): {advice}")


def _study_folder(run_dir: Path, root: Path) -> Path | None:
    """The study folder (one holding study.yaml or study.json) below `root` that holds this run, if any."""
    for folder in run_dir.parents:
        if folder == root:
            return None
        if any((folder / name).is_file() for name in SPEC_FILES):
            return folder
    return None


def _relative(path: Path, root: Path) -> str:
    """A folder as the report names it: relative to the report's folder (`.` for the folder itself)."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _read_selection(path: Path) -> dict[str, Any] | None:
    """select.json (None when absent); one that is not what a select stage writes is a ReportError."""
    if not path.is_file():
        return None
    selection = _read_json(path)
    problem = _selection_problem(selection)
    if problem:
        raise ReportError(f"{path}: {problem}; the file was edited or damaged (run the select stage again)")
    return selection


def _selection_problem(selection: Any) -> str | None:
    if not isinstance(selection, dict):
        return "not a mapping"
    for key in ("chosen", "metric"):
        if selection.get(key) is not None and not isinstance(selection[key], str):
            return f"{key} must be text"
    final_runs = selection.get("final_runs")
    if final_runs is not None and not (
        isinstance(final_runs, dict) and all(isinstance(run_id, str) for run_id in final_runs.values())
    ):
        return "final_runs must map each seed to a run id"
    if selection.get("scores") is not None and not isinstance(selection["scores"], list):
        return "scores must be a list"
    return None


def _read_run(run_dir: Path) -> RunRecord | None:
    """The run of a result.json found under the report's folder; None when that file is gone since the
    folder was listed (another process starts the run over: it is pending, not a damaged result)."""
    path = run_dir / runfolder.RESULT_FILE
    try:
        with _report_errors():
            result = runfolder.read_result(run_dir)
            metrics = runfolder.read_metrics(run_dir)
    except ReportError:
        if not path.exists():
            return None
        raise
    if result is None and not path.exists():
        return None
    if result is None or result.get("kind") == "ensemble":
        raise ReportError(f"{path} is not a run result (expected a mapping with status)")
    result = _drawable(result)
    settings = {k: v for k, v in flatten(result.get("config") or {}).items() if k not in PER_RUN_KEYS}
    tags = result.get("tags") or {}
    settings.update({f"tags.{key}": tags[key] for key in TAG_KEYS if tags.get(key) is not None})
    return RunRecord(run_dir, result, settings, _finite_metrics(metrics))


def _finite_metrics(metrics: dict[str, np.ndarray] | None) -> dict[str, np.ndarray] | None:
    """metrics.csv columns with non-finite cells as NaN (missing), as the figures and appendix expect."""
    if metrics is None:
        return None
    return {name: np.where(np.isfinite(values), values, np.nan) for name, values in metrics.items()}


def _read_ensemble(ensemble_dir: Path) -> EnsembleRecord:
    with _report_errors():
        result = runfolder.read_result(ensemble_dir)
    if result is None:
        raise ReportError(f"{ensemble_dir / runfolder.RESULT_FILE} is not an ensemble result")
    return EnsembleRecord(ensemble_dir, _drawable(result))


def _drawable(value: Any) -> Any:
    """A result as the report shows it: every string with its surrogates escaped (a class folder's
    undecodable byte as `\\xNN`; `errors.escape_surrogates`), which the fonts that draw the figures and the
    UTF-8 of the pages cannot take as they are."""
    if isinstance(value, str):
        return escape_surrogates(value)
    if isinstance(value, dict):
        return {_drawable(key): _drawable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_drawable(item) for item in value]
    return value


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReportError(f"cannot read {path}: {error}") from None


def _read_spec(root: Path) -> tuple[str | None, str | None]:
    for name in SPEC_FILES:
        path = root / name
        if path.is_file():
            return name, path.read_text(errors="replace")
    return None, None


def _plan_name(plan: dict[str, Any] | None) -> str:
    """The study's name as study.json records it ('' without one)."""
    name = (plan or {}).get("name")
    return name if isinstance(name, str) else ""


def _read_plan(path: Path) -> dict[str, Any] | None:
    """study.json (the study's expanded plan), None when absent or not a mapping."""
    if not path.is_file():
        return None
    plan = _read_json(path)
    return plan if isinstance(plan, dict) else None


def _plan_entries(plan: dict[str, Any] | None) -> list[dict[str, Any]]:
    """study.json's run entries (mappings), in plan order; [] without a plan."""
    entries = (plan or {}).get("runs")
    return [entry for entry in entries if isinstance(entry, dict)] if isinstance(entries, list) else []


def _plan_positions(plan: dict[str, Any] | None) -> dict[str, int]:
    """run id → its place in the study's plan (study.json), so the table follows the spec's order."""
    ids = [entry.get("run_id") for entry in _plan_entries(plan)]
    return {str(run_id): position for position, run_id in enumerate(ids) if run_id}


def _pending_runs(
    entries: Sequence[dict[str, Any]], runs: Sequence[RunRecord], selection: Any, root: Path
) -> tuple[PendingRun, ...]:
    """The planned runs with no result.json among `runs`, each marked running when a live process holds its
    folder. A select stage's final run has no id in study.json (its config is chosen later); select.json's
    `final_runs` (seed → run id) names it once chosen."""
    have = {run.run_id for run in runs} | {run.run_dir.name for run in runs}
    final_ids = selection.get("final_runs") if isinstance(selection, dict) else None
    final_ids = final_ids if isinstance(final_ids, dict) else {}
    pending = []
    for entry in entries:
        run_id = entry.get("run_id") or final_ids.get(str(entry.get("seed")))
        if run_id is None or str(run_id) not in have:
            running = run_id is not None and _is_running(root / runfolder.RUNS_DIR / str(run_id))
            pending.append(_pending_run(entry, running))
    return tuple(pending)


def _is_running(run_dir: Path) -> bool:
    """Whether a live process holds the run folder (a folder name that cannot be one is not running)."""
    try:
        return runfolder.is_held(run_dir)
    except (OSError, ValueError):
        return False


def _pending_run(entry: dict[str, Any], running: bool) -> PendingRun:
    stage, role = entry.get("stage"), entry.get("role")
    return PendingRun(
        stage=None if stage is None else str(stage),
        configuration=str(entry.get("configuration") or entry.get("run_id") or "unnamed"),
        seed=_integer_or_none(entry.get("seed")),
        fold=_integer_or_none(entry.get("fold")),
        role=None if role is None else str(role),
        running=running,
    )


def _plan_stages(plan: dict[str, Any] | None) -> list[str]:
    """The study's stage names in spec order (study.json's `stages`); the last is the final stage."""
    stages = (plan or {}).get("stages")
    return [str(stage) for stage in stages] if isinstance(stages, list) else []


def _group(
    runs: Sequence[RunRecord], plan_positions: dict[str, int], plan_stages: Sequence[str]
) -> tuple[list[Configuration], list[str]]:
    """Group runs into configurations, order them (stage by stage, then spec order, else by setting) and
    name them C1, C2, ..."""
    sources = _init_sources(runs)
    keys: dict[int, str] = {}
    for run in runs:
        _group_key(run, sources, keys)
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(keys[id(run)], []).append(run)
    representative = {key: dict(members[0].settings) for key, members in groups.items()}
    source_key = {
        key: keys[id(sources[id(members[0])])] for key, members in groups.items() if id(members[0]) in sources
    }
    for key, source in source_key.items():
        representative[key]["train.init"] = f"run:{source}"
    varying = _varying_keys(list(representative.values()))
    depth = {key: _source_depth(key, source_key) for key in groups}
    position = {
        key: min(plan_positions.get(run.run_id, len(plan_positions)) for run in members)
        for key, members in groups.items()
    }
    stage_of = {key: settings.get("tags.stage") for key, settings in representative.items()}
    stage_order = _stage_order(stage_of, depth, position, plan_stages)
    order = sorted(
        groups,
        key=lambda key: (
            stage_order[key],
            depth[key],
            position[key],
            _sort_key(representative[key], varying),
        ),
    )
    ident = {key: f"C{index + 1}" for index, key in enumerate(order)}
    for key, source in source_key.items():
        representative[key]["train.init"] = f"run:{ident[source]}"
    configurations = [
        Configuration(
            ident[key],
            _label(groups[key][0], representative[key], varying),
            representative[key],
            tuple(sorted(groups[key], key=_run_order)),
        )
        for key in order
    ]
    return configurations, varying


def _init_sources(runs: Sequence[RunRecord]) -> dict[int, RunRecord]:
    """Runs initialised from another run of this study (`train.init: run:<dir>`) → that run."""
    by_name = {run.run_dir.name: run for run in runs} | {run.run_id: run for run in runs}
    sources = {}
    for run in runs:
        init = run.settings.get("train.init")
        if isinstance(init, str) and init.startswith("run:"):
            source = by_name.get(Path(init[4:].rstrip("/")).name)
            if source is not None and source is not run:
                sources[id(run)] = source
    return sources


def _group_key(run: RunRecord, sources: dict[int, RunRecord], keys: dict[int, str], depth: int = 0) -> str:
    """The identity of a run's configuration (memoised in `keys`); follows `run:` inits to their source."""
    if id(run) in keys:
        return keys[id(run)]
    settings = dict(run.settings)
    source = sources.get(id(run))
    if source is not None and depth < 32:
        settings["train.init"] = "run:" + _group_key(source, sources, keys, depth + 1)
    label = (run.result.get("tags") or {}).get("configuration")
    tags = {key: value for key, value in settings.items() if key.startswith("tags.")}
    identity = {"label": str(label), **tags} if label else settings
    canonical = json.dumps(identity, sort_keys=True, default=str)
    keys[id(run)] = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return keys[id(run)]


def _stage_order(
    stage_of: dict[str, Any], depth: dict[str, int], position: dict[str, int], plan_stages: Sequence[str]
) -> dict[str, tuple]:
    """Configuration key → its stage's place: study.json's stage order (stages it does not list first), then
    the deepest `run:` init of the stage (a stage sorts before the stages it feeds), then its first run."""
    members: dict[str, list[str]] = {}
    for key, stage in stage_of.items():
        members.setdefault(_canonical(stage), []).append(key)
    places = {}
    for name, keys in members.items():
        stage = stage_of[keys[0]]
        listed = plan_stages.index(stage) if stage in plan_stages else -1
        places[name] = (listed, max(depth[k] for k in keys), min(position[k] for k in keys), name)
    return {key: places[_canonical(stage)] for key, stage in stage_of.items()}


def _varying_keys(settings: Sequence[dict[str, Any]]) -> list[str]:
    """Keys whose values differ between configurations, in config order (tags last)."""
    ordered: dict[str, None] = {}
    for item in settings:
        ordered.update(dict.fromkeys(item))
    varying = [key for key in ordered if len({_canonical(item.get(key)) for item in settings}) > 1]
    return sorted(varying, key=lambda key: key.startswith("tags."))


def _label(run: RunRecord, settings: dict[str, Any], varying: Sequence[str]) -> str:
    """The study's own label, else `key=value` for every differing setting; the stage when stages differ."""
    where = [f"stage={settings.get('tags.stage')}"] if "tags.stage" in varying else []
    if settings.get("tags.role") == runfolder.ROLE_FINAL:
        where.append("retrained on all training data")
    tagged = (run.result.get("tags") or {}).get("configuration")
    if tagged:
        return f"{tagged} ({', '.join(where)})" if where else str(tagged)
    parts = [f"{key}={format_value(settings.get(key))}" for key in varying if not key.startswith("tags.")]
    label = ", ".join(parts) or f"model.name={format_value(settings.get('model.name'))}"
    return f"{label} ({', '.join(where)})" if where else label


def _source_depth(key: str, source_key: dict[str, str]) -> int:
    """How many `run:` inits lie behind a configuration: a stage sorts before the stages it feeds."""
    depth = 0
    while key in source_key and depth < 32:
        key, depth = source_key[key], depth + 1
    return depth


def _sort_key(settings: dict[str, Any], varying: Sequence[str]) -> tuple:
    """The differing values in key order (numbers numerically, null first)."""
    return tuple(_value_order(settings.get(key)) for key in varying)


def _value_order(value: Any) -> tuple:
    if value is None:
        return (0, 0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, float(value), "")
    return (2, 0, _canonical(value))


def _run_order(run: RunRecord) -> tuple:
    return (run.seed if run.seed is not None else -1, run.fold if run.fold is not None else -1, run.run_id)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _dig(tree: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(tree, Mapping):
            return None
        tree = tree.get(key)
    return tree


def _integer_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    """A finite float, else None (missing cells, null, text)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None
