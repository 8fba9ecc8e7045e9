"""Studies: spec → runs, the shared work queue, selection, ensembles, status and tuning.

`run_study(spec, out_dir)` plans a study (grid × seeds × folds, stages, select), saves its splits once,
fills a work queue in Optuna's RDB storage and trains each run exactly once across every worker process;
`study_status(dir)` counts runs by state (`cnnlab.runfolder.STATES`); `run_tune(spec, out_dir)` searches
hyperparameters with TPE and fold-wise pruning. This package never draws: reports are `cnnlab.report`'s job.
"""

from __future__ import annotations

from cnnlab.study.ensemble import build_ensemble, combine
from cnnlab.study.plan import PlannedRun, StudyPlan, expand, grid_points
from cnnlab.study.queue import WorkerOptions
from cnnlab.study.runner import StudyOutcome, plan_study, run_study
from cnnlab.study.selection import select_configuration
from cnnlab.study.spec import (
    StudySpec,
    TuneSpec,
    load_study_spec,
    load_tune_spec,
    parse_study_spec,
    parse_tune_spec,
)
from cnnlab.study.status import StudyStatus, format_status, study_status
from cnnlab.study.tune import TuneOutcome, run_tune

__all__ = [
    "PlannedRun",
    "StudyOutcome",
    "StudyPlan",
    "StudySpec",
    "StudyStatus",
    "TuneOutcome",
    "TuneSpec",
    "WorkerOptions",
    "build_ensemble",
    "combine",
    "expand",
    "format_status",
    "grid_points",
    "load_study_spec",
    "load_tune_spec",
    "parse_study_spec",
    "parse_tune_spec",
    "plan_study",
    "run_study",
    "run_tune",
    "select_configuration",
    "study_status",
]
