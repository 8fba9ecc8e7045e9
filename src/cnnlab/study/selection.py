"""`select`: the configuration with the best mean validation metric over seeds and folds, and the config of
its retrained run (the whole training split, tested once). Read from result files only.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cnnlab import config as cfg
from cnnlab import runfolder, safeio
from cnnlab.errors import CnnlabError
from cnnlab.study.plan import ROLE_MEMBER, PlannedRun, StudyPlan

SELECT_FILE = "select.json"


@dataclasses.dataclass(frozen=True)
class ConfigurationScore:
    """Mean and spread of the selection metric over a configuration's completed runs."""

    configuration: str
    mean: float
    std: float
    runs: int


@dataclasses.dataclass(frozen=True)
class Selection:
    """The chosen configuration, every candidate's score, and a member run that carries its config."""

    metric: str
    chosen: ConfigurationScore
    scores: tuple[ConfigurationScore, ...]
    template: PlannedRun


def run_result(plan: StudyPlan, run: PlannedRun) -> dict[str, Any] | None:
    """A planned run's result.json, or None when it has not written one."""
    if run.run_id is None:
        return None
    return runfolder.read_result(plan.run_dir(run.run_id))


def metric_value(result: Mapping[str, Any], metric: str) -> float | None:
    """`best.val_acc` or `last.val_acc` from a result.json mapping; None when absent or not finite."""
    section, name = metric.split(".")
    value = (result.get(section) or {}).get(name)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def select_configuration(plan: StudyPlan) -> Selection:
    """Score every configuration of the last stage by its mean metric; the best (first on ties) is chosen."""
    assert plan.spec.select is not None
    metric = plan.spec.select.metric
    members = plan.stage_runs(plan.spec.stages[-1].name, ROLE_MEMBER)
    values: dict[str, list[float]] = {}
    templates: dict[str, PlannedRun] = {}
    for run in members:
        templates.setdefault(run.configuration, run)
        result = run_result(plan, run)
        completed = result is not None and result.get("status") == runfolder.COMPLETED
        value = metric_value(result, metric) if completed else None
        if value is not None:
            values.setdefault(run.configuration, []).append(value)
    scores = tuple(_score(label, found) for label, found in values.items())
    if not scores:
        raise CnnlabError(
            f"select: no completed run of stage {plan.spec.stages[-1].name!r} has {metric}; "
            "nothing to select from"
        )
    chosen = max(scores, key=lambda score: score.mean)  # max keeps the first of equal means (grid order)
    return Selection(metric=metric, chosen=chosen, scores=scores, template=templates[chosen.configuration])


def _score(label: str, values: Sequence[float]) -> ConfigurationScore:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return ConfigurationScore(label, statistics.fmean(values), std, len(values))


def final_config(selection: Selection, seed: int) -> cfg.RunConfig:
    """The chosen configuration retrained on the whole training split and evaluated on the test split once."""
    template = selection.template.config
    assert template is not None
    return cfg.with_values(  # typed values over a checked config: nothing to check again
        template,
        {
            "train.seed": seed,
            "data.folds": None,
            "data.fold": 0,
            "data.val_fraction": 0.0,
            "data.splits_file": None,
            "train.test": True,
            "train.early_stopping": None,
        },
    )


def write_selection(study_dir: Path, selection: Selection, final_runs: Mapping[int, str]) -> Path:
    """select.json: the metric, every configuration's score, the chosen one and the retrained run ids."""
    return safeio.atomic_write_json(
        study_dir / SELECT_FILE,
        {
            "metric": selection.metric,
            "chosen": selection.chosen.configuration,
            "scores": [dataclasses.asdict(score) for score in selection.scores],
            "final_runs": {str(seed): run_id for seed, run_id in final_runs.items()},
        },
    )
