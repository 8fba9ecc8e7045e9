"""Read a study (or any folder of runs) from its result files and group the runs into configurations.

Only files are read: every `**/result.json` of a run (ensemble folders excluded), its `metrics.csv` and
`predictions/*.npz`, every `ensembles/*/result.json`, and `study.yaml` / `study.json` when present.
No model is built and nothing from `cnnlab.models` or `cnnlab.train` is imported.

A configuration is a run's config minus the per-run keys (`train.seed`, `data.fold`, `data.splits_file`),
plus the stage/role the study tagged it with; `tags.configuration`, when present, is the study's own label.
A `train.init` of `run:<dir>` pointing at a run of this study becomes `run:<that run's configuration>`, so
the fine-tune runs of every seed (each initialised from its own pretraining run) form one configuration.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.errors import CnnlabError

PER_RUN_KEYS = ("train.seed", "data.fold", "data.splits_file")
TAG_KEYS = ("stage", "role")
METRIC_COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s")
PLAN_FILE = "study.json"  # a study's expanded plan: its runs in spec order
SPEC_FILES = ("study.yaml", PLAN_FILE)
SELECT_FILE = "select.json"  # written by a study's select stage: the chosen configuration and every score
FINAL_ROLE = "final"  # tags.role of a run retrained on all training data after selection


class ReportError(CnnlabError):
    """The folder given to the report holds no readable runs, or one of its result files is malformed."""


@dataclasses.dataclass(frozen=True)
class Predictions:
    """Saved class probabilities of one split: `probs` (N, K), `labels` (N,), `indices` (N,)."""

    probs: np.ndarray
    labels: np.ndarray
    indices: np.ndarray


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
        """completed, failed or diverged."""
        return str(self.result.get("status", "unknown"))

    @property
    def completed(self) -> bool:
        """Only completed runs enter means, intervals, comparisons and plots."""
        return self.status == "completed"

    @property
    def reason(self) -> str | None:
        """Why a run failed or diverged (None for a completed run)."""
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
    def class_names(self) -> list[str]:
        """Class names in label order."""
        return [str(name) for name in self.result.get("class_names") or []]

    def predictions(self, split: str) -> Predictions | None:
        """The saved predictions of `split` (val or test), None when the file is absent."""
        return read_predictions(self.run_dir / "predictions" / f"{split}.npz")


@dataclasses.dataclass(frozen=True, eq=False)
class Configuration:
    """The runs that share every setting but the seed and fold."""

    ident: str  # C1, C2, ... in table order; what legends and `run:` inits refer to
    label: str  # the settings that tell this configuration apart from the others
    settings: dict[str, Any]
    runs: tuple[RunRecord, ...]

    @property
    def completed_runs(self) -> tuple[RunRecord, ...]:
        """Runs that finished; failed and diverged runs are listed in the report but not averaged."""
        return tuple(run for run in self.runs if run.completed)

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


def load_study(root: str | Path) -> Study:
    """Read every run and ensemble under `root`; a missing folder or one without runs is a ReportError."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise ReportError(f"study folder not found: {root} (give the folder a study or run wrote)")
    runs = [_read_run(path.parent) for path in _run_result_files(root)]
    if not runs:
        raise ReportError(
            f"no run results in {root}: expected runs/<run_id>/result.json (run `cnnlab study run`)"
        )
    spec_name, spec_text = _read_spec(root)
    configurations, varying = _group(runs, _plan_positions(root / PLAN_FILE))
    ensembles = tuple(_read_ensemble(path.parent) for path in sorted(root.glob("ensembles/*/result.json")))
    selection = _read_json(root / SELECT_FILE) if (root / SELECT_FILE).is_file() else None
    return Study(root, tuple(configurations), ensembles, tuple(varying), spec_text, spec_name, selection)


def read_predictions(path: Path) -> Predictions | None:
    """Load a predictions file (probs, labels, indices), None when absent; a bad file is a ReportError."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            probs, labels = (
                np.asarray(data["probs"], dtype=np.float64),
                np.asarray(data["labels"], dtype=np.int64),
            )
            indices = np.asarray(data["indices"]) if "indices" in data else np.arange(len(labels))
    except (OSError, KeyError, ValueError) as error:
        raise ReportError(
            f"cannot read predictions {path}: {error}; expected keys probs, labels, indices"
        ) from None
    return Predictions(probs, labels, indices)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config mapping → dotted keys (`optim.lr`)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


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


def _run_result_files(root: Path) -> list[Path]:
    """Every run's result.json under root, ensembles and report output excluded."""
    found = []
    for path in sorted(root.glob("**/result.json")):
        parts = path.relative_to(root).parts
        if "ensembles" in parts or "report_files" in parts:
            continue
        found.append(path)
    return found


def _read_run(run_dir: Path) -> RunRecord:
    result = _read_json(run_dir / "result.json")
    if not isinstance(result, dict) or result.get("kind") == "ensemble":
        raise ReportError(f"{run_dir / 'result.json'} is not a run result (expected a mapping with status)")
    settings = {k: v for k, v in flatten(result.get("config") or {}).items() if k not in PER_RUN_KEYS}
    tags = result.get("tags") or {}
    settings.update({f"tags.{key}": tags[key] for key in TAG_KEYS if tags.get(key) is not None})
    return RunRecord(run_dir, result, settings, _read_metrics(run_dir / "metrics.csv"))


def _read_ensemble(ensemble_dir: Path) -> EnsembleRecord:
    result = _read_json(ensemble_dir / "result.json")
    if not isinstance(result, dict):
        raise ReportError(f"{ensemble_dir / 'result.json'} is not an ensemble result (expected a mapping)")
    return EnsembleRecord(ensemble_dir, result)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReportError(f"cannot read {path}: {error}") from None


def _read_metrics(path: Path) -> dict[str, np.ndarray] | None:
    """metrics.csv as columns of floats (missing cells are NaN), None when the file is absent or empty."""
    if not path.is_file():
        return None
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "epoch" not in rows[0]:
        return None
    columns = ("epoch",) + tuple(name for name in METRIC_COLUMNS if name in rows[0])
    return {name: np.array([_number(row.get(name)) for row in rows], dtype=np.float64) for name in columns}


def _read_spec(root: Path) -> tuple[str | None, str | None]:
    for name in SPEC_FILES:
        path = root / name
        if path.is_file():
            return name, path.read_text(errors="replace")
    return None, None


def _plan_positions(path: Path) -> dict[str, int]:
    """run id → its place in the study's plan (study.json), so the table follows the spec's order."""
    if not path.is_file():
        return {}
    plan = _read_json(path)
    entries = plan.get("runs") if isinstance(plan, dict) else None
    if not isinstance(entries, list):
        return {}
    ids = [entry.get("run_id") for entry in entries if isinstance(entry, dict)]
    return {str(run_id): position for position, run_id in enumerate(ids) if run_id}


def _group(
    runs: Sequence[RunRecord], plan_positions: dict[str, int]
) -> tuple[list[Configuration], list[str]]:
    """Group runs into configurations, order them (spec order, else by setting) and name them C1, C2, ..."""
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
    stage_rank: dict[Any, int] = {}
    for key, settings in representative.items():
        stage = settings.get("tags.stage")
        stage_rank[stage] = max(stage_rank.get(stage, 0), depth[key])
    order = sorted(
        groups,
        key=lambda key: (
            stage_rank[representative[key].get("tags.stage")],
            depth[key],
            min(plan_positions.get(run.run_id, len(plan_positions)) for run in groups[key]),
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
    if settings.get("tags.role") == FINAL_ROLE:
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


def _number(value: Any) -> float | None:
    """A finite float, else None (missing cells, null, text)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None
