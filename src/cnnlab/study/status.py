"""`study status`: how many runs of a study are completed, running, interrupted, failed, diverged or pending
(`cnnlab.runfolder`'s states).

Read from study.json (the plan), the queue in its storage (running / retrying), and each run's result.json
(a completed, interrupted or failed result counts even when the storage is gone).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from cnnlab import runfolder
from cnnlab.errors import CnnlabError
from cnnlab.runfolder import PLAN_FILE, RUNS_DIR, resolved_folder
from cnnlab.study import queue as work_queue

STATES = runfolder.STATES
SHOWN_STATES = (runfolder.RUNNING, runfolder.INTERRUPTED, runfolder.FAILED, runfolder.DIVERGED)


@dataclasses.dataclass(frozen=True)
class RunStatus:
    """One planned run's state and, when it failed, why."""

    index: int
    run_id: str | None
    stage: str
    configuration: str
    seed: int
    fold: int | None
    state: str
    reason: str | None


@dataclasses.dataclass(frozen=True)
class StudyStatus:
    """Counts over the whole plan, each run's state, and whether the storage could be read."""

    study_dir: Path
    counts: dict[str, int]
    runs: tuple[RunStatus, ...]
    storage_read: bool

    def to_json(self) -> dict[str, Any]:
        """What `study status --json` prints: the folder, the counts and every run."""
        return {
            "study_dir": str(self.study_dir),
            "counts": self.counts,
            "runs": [dataclasses.asdict(run) for run in self.runs],
        }


def study_status(study_dir: str | Path, *, storage: str | None = None) -> StudyStatus:
    """The state of every planned run of a study folder."""
    study_dir = resolved_folder(study_dir)
    plan_path = study_dir / PLAN_FILE
    if not plan_path.is_file():
        raise CnnlabError(_not_a_study_folder(study_dir))
    plan = _read_plan(plan_path)
    queue_states = _queue_states(plan, storage or plan.get("storage"))
    runs = tuple(_run_status(study_dir, entry, queue_states) for entry in plan["runs"])
    counts = {state: sum(run.state == state for run in runs) for state in STATES}
    return StudyStatus(study_dir, counts, runs, queue_states is not None)


def _not_a_study_folder(folder: Path) -> str:
    """Why `folder` has no study.json, said for what it is: missing, a file, a tune's or a run's folder."""
    if not folder.exists():
        return f"no such folder: {folder}; give the --out folder of a `cnnlab study run`"
    if not folder.is_dir():
        return f"{folder} is a file, not a study folder; give the --out folder of a `cnnlab study run`"
    if any((folder / name).exists() for name in runfolder.TUNE_FILES):
        return (
            f"{folder} is a `cnnlab tune` folder, not a study folder: its trials and the best are in "
            f"{folder / runfolder.TUNE_SUMMARY_FILE} (complete when the tune ends; run the same tune "
            "again to go on)"
        )
    if (folder / runfolder.MARKER_FILE).exists():
        return (
            f"{folder} is one run's folder, not a study folder: its state is in its {runfolder.RESULT_FILE}; "
            f"for the whole study give the folder that holds {RUNS_DIR}/"
        )
    return f"{folder} is not a study folder: {PLAN_FILE} not found (run `cnnlab study run` first)"


# study.json's run entries: key → (allowed types, what the message says it must be)
ENTRY_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "index": ((int,), "an integer"),
    "run_id": ((str, type(None)), "a run id or null"),
    "stage": ((str,), "a stage name"),
    "configuration": ((str,), "a configuration label"),
    "seed": ((int,), "an integer"),
    "fold": ((int, type(None)), "an integer or null"),
}


def _read_plan(plan_path: Path) -> dict[str, Any]:
    """study.json with every run entry checked; a damaged one is one line naming the file and the fix."""
    try:
        plan = json.loads(plan_path.read_text(encoding="utf-8"))
        problem = _plan_problem(plan)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        problem = f"{type(error).__name__}: {error}"
    if problem is not None:
        raise CnnlabError(
            f"{plan_path} is not a readable study plan ({problem}); run the study's `cnnlab study run SPEC "
            f"--out {plan_path.parent}` again to rewrite it"
        )
    return plan


def _plan_problem(plan: Any) -> str | None:
    """What is wrong with study.json's shape (a mapping whose `runs` is a list of run entries), or None."""
    if not isinstance(plan, dict) or not isinstance(plan.get("runs"), list):
        return "expected a mapping with a list of runs"
    for number, entry in enumerate(plan["runs"]):
        if not isinstance(entry, dict):
            return f"runs[{number}] is not a mapping"
        for key, (types, wanted) in ENTRY_KEYS.items():
            value = entry.get(key)
            if key not in entry or isinstance(value, bool) or not isinstance(value, types):
                return f"runs[{number}].{key} must be {wanted}, got {value!r}"
    return None


def _queue_states(plan: dict[str, Any], url: str | None) -> dict[int, work_queue.RunState] | None:
    """The queue's view of every run, or None when the storage is missing or unreadable."""
    if (
        not isinstance(url, str)
        or not isinstance(plan.get("queue"), str)
        or not work_queue.storage_exists(url)
    ):
        return None
    try:
        queue = work_queue.RunQueue(
            url,
            plan["queue"],
            max_attempts=plan.get("max_attempts", work_queue.WorkerOptions.max_attempts),
            create=False,
        )
        return queue.states()
    except Exception:  # a status report must not fail because the storage is gone, locked or unreachable
        return None


def _run_status(
    study_dir: Path, entry: dict[str, Any], queue_states: dict[int, work_queue.RunState] | None
) -> RunStatus:
    queued = queue_states.get(entry["index"]) if queue_states else None
    run_id = entry.get("run_id") or (queued.trial.user_attrs.get("run_id") if queued else None)
    result, damage = _result(study_dir, run_id)
    state, reason = _state(result, damage, queued)
    return RunStatus(
        entry["index"],
        run_id,
        entry["stage"],
        entry["configuration"],
        entry["seed"],
        entry["fold"],
        state,
        reason,
    )


def _state(
    result: dict[str, Any] | None, damage: str | None, queued: work_queue.RunState | None
) -> tuple[str, str | None]:
    """Files first (a completed result is completed whatever the storage says), then the queue. As `study
    run` sees it: a run the queue records completed without a completed result in its folder trains again
    (pending), and so does one whose damaged result.json `study run` removes."""
    status = result.get("status") if result is not None else None
    if status == runfolder.COMPLETED:
        return runfolder.COMPLETED, None
    if queued is not None and queued.state in (runfolder.RUNNING, runfolder.INTERRUPTED):
        return queued.state, None if queued.state == runfolder.RUNNING else "its worker is gone"
    if queued is not None and queued.state == runfolder.COMPLETED:
        lost = damage or ("its result.json says " + repr(status) if status else "its result.json is gone")
        return runfolder.PENDING, f"recorded completed, but {lost}; `study run` trains it again"
    if status in (runfolder.INTERRUPTED, runfolder.FAILED, runfolder.DIVERGED):
        return str(status), result.get("reason") if result else None
    if queued is not None and queued.state == runfolder.FAILED:
        return runfolder.FAILED, queued.trial.user_attrs.get("reason") or "its worker died on every attempt"
    if queued is not None:
        return queued.state, damage and f"{damage}; `study run` trains it again"
    return runfolder.PENDING, damage and f"{damage}; `study run` trains it again"


def _result(study_dir: Path, run_id: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """The run's result.json (None when absent), and what is wrong with it when it is damaged."""
    if not run_id:
        return None, None
    try:
        return runfolder.read_result(study_dir / RUNS_DIR / run_id), None
    except runfolder.RunFolderError:
        return None, "its result.json is damaged"


def format_status(status: StudyStatus) -> str:
    """Counts on one line, then one line per failed or running run."""
    total = len(status.runs)
    counts = ", ".join(f"{status.counts[state]} {state}" for state in STATES)
    lines = [f"{status.study_dir}: {total} runs: {counts}"]
    if not status.storage_read:
        lines.append("(storage not readable: running/pending told apart from files only)")
    for run in status.runs:
        if run.state in SHOWN_STATES or run.reason:
            fold = f" fold={run.fold}" if run.fold is not None else ""
            why = f" — {run.reason}" if run.reason else ""
            lines.append(
                f"  {run.state:<8} {run.run_id or '-':<12} {run.stage}: {run.configuration} "
                f"seed={run.seed}{fold}{why}"
            )
    return "\n".join(lines)
