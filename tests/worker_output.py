"""What tests read from a study worker: its `[i/n] <state> <run_id> ...` progress lines (cnnlab.study.runner
prints them) and the trials of its queue in the storage. Other lines (warnings, tables, a line a buffered
stream split) are never mistaken for progress lines. And how a test pauses a worker (SIGSTOP) without it
holding the queue's SQLite lock."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
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


def pause_outside_a_transaction(process: subprocess.Popen, database: Path) -> None:
    """SIGSTOP a worker at a moment it holds no lock on the SQLite queue file. Stopped inside a transaction it
    keeps the file's write lock, and every other process waits until it is woken (docs/studies.md): no
    worker could take its claim back, and this test's reads of the queue timed out after 120 s."""
    inode = database.stat().st_ino
    for _ in range(200):
        process.send_signal(signal.SIGSTOP)
        while Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
            time.sleep(0.01)
        if not holds_a_lock(process.pid, inode):
            return
        process.send_signal(signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError(f"process {process.pid} held a lock on {database} at each of 200 pauses")


def holds_a_lock(pid: int, inode: int) -> bool:
    """Whether /proc/locks lists a lock that process `pid` holds (not one it waits for) on file `inode`."""
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields:  # a process blocked waiting for the lock
            continue
        owner, device_and_inode = fields[4], fields[5]
        if owner == str(pid) and device_and_inode.rsplit(":", 1)[1] == str(inode):
            return True
    return False
