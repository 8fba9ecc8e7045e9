"""Studies: spec → runs, the shared work queue, selection, ensembles, status and tuning.

`run_study(spec, out_dir)` plans a study (grid × seeds × folds, stages, select), saves its splits once,
fills a work queue in Optuna's RDB storage and trains each run exactly once across every worker process;
`study_status(dir)` counts runs by state (`cnnlab.runfolder.STATES`); `run_tune(spec, out_dir)` searches
hyperparameters with TPE and fold-wise pruning. This package never draws: reports are `cnnlab.report`'s job.
"""

from __future__ import annotations

from typing import Any

# name → module: imported on first use, so `cnnlab study status` does not load torch or Lightning
_EXPORTS = {
    "build_ensemble": "ensemble",
    "combine": "ensemble",
    "PlannedRun": "plan",
    "StudyPlan": "plan",
    "expand": "plan",
    "grid_points": "plan",
    "StudyOutcome": "runner",
    "WorkerOptions": "runner",
    "plan_study": "runner",
    "run_study": "runner",
    "select_configuration": "selection",
    "StudySpec": "spec",
    "TuneSpec": "spec",
    "load_study_spec": "spec",
    "load_tune_spec": "spec",
    "parse_study_spec": "spec",
    "parse_tune_spec": "spec",
    "StudyStatus": "status",
    "format_status": "status",
    "study_status": "status",
    "TuneOutcome": "tune",
    "run_tune": "tune",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"cnnlab.study.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'cnnlab.study' has no attribute {name!r}")


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
