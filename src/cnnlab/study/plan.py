"""Study spec → plan: every run of every stage, with its resolved config, stable id, tags and dependencies.

A run's id is `config_hash` of its config as `resolve_config` resolves it (the same function `cnnlab train`
uses), so the same spec always plans the same ids, wherever the study folder lives, and a run whose
`result.json` says completed is never trained again. The select stage's retrained run
has no config until its members are done (`role: final`); its config is resolved by `selection`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cnnlab import config as cfg
from cnnlab.errors import ConfigError
from cnnlab.runfolder import PLAN_FILE as PLAN_FILE  # study folder names, shared with the report
from cnnlab.runfolder import ROLE_FINAL, resolved_folder
from cnnlab.runfolder import RUNS_DIR as RUNS_DIR
from cnnlab.runfolder import SPEC_FILE as SPEC_FILE
from cnnlab.study.spec import STAGE_INIT_PREFIX, EnsembleSpec, GridAxis, PerModelInit, StageSpec, StudySpec
from cnnlab.train.resolve import resolve_config

SPLITS_DIR = "splits"
ROLE_MEMBER = "member"
# Data keys that decide which training images exist (and in which order): splits are shared by every run
# whose data agrees on these.
SPLIT_DATA_KEYS = ("name", "data_dir", "classes", "subset", "per_class", "bad_images", "test_fraction")


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One run of the study: where it sits in the grid, its config, and which runs must finish first."""

    index: int
    stage: str
    configuration: str  # label of the grid point, e.g. "model.name=lenet5 optim.lr=0.1"
    point: Mapping[str, str]  # grid axis → label of the chosen value
    seed: int
    fold: int | None
    role: str  # member | final
    config: cfg.RunConfig | None  # None for a final run until its stage's members are done
    depends_on: tuple[int, ...] = ()

    @property
    def run_id(self) -> str | None:
        """The run's identity: the hash of its resolved config (computed once, cached on the config)."""
        return self.config.run_id if self.config is not None else None

    def tags(self, study: str) -> dict[str, Any]:
        """What the run records in result.json so reports can group it."""
        return {
            "study": study,
            "configuration": self.configuration,
            "point": dict(self.point),
            "seed": self.seed,
            "fold": self.fold,
            "stage": self.stage,
            "role": self.role,
        }

    def to_json(self) -> dict[str, Any]:
        """The study.json entry of this run."""
        return {
            "index": self.index,
            "run_id": self.run_id,
            "stage": self.stage,
            "configuration": self.configuration,
            "point": dict(self.point),
            "seed": self.seed,
            "fold": self.fold,
            "role": self.role,
            "depends_on": list(self.depends_on),
        }


@dataclasses.dataclass(frozen=True)
class SplitsPlan:
    """One splits file: computed once from the study's split seed for one training-data selection."""

    path: Path
    data: cfg.DataConfig
    folds: int | None
    val_fraction: float
    seed: int


@dataclasses.dataclass(frozen=True)
class StudyPlan:
    """The expanded study: runs in execution order, the splits they share, and the spec they came from."""

    spec: StudySpec
    study_dir: Path
    runs: tuple[PlannedRun, ...]
    splits: tuple[SplitsPlan, ...]
    ensemble_members: Mapping[str, tuple[int, ...]]  # ensemble name → member run indices

    @property
    def plan_hash(self) -> str:
        """Identity of the plan (ids, roles, dependencies): a changed spec gets a fresh work queue."""
        text = json.dumps([run.to_json() for run in self.runs], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def run_dir(self, run_id: str) -> Path:
        """Where a run with this id writes its files."""
        return self.study_dir / RUNS_DIR / run_id

    def stage_runs(self, stage: str, role: str = ROLE_MEMBER) -> list[PlannedRun]:
        """The runs of one stage with one role."""
        return [run for run in self.runs if run.stage == stage and run.role == role]

    def to_json(self) -> dict[str, Any]:
        """What study.json holds."""
        return {
            "name": self.spec.name,
            "plan_hash": self.plan_hash,
            "split_seed": self.spec.split_seed,
            "stages": [stage.name for stage in self.spec.stages],
            "select": dataclasses.asdict(self.spec.select) if self.spec.select else None,
            "ensembles": {name: list(members) for name, members in self.ensemble_members.items()},
            "splits": [str(s.path.relative_to(self.study_dir)) for s in self.splits],
            "runs": [run.to_json() for run in self.runs],
        }


@dataclasses.dataclass(frozen=True)
class GridPoint:
    """One point of a stage's grid: its label, axis choices and dotted overrides."""

    label: str
    choices: Mapping[str, str]
    overrides: Mapping[str, Any]


def expand(spec: StudySpec, study_dir: str | Path) -> StudyPlan:
    """Every run of the study, its config assembled from the spec's typed values; errors name the
    configuration."""
    study_dir = resolved_folder(study_dir)
    runs: list[PlannedRun] = []
    splits: dict[Path, SplitsPlan] = {}
    for stage in spec.stages:
        runs.extend(_expand_stage(spec, stage, study_dir, runs, splits))
    if spec.select is not None:
        runs.extend(_final_runs(spec, runs))
    members = {ensemble.name: _ensemble_members(ensemble, runs, spec) for ensemble in spec.ensembles}
    return StudyPlan(
        spec=spec,
        study_dir=study_dir,
        runs=tuple(runs),
        splits=tuple(splits.values()),
        ensemble_members=members,
    )


def grid_points(grid: Sequence[GridAxis]) -> list[GridPoint]:
    """The cartesian product of a grid, in the order the axes and values are written."""
    points = []
    for combination in itertools.product(*(axis.choices for axis in grid)):
        overrides: dict[str, Any] = {}
        for _, delta in combination:
            overrides.update(delta)
        choices = {axis.key: label for axis, (label, _) in zip(grid, combination)}
        label = " ".join(f"{key}={value}" for key, value in choices.items()) or "base"
        points.append(GridPoint(label=label, choices=choices, overrides=overrides))
    return points


def _expand_stage(
    spec: StudySpec,
    stage: StageSpec,
    study_dir: Path,
    earlier: Sequence[PlannedRun],
    splits: dict[Path, SplitsPlan],
) -> list[PlannedRun]:
    """The member runs of one stage: grid points × seeds × folds."""
    runs = []
    folds: Iterable[int | None] = range(stage.folds) if stage.folds else [None]
    for point, seed, fold in itertools.product(grid_points(stage.grid), stage.seeds, list(folds)):
        config = _run_config(spec, stage, point, seed, fold)
        depends_on: tuple[int, ...] = ()
        init = config.train.init
        if init.startswith(STAGE_INIT_PREFIX):
            source = _init_source(init[len(STAGE_INIT_PREFIX) :], point, seed, config, earlier, stage)
            config = cfg.with_values(
                config, {"train.init": f"run:{study_dir / RUNS_DIR / str(source.run_id)}"}
            )
            depends_on = (source.index,)
        split = splits_plan(config, spec.split_seed, study_dir)
        splits.setdefault(split.path, split)
        config = cfg.with_values(config, {"data.splits_file": str(split.path)})
        runs.append(
            PlannedRun(
                index=len(earlier) + len(runs),
                stage=stage.name,
                configuration=point.label,
                point=point.choices,
                seed=seed,
                fold=fold,
                role=ROLE_MEMBER,
                config=config,
                depends_on=depends_on,
            )
        )
    return runs


def _run_config(
    spec: StudySpec, stage: StageSpec, point: GridPoint, seed: int, fold: int | None
) -> cfg.RunConfig:
    """Base ⊕ stage base ⊕ grid point ⊕ (seed, fold, holdout, test switch), resolved (stem, image size,
    absolute paths). The values were checked when the spec was parsed; only their combination is new."""
    values: dict[str, Any] = {**spec.base, **stage.base, **point.overrides, "train.seed": seed}
    if fold is not None:
        values.update({"data.folds": stage.folds, "data.fold": fold})
    elif stage.val_fraction is not None:
        values["data.val_fraction"] = stage.val_fraction
    if spec.select is not None and stage is spec.stages[-1]:
        values["train.test"] = False  # the test split is touched only by the final retrained run
    try:
        init = values.get("train.init")
        if isinstance(init, PerModelInit):
            values["train.init"] = init.for_model(values.get("model.name", cfg.ModelConfig.name))
        config = cfg.with_values(cfg.RunConfig(), values)
        cfg.check_ranges(config)  # the combination (data.fold < data.folds); each value was checked on entry
        return resolve_config(config)
    except ConfigError as error:
        raise ConfigError(f"stage {stage.name!r}, configuration {point.label!r}: {error}") from None


def _init_source(
    source_stage: str,
    point: GridPoint,
    seed: int,
    config: cfg.RunConfig,
    earlier: Sequence[PlannedRun],
    stage: StageSpec,
) -> PlannedRun:
    """The run of `source_stage` this run starts from: same seed (or the source stage's only seed), and the
    same values on the source's grid axes."""
    source_runs = [run for run in earlier if run.stage == source_stage]
    source_seeds = {run.seed for run in source_runs}
    # a source stage with one seed was pretrained once and feeds every seed of this stage
    candidates = source_runs if len(source_seeds) == 1 else [run for run in source_runs if run.seed == seed]
    if not candidates:
        raise ConfigError(
            f"stage {stage.name!r}: train.init=stage:{source_stage} has no run with seed {seed}; "
            f"give stage {source_stage!r} the same seeds, or a single seed"
        )
    current = cfg.to_dict(config)
    matching = [run for run in candidates if _agrees(run, point, current)]
    if len(matching) != 1:
        axes = sorted({key for run in candidates for key in run.point})
        problem = "no run agrees" if not matching else f"{len(matching)} runs agree"
        raise ConfigError(
            f"stage {stage.name!r}, configuration {point.label!r}: train.init=stage:{source_stage}: "
            f"{problem} on its grid axes ({', '.join(axes) or 'none'}) for seed {seed}; "
            f"give this stage the same value(s) or a named axis shared with {source_stage!r}"
        )
    return matching[0]


def _agrees(source: PlannedRun, point: GridPoint, current: Mapping[str, Any]) -> bool:
    """Does a source run agree with this run on every axis of the source's grid (values, or named choices)?"""
    assert source.config is not None
    source_tree = cfg.to_dict(source.config)
    for key, label in source.point.items():
        if "." in key:
            if _lookup(source_tree, key) != _lookup(current, key):
                return False
        elif point.choices.get(key) != label:
            return False
    return True


def _lookup(tree: Mapping[str, Any], dotted: str) -> Any:
    section, name = dotted.split(".", 1)
    return tree[section][name]


def splits_plan(config: cfg.RunConfig, seed: int, study_dir: Path) -> SplitsPlan:
    """The splits file shared by every run with this training data and validation protocol."""
    data = config.data
    key = {name: getattr(data, name) for name in SPLIT_DATA_KEYS}
    key.update({"folds": data.folds, "val_fraction": None if data.folds else data.val_fraction, "seed": seed})
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=list).encode()).hexdigest()[:12]
    return SplitsPlan(
        path=study_dir / SPLITS_DIR / f"{digest}.json",
        data=data,
        folds=data.folds,
        val_fraction=data.val_fraction,
        seed=seed,
    )


def _final_runs(spec: StudySpec, runs: Sequence[PlannedRun]) -> list[PlannedRun]:
    """The select stage's retrained run(s): one per select seed, after every member of the last stage."""
    assert spec.select is not None
    last = spec.stages[-1]
    members = tuple(run.index for run in runs if run.stage == last.name)
    seeds = spec.select.seeds or last.seeds[:1]
    return [
        PlannedRun(
            index=len(runs) + i,
            stage=last.name,
            configuration="selected",
            point={},
            seed=seed,
            fold=None,
            role=ROLE_FINAL,
            config=None,
            depends_on=members,
        )
        for i, seed in enumerate(seeds)
    ]


def _ensemble_members(ensemble: EnsembleSpec, runs: Sequence[PlannedRun], spec: StudySpec) -> tuple[int, ...]:
    """Member run indices of an ensemble: last-stage member runs matching any selector."""
    last = spec.stages[-1].name
    pool = [run for run in runs if run.role == ROLE_MEMBER]
    chosen: list[int] = []
    for i, selector in enumerate(ensemble.members):
        matched = [run.index for run in pool if _selects(selector, run, last)]
        if not matched:
            labels = sorted({run.configuration for run in pool if run.stage == last})
            raise ConfigError(
                f"study spec ensembles {ensemble.name!r} members[{i}]={selector!r} matches no run; "
                f"configurations: {'; '.join(labels)}"
            )
        chosen.extend(index for index in matched if index not in chosen)
    return tuple(chosen)


def _selects(selector: str | Mapping[str, Any], run: PlannedRun, last_stage: str) -> bool:
    """A label selects runs whose configuration label or one grid value equals it; a mapping filters keys."""
    if isinstance(selector, str):
        return run.stage == last_stage and (selector == run.configuration or selector in run.point.values())
    wanted_stage = selector.get("stage", last_stage)
    if run.stage != wanted_stage or run.config is None:
        return False
    tree = cfg.to_dict(run.config)
    for key, value in selector.items():
        if key == "stage":
            continue
        if key in run.point and "." not in key:
            if run.point[key] != str(value):
                return False
        elif "." not in key or _lookup_or_missing(tree, key) != _normalised(value):
            return False
    return True


def _lookup_or_missing(tree: Mapping[str, Any], dotted: str) -> Any:
    section, _, name = dotted.partition(".")
    return tree.get(section, {}).get(name, object())


def _normalised(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
