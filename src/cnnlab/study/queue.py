"""Work queue on Optuna's RDB storage: one trial per planned run, each claimed exactly once, retried when its
worker dies.

Any SQLAlchemy URL works: a SQLite file on one machine (the default, `sqlite:///DIR/study.db`), PostgreSQL or
MySQL across machines. A bare `postgresql://` URL is opened with psycopg 3 (the `postgres` extra) when
SQLAlchemy's default driver for it (psycopg2 before SQLAlchemy 2.1) is not installed (`storage_engine_url`).

A worker claims a WAITING trial by moving it to RUNNING; Optuna checks the state under
`SELECT ... FOR UPDATE`, which SQLite ignores, so for SQLite every transaction starts with `BEGIN IMMEDIATE`
(two processes would otherwise claim the same trial). A claimed trial's worker records heartbeats; a trial
whose heartbeats stop (or, on the same machine, whose worker process is gone) is failed and a WAITING copy is
added. "The same machine" is the same host name, boot and PID namespace (`NODE`): only there does a process
id name the worker, so two containers or two machines with one host name never judge each other's pids.
An attempt is used up only by a worker that died without progress (no epoch recorded since it
claimed the run): a run killed repeatedly but resuming from its checkpoint each time is never given up,
and an interrupted run (SIGINT/SIGTERM) or one whose folder another process holds is requeued as it was.
A worker whose heartbeat finds its trial no longer RUNNING (it was paused past the grace period and
reaped) has lost its claim; `heartbeat()` tells it through an Event.

Run states are `cnnlab.runfolder`'s vocabulary (completed, running, interrupted, failed, diverged,
pending).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import inspect
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from cnnlab import runfolder
from cnnlab.errors import CnnlabError, ConfigError, one_line

ENQUEUED_ATTR = "cnnlab_enqueued"  # study user attr: number of runs, set once every run is enqueued
RUN_INDEX = "run_index"
ATTEMPT = "attempt"
WORKER = "worker"
PROGRESS_AT_CLAIM = "epochs_at_claim"  # epochs the run folder recorded when this attempt started
STATUS = "status"  # a run's outcome as recorded by its worker: a run state, or SKIPPED / BUSY
SKIPPED = "skipped"  # found already completed
BUSY = "busy"  # its folder was held by another live process; requeued
REQUEUED_AS_IS = (runfolder.INTERRUPTED, BUSY)  # outcomes requeued without using an attempt
HOST = socket.gethostname()


def _node() -> str:
    """Where a process id means something: host name, boot (a reboot reuses pids) and PID namespace."""
    parts = [HOST]
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        with contextlib.suppress(OSError):
            parts.append(os.readlink(path) if path.endswith("/ns/pid") else Path(path).read_text().strip())
    return "/".join(parts)


NODE = _node()


@dataclasses.dataclass(frozen=True)
class WorkerOptions:
    """How a process takes part in a study: storage, heartbeats, retries, polling. The one place of their
    defaults: `run_study` and its helpers, `study run --worker-only`, `study status` and `tune` read them."""

    storage: str | None = None  # SQLAlchemy URL; default sqlite:///<study dir>/study.db
    heartbeat_s: int = 10  # a claimed run records a heartbeat this often
    grace_s: int | None = None  # no heartbeat for this long → the run's worker is dead (default 3 beats)
    max_attempts: int = 3  # a run whose worker died is tried at most this often in all
    poll_s: float = 0.5  # how often an idle worker looks for claimable runs


@dataclasses.dataclass(frozen=True)
class Claim:
    """A run this worker has claimed: its trial and which planned run it is."""

    trial_id: int
    number: int
    run_index: int
    attempt: int


@dataclasses.dataclass(frozen=True)
class RunState:
    """Where one planned run stands in the queue, from its latest trial."""

    state: str  # a runfolder state: completed | running | interrupted | failed | diverged | pending
    trial: FrozenTrial


def quiet_optuna() -> None:
    """Optuna logs every trial; a study prints its own one line per run instead."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")


def open_storage(
    url: str,
    *,
    heartbeat_s: int = WorkerOptions.heartbeat_s,
    grace_s: int | None = None,
    on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None,
) -> RDBStorage:
    """Optuna RDB storage with heartbeats; SQLite transactions serialized so claims are exactly once."""
    quiet_optuna()
    sqlite = url.startswith("sqlite")
    check_storage_url(url)
    engine_url = storage_engine_url(url)
    engine_kwargs = _engine_kwargs(engine_url, grace_s or 3 * heartbeat_s)
    callback_arg = (
        "heartbeat_stale_trial_callback"
        if "heartbeat_stale_trial_callback" in inspect.signature(RDBStorage).parameters
        else "failed_trial_callback"
    )
    options = {
        "heartbeat_interval": heartbeat_s,
        "grace_period": grace_s or 3 * heartbeat_s,
        callback_arg: on_stale,
    }
    try:
        storage = _first_connection(engine_url, engine_kwargs, options)
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.OperationalError, ImportError, ValueError) as error:
        raise _unopenable(url, error) from None
    except sqlalchemy.exc.DatabaseError as error:
        if not sqlite:
            raise
        raise _not_a_database(url, error) from None
    if sqlite:
        _serialize_sqlite_transactions(storage.engine)
    return storage


def _unopenable(url: str, error: BaseException) -> ConfigError:
    return ConfigError(
        f"--storage {shown_url(url)!r} cannot be opened: {str(error).splitlines()[0]}; expected an "
        "SQLAlchemy URL such as sqlite:///DIR/study.db or postgresql://user@host/db"
    )


def _not_a_database(url: str, error: BaseException) -> ConfigError:
    """A SQLite queue file that SQLite cannot read (overwritten, truncated): waiting will not mend it; a new
    queue will, and completed runs are found completed in their folders (never trained again)."""
    reason = describe_storage_error(getattr(error, "orig", None) or error)
    path = url[len("sqlite:///") :]
    return ConfigError(
        f"the queue's database {path!r} is not a readable SQLite database ({reason}); move that file out of "
        "the folder (or delete it) and run the same command again: a new queue is made, and runs that "
        "completed are found in their folders and not trained again"
    )


def check_storage_url(url: str) -> None:
    """Refuse, before anything is written, a storage URL no worker could share: an in-memory SQLite
    database lives and dies with one process (no helper, no other worker, no later run sees it). A
    PostgreSQL URL without its driver names the package to install."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        parsed = None
    in_memory = (
        parsed is not None
        and parsed.get_backend_name() == "sqlite"
        and (parsed.database in (None, "", ":memory:") or "memory" in str(parsed.query.get("mode", "")))
    )
    if in_memory:
        raise ConfigError(
            f"--storage {url!r} is an in-memory SQLite database, which only this process sees "
            "(no worker, and no later run, can share it); give a file, sqlite:///DIR/queue.db, or leave "
            "--storage out to use the folder's own"
        )
    _check_driver(url)


IDLE_TRANSACTION_MIN_S = 10  # PostgreSQL ends a session idle inside a transaction this long (or one grace)
STORAGE_ERRORS = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)


def describe_storage_error(error: BaseException) -> str:
    """A STORAGE_ERRORS exception as messages quote it: its first line, shortened."""
    text = str(error).strip()
    return one_line(text.splitlines()[0] if text else type(error).__name__, 300)


def _engine_kwargs(url: str, grace_s: float) -> dict[str, Any]:
    """Engine options for the URL the engine opens (`storage_engine_url`, so `postgres://` is PostgreSQL).
    SQLite: wait up to 120 s for another process's write lock, every transaction opened by our BEGIN.
    PostgreSQL: the server ends a session left idle inside a transaction for a grace period (at least
    IDLE_TRANSACTION_MIN_S), so a worker paused (SIGSTOP, a suspended machine) while it held a row lock
    cannot stall the other workers' claims and reaping for as long as it sleeps; woken, it finds its
    connection gone (a storage error its work loop survives) and its claim reaped."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 120, "isolation_level": None}}
    try:
        backend = sqlalchemy.engine.make_url(url).get_backend_name()
    except sqlalchemy.exc.ArgumentError:
        return {}
    if backend != "postgresql":
        return {}
    timeout_ms = int(1000 * max(grace_s, IDLE_TRANSACTION_MIN_S))
    return {"connect_args": {"options": f"-c idle_in_transaction_session_timeout={timeout_ms}"}}


def shown_url(url: str) -> str:
    """A storage URL as messages print it: its password masked."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def storage_exists(url: str) -> bool:
    """False for a SQLite URL whose file does not exist (opening it would create an empty one)."""
    if not url.startswith("sqlite:///"):
        return True
    return Path(url[len("sqlite:///") :]).is_file()


POSTGRES_SCHEMES = ("postgresql", "postgres")
POSTGRES_EXTRA = "pip install 'cnnlab[postgres]'"


def storage_engine_url(url: str) -> str:
    """The URL the engine opens. A bare `postgresql://` (or `postgres://`) URL means SQLAlchemy's default
    driver, psycopg2 before SQLAlchemy 2.1 and psycopg 3 from 2.1; when that driver is not installed but
    psycopg 3 (the `postgres` extra) is, it is opened as `postgresql+psycopg://`. Others stay as given."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return url
    if parsed.drivername not in POSTGRES_SCHEMES:
        return url
    parsed = parsed.set(drivername="postgresql")
    with contextlib.suppress(Exception):
        if _installed(parsed.get_driver_name()):
            return parsed.render_as_string(hide_password=False)
    if _installed("psycopg"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _check_driver(url: str) -> None:
    """A PostgreSQL URL without its driver installed: say which package to install (one line, exit 2)."""
    try:
        parsed = sqlalchemy.engine.make_url(storage_engine_url(url))
    except sqlalchemy.exc.ArgumentError:
        return
    if parsed.get_backend_name() != "postgresql":
        return
    driver = parsed.get_driver_name()
    if not _installed(driver):
        raise ConfigError(
            f"--storage {shown_url(url)!r} needs the PostgreSQL driver {driver!r}, which is not installed; "
            f"install it with: {POSTGRES_EXTRA}"
        )


def _first_connection(url: str, engine_kwargs: dict[str, Any], options: dict[str, Any]) -> RDBStorage:
    """Open the storage; processes starting together race to create its tables, so a loser tries again
    (PostgreSQL says so as an IntegrityError, or as a ProgrammingError: `relation "alembic_version" already
    exists`)."""
    for attempt in range(8):
        try:
            return RDBStorage(url, engine_kwargs=engine_kwargs, **options)
        except (
            sqlalchemy.exc.IntegrityError,
            sqlalchemy.exc.OperationalError,
            sqlalchemy.exc.ProgrammingError,
        ):
            if attempt == 7:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _serialize_sqlite_transactions(engine: sqlalchemy.engine.Engine) -> None:
    """Make every SQLite transaction take the write lock at BEGIN, so check-then-update is atomic."""

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin_immediate(connection: sqlalchemy.engine.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened by Optuna's set-up predate the hook


class RunQueue:
    """The planned runs of one study as Optuna trials in one storage, shared by every worker."""

    def __init__(
        self,
        url: str,
        name: str,
        *,
        heartbeat_s: int = WorkerOptions.heartbeat_s,
        grace_s: int | None = None,
        max_attempts: int = WorkerOptions.max_attempts,
        create: bool = True,
        progressed: Callable[[FrozenTrial], bool] | None = None,
    ) -> None:
        """`create`: make the queue when it does not exist (a planner); otherwise QueueMissing (a worker that
        plans nothing must not make it: the planner would find it made by another and wait for that process
        to fill it)."""
        self.url = url
        self.name = name
        self.heartbeat_s = heartbeat_s
        self.grace_s = grace_s or 3 * heartbeat_s
        self.max_attempts = max_attempts
        self.progressed = progressed  # did a dead worker's attempt record an epoch? (then it costs nothing)
        self.storage = open_storage(
            url, heartbeat_s=heartbeat_s, grace_s=self.grace_s, on_stale=self._requeue
        )
        try:
            self.study, self.created = _create_or_load(self.storage, name, create=create)
        except QueueMissing:
            self.storage.engine.dispose()
            raise
        self.study_id = self.storage.get_study_id_from_name(name)

    def enqueue(self, n_runs: int, *, wait_s: float = 60.0) -> None:
        """Put one WAITING trial per run in the queue, exactly once across processes.

        The process that created the Optuna study enqueues; the others wait for its marker. A queue left
        half-filled by a process that died while enqueueing is completed after `wait_s`.
        """
        if self.created:
            self._enqueue_missing(n_runs)
            return
        deadline = time.monotonic() + wait_s
        while self.study.user_attrs.get(ENQUEUED_ATTR) is None:
            if time.monotonic() > deadline:
                self._enqueue_missing(n_runs)
                return
            time.sleep(0.2)
            self.study = optuna.load_study(study_name=self.name, storage=self.storage)

    def enqueued(self) -> bool:
        """Has the planner filled the queue (every run enqueued)?"""
        self.study = optuna.load_study(study_name=self.name, storage=self.storage)
        return self.study.user_attrs.get(ENQUEUED_ATTR) is not None

    def _enqueue_missing(self, n_runs: int) -> None:
        known = {trial.user_attrs.get(RUN_INDEX) for trial in self._trials()}
        missing = [index for index in range(n_runs) if index not in known]
        self.study.add_trials([_waiting(index, attempt=1) for index in missing])
        self.study.set_user_attr(ENQUEUED_ATTR, n_runs)

    def claim(self, claimable: Callable[[int], bool]) -> Claim | None:
        """Atomically move the first claimable WAITING trial to RUNNING for this worker; None if none is."""
        self.reap()
        waiting = self.storage.get_all_trials(self.study_id, deepcopy=False, states=(TrialState.WAITING,))
        for trial in sorted(waiting, key=lambda t: (t.user_attrs.get(RUN_INDEX, math.inf), t.number)):
            index = trial.user_attrs.get(RUN_INDEX)
            if index is None or not claimable(index):
                continue
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
            if not self._take(trial_id):
                continue  # another worker took it first
            self.storage.record_heartbeat(trial_id)
            self.storage.set_trial_user_attr(
                trial_id, WORKER, {"host": HOST, "node": NODE, "pid": os.getpid()}
            )
            return Claim(trial_id, trial.number, index, int(trial.user_attrs.get(ATTEMPT, 1)))
        return None

    def _take(self, trial_id: int) -> bool:
        """WAITING → RUNNING, atomically; False when another worker moved the trial first."""
        try:
            return self.storage.set_trial_state_values(trial_id, TrialState.RUNNING)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            return False  # it was taken and already finished since we listed it

    def note(self, claim: Claim, **attrs: Any) -> None:
        """Record facts about a claimed run (its id, its progress at the start) on its trial."""
        for key, item in attrs.items():
            self.storage.set_trial_user_attr(claim.trial_id, key, item)

    def still_mine(self, claim: Claim) -> bool:
        """Is the claim's trial still RUNNING (not reaped while this worker was paused)?"""
        return self.storage.get_trial(claim.trial_id).state == TrialState.RUNNING

    @contextlib.contextmanager
    def heartbeat(self, claim: Claim) -> Iterator[threading.Event]:
        """Record heartbeats while the body runs; the yielded Event is set once the claim is found lost."""
        stop, lost = threading.Event(), threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat_s):
                with contextlib.suppress(Exception):
                    if not self.still_mine(claim):
                        lost.set()
                        return
                    self.storage.record_heartbeat(claim.trial_id)

        thread = threading.Thread(target=beat, name=f"heartbeat-{claim.number}", daemon=True)
        thread.start()
        try:
            yield lost
        finally:
            stop.set()
            thread.join()

    def finish(self, claim: Claim, status: str, *, value: float | None = None, **attrs: Any) -> bool:
        """Record a run's outcome: completed/skipped → COMPLETE; failed/diverged → FAIL (not retried);
        interrupted/busy → FAIL with a WAITING copy on the same attempt. False when the claim was lost
        (its trial was reaped meanwhile): nothing is recorded then, the requeued copy stands."""
        try:
            if not self.still_mine(claim):
                return False
            for key, item in {STATUS: status, **attrs}.items():
                self.storage.set_trial_user_attr(claim.trial_id, key, item)
            if status in (runfolder.COMPLETED, SKIPPED):
                score = value if value is not None and math.isfinite(value) else 0.0
                self.storage.set_trial_state_values(claim.trial_id, TrialState.COMPLETE, values=[score])
            else:
                self.storage.set_trial_state_values(claim.trial_id, TrialState.FAIL)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            return False
        if status in REQUEUED_AS_IS:
            self.study.add_trial(_waiting(claim.run_index, attempt=claim.attempt))
        return True

    def requeue(self, run_index: int) -> None:
        """Queue a run again as a fresh first attempt (a completed run whose result is gone)."""
        self.study.add_trial(_waiting(run_index, attempt=1))

    def reap(self) -> None:
        """Fail trials whose worker died (stale heartbeat, or a dead process on this host); requeue them."""
        optuna.storages.fail_stale_trials(self.study)
        for trial in self.storage.get_all_trials(self.study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            worker = trial.user_attrs.get(WORKER) or {}
            if _worker_gone(worker):
                self._fail_and_requeue(trial)
            elif not worker and _older_than(trial.datetime_start, self.grace_s):
                self._fail_and_requeue(trial)  # its worker died between claiming and signing it

    def _fail_and_requeue(self, trial: FrozenTrial) -> None:
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
        try:
            self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            return  # another worker reaped it first
        self._requeue(self.study, trial)

    def _requeue(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Add a WAITING copy of a trial whose worker died: on the same attempt when the attempt made
        progress, else on the next one, unless the run has used all its attempts."""
        attempt = int(trial.user_attrs.get(ATTEMPT, 1))
        index = trial.user_attrs.get(RUN_INDEX)
        if index is None:
            return
        if self.progressed is not None and self.progressed(trial):
            study.add_trial(_waiting(index, attempt=attempt))
        elif attempt < self.max_attempts:
            study.add_trial(_waiting(index, attempt=attempt + 1))

    def states(self) -> dict[int, RunState]:
        """Each run's state from its latest trial: completed, failed/diverged (final), running, interrupted
        (its worker on this host is gone, not yet reaped) or pending (waiting, or about to be retried)."""
        latest: dict[int, FrozenTrial] = {}
        for trial in self._trials():
            index = trial.user_attrs.get(RUN_INDEX)
            if index is not None and (index not in latest or trial.number > latest[index].number):
                latest[index] = trial
        return {index: RunState(self._state_of(trial), trial) for index, trial in latest.items()}

    def _state_of(self, trial: FrozenTrial) -> str:
        if trial.state == TrialState.COMPLETE:
            return runfolder.COMPLETED
        if trial.state == TrialState.RUNNING:
            gone = _worker_gone(trial.user_attrs.get(WORKER) or {})
            return runfolder.INTERRUPTED if gone else runfolder.RUNNING
        if trial.state == TrialState.FAIL:
            status = trial.user_attrs.get(STATUS)
            if status in (runfolder.FAILED, runfolder.DIVERGED):
                return str(status)
            exhausted = status is None and int(trial.user_attrs.get(ATTEMPT, 1)) >= self.max_attempts
            if exhausted and not (self.progressed is not None and self.progressed(trial)):
                return runfolder.FAILED  # its worker died on every attempt
        return runfolder.PENDING

    def drained(self, n_runs: int) -> bool:
        """True when every run is finished (completed, failed or diverged): nothing waits or runs."""
        states = self.states()
        return len(states) >= n_runs and all(s.state in runfolder.FINISHED_STATES for s in states.values())

    def _trials(self) -> list[FrozenTrial]:
        return self.storage.get_all_trials(self.study_id, deepcopy=False)


class QueueMissing(CnnlabError):
    """The storage holds no queue of that name (yet)."""


def _create_or_load(storage: RDBStorage, name: str, *, create: bool) -> tuple[optuna.Study, bool]:
    """Create the Optuna study, or load it when another process already did; says which happened."""
    if create:
        try:
            return optuna.create_study(study_name=name, storage=storage, direction="maximize"), True
        except optuna.exceptions.DuplicatedStudyError:
            pass
    try:
        return optuna.load_study(study_name=name, storage=storage), False
    except KeyError:
        raise QueueMissing(f"no study queue {name!r} in {storage.url}") from None


def _waiting(index: int, *, attempt: int) -> FrozenTrial:
    return optuna.trial.create_trial(
        state=TrialState.WAITING, user_attrs={RUN_INDEX: index, ATTEMPT: attempt}
    )


def _worker_gone(worker: dict[str, Any]) -> bool:
    """Is a claim's worker known to be dead: on this machine (NODE) with no live process of its pid?
    Workers elsewhere are judged by their heartbeats only. (Claims signed before NODE existed name only
    the host.)"""
    here = worker.get("node") == NODE if "node" in worker else worker.get("host") == HOST
    return bool(worker) and here and not _process_alive(int(worker.get("pid", 0)))


def _process_alive(pid: int) -> bool:
    """Is a process with this id running on this host? (Zombies count as gone.)"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"
    return True


def _older_than(moment: datetime | None, seconds: float) -> bool:
    return moment is not None and datetime.now() - moment > timedelta(seconds=seconds)
