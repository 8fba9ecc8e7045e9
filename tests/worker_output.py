"""What tests read from a study worker: its `[i/n] <state> <run_id> ...` progress lines (cnnlab.study.runner
prints them) and the trials of its queue in the storage. Other lines (warnings, tables, a line a buffered
stream split) are never mistaken for progress lines."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cnnlab.study import queue as work_queue

PROGRESS_LINE = re.compile(r"^\[\d+/\d+\] (?P<state>[a-z]+) +(?P<run>\S+)")


def progress_lines(output: str) -> list[re.Match]:
    """Every progress line of a worker's output, in order."""
    return [match for line in output.splitlines() if (match := PROGRESS_LINE.match(line))]


def run_lines(output: str, state: str) -> list[str]:
    """Run ids of a worker's `[i/n] <state> <run_id> ...` lines."""
    return [match["run"] for match in progress_lines(output) if match["state"] == state]


def queue_trials(url: str, study_dir: Path) -> dict[int, list]:
    """Every trial of the study's queue in the storage, per run index, oldest first."""
    plan = json.loads((study_dir / "study.json").read_text())
    storage = work_queue.open_storage(url)
    study_id = storage.get_study_id_from_name(plan["queue"])
    trials: dict[int, list] = {}
    for trial in sorted(storage.get_all_trials(study_id), key=lambda t: t.number):
        trials.setdefault(trial.user_attrs[work_queue.RUN_INDEX], []).append(trial)
    storage.engine.dispose()
    return trials
