"""Studies and tunes past one machine: several `cnnlab study run` / `cnnlab tune` processes, each standing
for a machine, share one REAL PostgreSQL server (started on 127.0.0.1 by the `postgres` fixture) and one
study folder. Each run executes once; a killed worker's run is taken over after its heartbeats stop; a
paused worker loses its claim and writes nothing into the new owner's run; a tune reaches its trial budget
exactly. Executions are counted from the run folders (TensorBoard sessions, metrics rows) and from the
storage (trials per run)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from cnnlab import cli, runfolder
from cnnlab.study import queue as work_queue
from tests.test_study_run import TINY
from tests.worker_output import queue_trials, run_lines

SHORT = {**TINY, "data.subset": 600}  # ~0.1 s per epoch on an idle core
# Runs that a test stops (SIGKILL, SIGSTOP) once two epochs are recorded: the stop must land before the run
# ends. Eight epochs left ~0.6 s for it, which a loaded CI host (pytest -n 2 beside two workers) missed once;
# thirty leave ~3 s.
STOPPED_EPOCHS = 30


def _unshare_prefix() -> list[str] | None:
    """A command prefix that runs a process in its own PID namespace (its pids mean nothing to the other
    "machines", as on separate hosts), or None where this system does not allow it."""
    if shutil.which("unshare") is None:
        return None
    for prefix in (
        ["unshare", "--pid", "--fork", "--kill-child"],
        ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--kill-child"],
    ):
        try:
            done = subprocess.run([*prefix, "true"], capture_output=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0:
            return prefix
    return None


UNSHARE = _unshare_prefix()


class Worker:
    """One `cnnlab` process on a Machine; `pid` is the cnnlab process itself (inside its namespace)."""

    def __init__(self, process: subprocess.Popen, namespaced: bool) -> None:
        self.process = process
        self.pid = _child_pid(process.pid) if namespaced else process.pid
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def started(self) -> bool:
        """Has this worker started training a run (its `[i/n] start` line)?"""
        return bool(run_lines("".join(self.lines), "start"))

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def finish(self, timeout: float = 150) -> tuple[int, str]:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            self.reader.join(timeout=10)
            raise AssertionError(
                f"worker did not finish within {timeout} s:\n{''.join(self.lines)}"
            ) from None
        self.reader.join(timeout=10)
        return self.process.returncode, "".join(self.lines)


def _child_pid(parent: int, timeout: float = 20) -> int:
    """The process that `unshare --fork` started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.02)
    raise AssertionError(f"unshare (pid {parent}) started no process")


class Machine:
    """A stand-in for one machine: its own working directory, data and cache folders and home (and, where
    the system allows, its own PID namespace); what it shares with the others is the database and --out."""

    def __init__(self, root: Path, name: str, *, namespaced: bool = True) -> None:
        self.cwd = root / name
        self.namespaced = namespaced and UNSHARE is not None
        for sub in ("data", "cache", "home"):
            (self.cwd / sub).mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "CNNLAB_QUIET": "1",
            "CNNLAB_DATA": str(self.cwd / "data"),
            "CNNLAB_CACHE": str(self.cwd / "cache"),
            "HOME": str(self.cwd / "home"),
            "MPLCONFIGDIR": str(self.cwd / "home" / "mpl"),
        }

    def spec(self, name: str, raw: dict) -> str:
        """Write the spec into this machine's working directory; returns its relative path."""
        (self.cwd / name).write_text(yaml.safe_dump(raw, sort_keys=False))
        return name

    def start(self, *args: str) -> Worker:
        command = [sys.executable, "-m", "cnnlab", *args]
        if self.namespaced:
            command = [*UNSHARE, *command]
        process = subprocess.Popen(
            command,
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        return Worker(process, self.namespaced)


@pytest.fixture
def database(postgres):
    """A fresh database on the session's PostgreSQL server; its plain `postgresql://` URL."""
    return postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")


def sessions(run_dir: Path) -> int:
    """How many processes trained in this folder: TensorBoard names its event files
    events.out.tfevents.<time>.<host>.<pid>.<n>, so one pid per training session."""
    names = (run_dir / runfolder.TENSORBOARD_DIR).glob("events.out.tfevents.*")
    return len({name.name.split(".")[-2] for name in names})


def epochs(run_dir: Path) -> list[int]:
    path = run_dir / runfolder.METRICS_FILE
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def wait_for(condition, timeout: float, what: str, workers: tuple[Worker, ...] = ()):
    """Poll `condition` until it is truthy; a timeout names what was awaited and shows the workers' output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    shown = "".join(f"\n--- worker {w.pid}:\n{''.join(w.lines)}" for w in workers)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{shown}")


def stop_mid_run(worker: Worker, signum: int, run_dir: Path) -> list[int]:
    """Send `signum` to the worker training `run_dir` once two epochs are recorded; returns the epochs
    recorded at that moment, which must be fewer than the run's (else the test would wait on a finished
    run)."""
    wait_for(lambda: len(epochs(run_dir)) >= 2, 120, "two epochs on the claiming machine", (worker,))
    worker.signal(signum)
    before = epochs(run_dir)
    assert len(before) < STOPPED_EPOCHS, f"the run ended before {signal.Signals(signum).name}: {before}"
    return before


def assert_clean(code: int, output: str) -> None:
    assert code == 0 and "Traceback" not in output, output


# The storage URL --------------------------------------------------------------------------------------------


def test_bare_postgresql_urls_open_with_psycopg3_when_psycopg2_is_absent(monkeypatch):
    import sqlalchemy

    # as SQLAlchemy before 2.1 does: a bare postgresql:// URL means psycopg2
    default = sqlalchemy.engine.URL.get_driver_name
    monkeypatch.setattr(
        sqlalchemy.engine.URL,
        "get_driver_name",
        lambda self: "psycopg2" if self.drivername == "postgresql" else default(self),
    )
    monkeypatch.setattr(work_queue, "_installed", lambda module: module == "psycopg")
    url = "postgresql://alice:s3cret@db.example:5433/studies?sslmode=require"
    assert work_queue.storage_engine_url(url) == url.replace("postgresql://", "postgresql+psycopg://")
    assert work_queue.storage_engine_url("postgres://bob@db/x") == "postgresql+psycopg://bob@db/x"
    for kept in ("postgresql+psycopg2://u@h/db", "sqlite:////tmp/study.db", "mysql+pymysql://u@h/db"):
        assert work_queue.storage_engine_url(kept) == kept
    monkeypatch.setattr(work_queue, "_installed", lambda module: True)  # psycopg2 is there: used as typed
    assert work_queue.storage_engine_url(url) == url
    monkeypatch.setattr(sqlalchemy.engine.URL, "get_driver_name", default)  # SQLAlchemy 2.1: psycopg 3
    monkeypatch.setattr(work_queue, "_installed", lambda module: module == "psycopg")
    assert work_queue.storage_engine_url(url) == url


def one_run_spec(tmp_path: Path) -> Path:
    """A study spec of one tiny run (one epoch), written into tmp_path."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"base": {**TINY, "train.epochs": 1}, "seeds": [0]}))
    return spec


def test_a_postgresql_url_without_its_driver_says_which_extra_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(work_queue, "_installed", lambda module: False)
    spec = one_run_spec(tmp_path)
    out = tmp_path / "study"
    code = cli.main(["study", "run", str(spec), "--out", str(out), "--storage", "postgresql://u:pw@h/db"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "cnnlab[postgres]" in err and "pw" not in err, err
    assert not out.exists(), "a storage that cannot be opened changes no file"


def test_a_worker_joins_the_database_its_planner_recorded_and_another_one_is_refused(
    tmp_path, database, capsys
):
    spec = one_run_spec(tmp_path)
    out = tmp_path / "study"
    assert cli.main(["study", "run", str(spec), "--out", str(out), "--storage", database]) == 0
    capsys.readouterr()
    assert cli.main(["study", "run", str(spec), "--out", str(out), "--worker-only"]) == 0
    assert "1 completed (this process trained 0" in capsys.readouterr().out, "it joined the PostgreSQL queue"
    assert not (out / "study.db").exists(), "no SQLite queue of its own"
    other = f"sqlite:///{tmp_path / 'other.db'}"
    for extra in ([], ["--worker-only"]):
        code = cli.main(["study", "run", str(spec), "--out", str(out), "--storage", other, *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert f"keeps its queue in {database}, not in {other}; pass --storage {database} or leave" in err
    assert not (tmp_path / "other.db").exists()


def test_a_storage_that_cannot_be_reached_is_one_line_without_its_password(tmp_path, capsys):
    spec = one_run_spec(tmp_path)
    url = "postgresql://u:s3cr3t@127.0.0.1:1/db"  # nothing listens on port 1
    code = cli.main(["study", "run", str(spec), "--out", str(tmp_path / "study"), "--storage", url])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("cnnlab: error: --storage 'postgresql://u:***@127.0.0.1:1/db' cannot be opened")
    assert "s3cr3t" not in err


def test_the_server_is_real_and_listens_on_loopback_only(postgres, database):
    import psycopg

    host, port = "127.0.0.1", postgres.port
    with psycopg.connect(host=host, port=port, user="cnnlab", dbname=database.rsplit("/", 1)[1]) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        listen = conn.execute("SHOW listen_addresses").fetchone()[0]
    assert version.split(".")[0].isdigit() and listen == "127.0.0.1"


# Two machines, one database, one shared folder ------------------------------------------------------------


@pytest.mark.slow
def test_two_machines_share_a_postgresql_study_and_each_run_executes_once(tmp_path, database, capsys):
    raw = {
        "name": "two-machines",
        "base": {**SHORT, "train.epochs": 2},
        "grid": {"optim.lr": [0.003, 0.02]},
        "seeds": [0, 1],
    }
    shared = tmp_path / "shared" / "study"
    machines = [Machine(tmp_path, name) for name in ("machine-a", "machine-b")]
    workers = [
        m.start("study", "run", m.spec("spec.yaml", raw), "--out", str(shared), "--storage", database)
        for m in machines
    ]
    results = [worker.finish() for worker in workers]
    for code, output in results:
        assert_clean(code, output)
    run_ids = sorted(path.name for path in (shared / "runs").iterdir())
    assert len(run_ids) == 4
    completed = [run_lines(output, "completed") for _, output in results]
    assert sorted(completed[0] + completed[1]) == run_ids, "every run trained once, by one of the two"
    assert all(completed), f"both machines took part: {completed}"
    for run_id in run_ids:  # from the run folders
        run_dir = shared / "runs" / run_id
        assert runfolder.read_result(run_dir)["status"] == "completed"
        assert epochs(run_dir) == [0, 1] and sessions(run_dir) == 1
    trials = queue_trials(database, shared)  # from the storage
    assert sorted(trials) == [0, 1, 2, 3]
    for run_trials in trials.values():
        assert [t.state.name for t in run_trials] == ["COMPLETE"], "one claim per run, none retried"
        assert run_trials[0].user_attrs[work_queue.STATUS] == "completed"
        assert run_trials[0].user_attrs["run_id"] in run_ids
    assert json.loads((shared / "study.json").read_text())["storage"] == database
    capsys.readouterr()
    assert cli.main(["study", "status", str(shared)]) == 0
    assert "4 completed" in capsys.readouterr().out


def start_both_machines(a: Machine, b: Machine, raw: dict, shared: Path, database: str) -> tuple:
    """Machine a plans and works, b only works, on one study (heartbeat 1 s); returns (the machine that
    claimed the run, the other)."""
    args = ("--out", str(shared), "--storage", database, "--heartbeat", "1")
    workers = [
        a.start("study", "run", a.spec("spec.yaml", raw), *args),
        b.start("study", "run", b.spec("spec.yaml", raw), *args, "--worker-only"),
    ]
    claimer = wait_for(
        lambda: next((w for w in workers if w.started()), None), 120, "a machine to claim the run"
    )
    return claimer, workers[1 - workers.index(claimer)]


@pytest.mark.slow
@pytest.mark.skipif(UNSHARE is None, reason="needs a PID namespace (unshare) to stand for a second machine")
def test_a_killed_machines_run_is_taken_over_after_its_heartbeats_stop(tmp_path, database):
    raw = {"name": "takeover", "base": {**SHORT, "train.epochs": STOPPED_EPOCHS}, "seeds": [0]}
    shared = tmp_path / "shared" / "study"
    # a in a PID namespace of its own: neither sees the other's pids, as on two hosts
    a, b = Machine(tmp_path, "machine-a"), Machine(tmp_path, "machine-b", namespaced=False)
    victim, survivor = start_both_machines(a, b, raw, shared, database)  # grace: 3 beats
    run_dir = wait_for(lambda: next(iter(sorted((shared / "runs").glob("*"))), None), 120, "a run folder")
    before_kill = stop_mid_run(victim, signal.SIGKILL, run_dir)
    killed_at = time.monotonic()
    assert victim.finish(timeout=30)[0] != 0

    def reaped() -> bool:
        return queue_trials(database, shared)[0][0].state.name != "RUNNING"

    wait_for(reaped, 60, "the other machine to take the killed claim back", (survivor,))
    waited = time.monotonic() - killed_at
    assert waited >= 1.5, f"taken back after {waited:.1f} s: by heartbeat timeout, not by a pid check"
    code, output = survivor.finish()
    assert_clean(code, output)
    assert run_lines(output, "completed") == [run_dir.name]
    assert epochs(run_dir) == list(range(STOPPED_EPOCHS)), "each epoch recorded once"
    assert len(before_kill) >= 2 and sessions(run_dir) == 2, "killed once, resumed once on the other"
    assert runfolder.read_result(run_dir)["epochs_run"] == STOPPED_EPOCHS
    run_trials = queue_trials(database, shared)[0]
    assert [t.state.name for t in run_trials] == ["FAIL", "COMPLETE"]
    assert run_trials[1].user_attrs[work_queue.ATTEMPT] == 1, "an attempt that made progress costs nothing"
    assert run_trials[0].user_attrs["worker"]["node"] != run_trials[1].user_attrs["worker"]["node"]


@pytest.mark.slow
def test_a_stopped_machine_loses_its_claim_on_postgresql_and_each_run_completes_once(tmp_path, database):
    raw = {"name": "pause", "base": {**SHORT, "train.epochs": STOPPED_EPOCHS}, "seeds": [0]}
    shared = tmp_path / "shared" / "study"
    a, b = Machine(tmp_path, "machine-a"), Machine(tmp_path, "machine-b")
    sleeper, other = start_both_machines(a, b, raw, shared, database)
    paused_dir = wait_for(lambda: next(iter(sorted((shared / "runs").glob("*"))), None), 120, "a run folder")
    stop_mid_run(sleeper, signal.SIGSTOP, paused_dir)

    def reaped() -> bool:
        trials = queue_trials(database, shared)
        return any(t.state.name == "FAIL" for run_trials in trials.values() for t in run_trials)

    wait_for(reaped, 90, "the other machine to reap the paused claim", (other,))
    time.sleep(2)  # b claims the run again and finds its folder held by the paused worker
    sleeper.signal(signal.SIGCONT)
    results = [sleeper.finish(), other.finish()]
    for code, output in results:
        assert_clean(code, output)
    run_ids = sorted(path.name for path in (shared / "runs").iterdir())
    completed = [run_id for _, output in results for run_id in run_lines(output, "completed")]
    assert sorted(completed) == run_ids, f"each run completed exactly once: {results}"
    assert run_lines(results[0][1], "lost") == [paused_dir.name], "the woken worker saw its claim was lost"
    assert epochs(paused_dir) == list(range(STOPPED_EPOCHS))
    assert runfolder.read_result(paused_dir)["epochs_run"] == STOPPED_EPOCHS
    states = [t.state.name for t in queue_trials(database, shared)[0]]
    assert states.count("COMPLETE") == 1 and states[0] == "FAIL", states


HOLD_A_ROW_LOCK_AND_STOP = """
import os, signal, sys, sqlalchemy
from cnnlab.study.queue import RunQueue
queue = RunQueue(sys.argv[1], "q", heartbeat_s=1)
claim = queue.claim(lambda index: True)
connection = queue.storage.engine.connect()
transaction = connection.begin()  # as in the middle of recording an outcome: the trial's row locked
lock = sqlalchemy.text("SELECT * FROM trials WHERE trial_id = :t FOR UPDATE")
connection.execute(lock, {"t": claim.trial_id})
print("locked", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
try:
    connection.execute(sqlalchemy.text("SELECT 1"))
    transaction.commit()
    print("woken: the transaction went on", flush=True)
except sqlalchemy.exc.DBAPIError as error:
    print("woken:", type(error.orig).__name__, flush=True)
print("still mine:", queue.still_mine(claim), flush=True)
"""


def test_a_worker_paused_inside_a_transaction_stalls_the_others_for_one_grace_period_only(database):
    """SIGSTOP can land while a worker holds a row lock; PostgreSQL then ends its idle transaction after the
    grace period (IDLE_TRANSACTION_MIN_S at least), so the others reap its claim instead of waiting for it
    to wake; woken, it finds its connection ended and its claim gone."""
    queue = work_queue.RunQueue(database, "q", heartbeat_s=1)  # grace 3 s: the timeout is its 10 s floor
    queue.enqueue(1)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_ROW_LOCK_AND_STOP, database], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        time.sleep(queue.grace_s + 1)  # its heartbeats stopped: stale, so the reaper needs the locked row
        reaper = threading.Thread(target=queue.reap, daemon=True)
        reaper.start()
        reaper.join(timeout=60)  # blocked on the row lock until the server ends the holder's session
        assert not reaper.is_alive(), "the paused worker's row lock stalled the other worker past 60 s"
    finally:
        os.kill(holder.pid, signal.SIGCONT)
    output = holder.communicate(timeout=60)[0]
    assert "woken: IdleInTransactionSessionTimeout" in output and "still mine: False" in output, output
    assert [t.state.name for t in queue.study.trials] == ["FAIL", "WAITING"], "reaped and queued again"
    queue.storage.engine.dispose()


@pytest.mark.slow
def test_two_tune_processes_on_postgresql_reach_the_trial_budget_exactly(tmp_path, database):
    raw = {
        "name": "tune-pg",
        "base": {**TINY, "train.epochs": 1},
        "cv": {"folds": 2},
        "pruner": "none",
        "space": {"optim.lr": {"low": 0.001, "high": 0.05, "log": True}, "data.batch_size": [16, 32]},
    }
    shared = tmp_path / "shared" / "tune"
    machines = [Machine(tmp_path, name, namespaced=False) for name in ("machine-a", "machine-b")]
    args = ("--out", str(shared), "--storage", database, "--trials", "4", "--heartbeat", "1")
    workers = [m.start("tune", m.spec("tune.yaml", raw), *args) for m in machines]
    results = [worker.finish(timeout=200) for worker in workers]
    for code, output in results:
        assert code == 0, output
    import optuna

    storage = work_queue.open_storage(database)
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    finished = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    assert len(finished) == 4, [(t.number, t.state.name, t.user_attrs) for t in study.trials]
    report = json.loads((shared / "tune.json").read_text())
    assert report["finished"] == 4 and [t["state"] for t in report["trials"]].count("complete") == 4
    assert all("Traceback" not in output for _, output in results), results
    storage.engine.dispose()


# Shared folders: artefacts get the mode of a normally created file ----------------------------------------


@pytest.mark.parametrize("umask", [0o002, 0o022, 0o077])
def test_atomic_writes_honour_the_umask(tmp_path, umask):
    from cnnlab import safeio

    previous = os.umask(umask)
    try:
        written = [
            safeio.atomic_write_text(tmp_path / "a.txt", "text"),
            safeio.atomic_write_json(tmp_path / "b.json", {"x": 1}),
            safeio.atomic_torch_save({"w": 1}, tmp_path / "c.ckpt"),
        ]
        (tmp_path / "plain.txt").write_text("a file made the ordinary way")
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == expected
    for path in written:
        assert path.stat().st_mode & 0o777 == expected, f"{path.name}: {oct(path.stat().st_mode)}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "c.ckpt", "plain.txt"]


def test_a_run_folder_is_group_writable_under_a_group_umask(tmp_path, capsys):
    out = tmp_path / "run"
    previous = os.umask(0o002)
    try:
        argv = ["train", "--model", "lenet5", "--data", "digits", "--epochs", "1", "--set", "data.subset=150"]
        assert cli.main([*argv, "--out", str(out)]) == 0
    finally:
        os.umask(previous)
    modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in out.rglob("*")}
    assert {"result.json", "metrics.csv", "config.yaml", "checkpoints/last.ckpt"} <= set(modes)
    for name, mode in modes.items():
        assert mode == (0o775 if (out / name).is_dir() else 0o664), f"{name}: {oct(mode)}"
