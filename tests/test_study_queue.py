"""The work queue on Optuna's RDB storage: exactly-once claims across processes, dead workers retried."""

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from cnnlab.runfolder import COMPLETED, DIVERGED, PENDING, RUNNING
from cnnlab.study import queue as work_queue
from cnnlab.study.queue import QueueMissing, RunQueue
from tests.worker_output import pause_outside_a_transaction

WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from cnnlab.study.queue import RunQueue
    url, name, n_runs, out, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    queue = RunQueue(url, name, heartbeat_s=1, grace_s=2)
    queue.enqueue(n_runs)
    ready = Path(out + ".ready")
    ready.touch()
    while len(list(ready.parent.glob("*.ready"))) < int(sys.argv[6]):  # start claiming together
        time.sleep(0.05)
    claimed = []
    while True:
        claim = queue.claim(lambda index: True)
        if claim is None:
            if queue.drained(n_runs):
                break
            time.sleep(0.05)
            continue
        if mode == "hang":  # claim one run, report it, then never finish it
            print(claim.run_index, flush=True)
            with queue.heartbeat(claim):
                time.sleep(600)
        claimed.append(claim.run_index)
        time.sleep(0.02)  # a (very) short run
        queue.finish(claim, "completed", value=1.0)
    open(out, "w").write(" ".join(map(str, claimed)))
    """
)


def start_worker(tmp_path, url, name, n_runs, tag, mode="work", together=1):
    out = tmp_path / f"claimed-{tag}.txt"
    command = [sys.executable, "-c", WORKER, url, name, str(n_runs), str(out), mode, str(together)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True), out


def test_two_processes_claim_every_run_exactly_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    workers = [start_worker(tmp_path, url, "q", 30, tag, together=2) for tag in ("a", "b")]
    claimed = []
    for process, out in workers:
        assert process.wait(timeout=120) == 0
        claimed.append([int(i) for i in out.read_text().split()])
    everything = sorted(claimed[0] + claimed[1])
    assert everything == list(range(30)), "every run claimed once, none twice"
    assert claimed[0] and claimed[1], "both processes took part"
    queue = RunQueue(url, "q")
    assert len(queue.study.trials) == 30 and queue.drained(30)


def test_run_of_a_killed_worker_is_retried_by_another(tmp_path):
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    hung, _ = start_worker(tmp_path, url, "q", 3, "hung", mode="hang")
    index = int(hung.stdout.readline())
    queue = RunQueue(url, "q", heartbeat_s=1, grace_s=2)
    assert queue.states()[index].state == RUNNING
    hung.send_signal(signal.SIGKILL)
    hung.wait(timeout=30)
    retried = _claim_all(queue, 3)
    assert sorted(retried) == [0, 1, 2] and retried.count(index) == 1
    attempts = [t.user_attrs["attempt"] for t in queue.study.trials if t.user_attrs["run_index"] == index]
    assert attempts == [1, 2] and queue.drained(3)


def test_run_of_a_silent_worker_is_retried_after_its_heartbeats_stop(tmp_path):
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    hung, _ = start_worker(tmp_path, url, "q", 2, "silent", mode="hang")
    index = int(hung.stdout.readline())
    # alive but silent, like a worker on a machine that dropped off the network
    pause_outside_a_transaction(hung, tmp_path / "queue.db")
    try:
        queue = RunQueue(url, "q", heartbeat_s=1, grace_s=2)
        started = time.monotonic()
        retried = _claim_all(queue, 2)
        assert sorted(retried) == [0, 1] and retried.count(index) == 1
        assert time.monotonic() - started >= 1.0, (
            "retried only once its heartbeat was older than the grace period"
        )
    finally:
        hung.kill()
        hung.wait(timeout=30)


def test_failed_runs_are_recorded_not_retried(tmp_path):
    queue = RunQueue(f"sqlite:///{tmp_path / 'queue.db'}", "q")
    queue.enqueue(2)
    first = queue.claim(lambda index: True)
    queue.finish(first, "diverged", reason="loss became nan")
    states = queue.states()
    assert states[first.run_index].state == DIVERGED and states[1 - first.run_index].state == PENDING
    second = queue.claim(lambda index: True)
    assert second.run_index == 1 - first.run_index
    queue.finish(second, "completed", value=0.9)
    assert queue.claim(lambda index: True) is None and queue.drained(2)
    assert queue.states()[second.run_index].state == COMPLETED


def test_enqueue_is_done_once_per_plan(tmp_path):
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    RunQueue(url, "q").enqueue(5)
    again = RunQueue(url, "q")
    again.enqueue(5)
    assert not again.created and len(again.study.trials) == 5


def test_a_queue_nobody_planned_is_missing_not_created(tmp_path):
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    RunQueue(url, "other").enqueue(1)
    with pytest.raises(QueueMissing, match="no study queue 'q'"):
        RunQueue(url, "q", create=False)
    planner = RunQueue(url, "q")
    assert planner.created, "the planner makes the queue, so it fills it at once (no wait for another)"


def _claim_all(queue, n_runs, timeout=60):
    claimed = []
    deadline = time.monotonic() + timeout
    while not queue.drained(n_runs):
        assert time.monotonic() < deadline, "queue did not drain"
        claim = queue.claim(lambda index: True)
        if claim is None:
            time.sleep(0.1)
            continue
        claimed.append(claim.run_index)
        queue.finish(claim, "completed", value=1.0)
    return claimed


@pytest.mark.parametrize("error", ["IntegrityError", "ProgrammingError"])
def test_a_process_that_loses_the_race_to_create_the_tables_opens_the_storage(tmp_path, monkeypatch, error):
    """Two processes opening a new PostgreSQL storage together: the loser's CREATE fails (`relation
    "alembic_version" already exists` is a ProgrammingError); it tries again and finds the tables."""
    import sqlalchemy

    real, calls = work_queue.RDBStorage, []

    def loses_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise getattr(sqlalchemy.exc, error)(
                "CREATE TABLE alembic_version", {}, Exception("already exists")
            )
        return real(*args, **kwargs)

    monkeypatch.setattr(work_queue, "RDBStorage", loses_once)
    storage = work_queue.open_storage(f"sqlite:///{tmp_path / 'q.db'}")
    assert len(calls) == 2 and storage.get_all_studies() == []
