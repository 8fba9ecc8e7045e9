"""`study run`: plan the study, save its splits once, fill the shared queue, and work through it.

Every process (this one, its `--workers`, and any other `cnnlab study run` on the same spec and storage, on
this machine or another sharing the study folder) claims runs from the queue until none is left; each run
trains in-process with `cnnlab.train.fit`, so data is loaded once per worker process. A run whose
result.json says completed is skipped, a failed or diverged one is recorded and the study goes on.

A study folder belongs to one spec: study.json records the plan it was made for, and a different plan is
refused (`restart=True` discards the old study's files first); a folder of a tune or a suite, or with files
cnnlab did not write, is refused too. The folder is checked before anything is written, then checked again
and set up under its lock, so two planners of different specs started at once never both take it. A run
the queue records completed whose result is gone from its folder is queued again.

A run folder is held by one process at a time (`runfolder.hold`), so a worker that lost its claim while
paused can never train beside the new owner; it notices through its heartbeat, stops the run without a
result, and goes on. SIGINT/SIGTERM record the run in progress as interrupted (its checkpoint kept, no
attempt used) and end the process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import torch
import yaml

from cnnlab import config as cfg
from cnnlab import runfolder, safeio
from cnnlab.data import Splits, load_split, make_splits
from cnnlab.errors import CnnlabError, ConfigError, DiskFull, Interrupted, one_line
from cnnlab.interrupts import signals_raise
from cnnlab.study import queue as work_queue
from cnnlab.study.checks import (
    STUDY_FOLDER,
    STUDY_STORAGE_FILE,
    StudyFolderError,
    check_data,
    check_out_folder,
    check_out_outside_data,
    check_plan,
    folder_in_use,
    folder_lock,
    folder_unused,
    remove_own_files,
    storage_files_in,
)
from cnnlab.study.ensemble import ENSEMBLES_DIR, build_ensemble
from cnnlab.study.plan import PLAN_FILE, ROLE_FINAL, SPEC_FILE, PlannedRun, StudyPlan, expand
from cnnlab.study.queue import WorkerOptions
from cnnlab.study.selection import final_config, metric_value, select_configuration, write_selection
from cnnlab.study.spec import load_study_spec
from cnnlab.train import RunAbandoned, fit
from cnnlab.train.resolve import resolve_config

Log = Callable[[str], None]
STORAGE_FILE = STUDY_STORAGE_FILE
QUEUE_WAIT_S = 600.0  # a --worker-only process waits this long for the planner to fill the queue
STORAGE_OUTAGE_S = 600.0  # a worker gives up after its queue's database failed this long without a success


@dataclasses.dataclass(frozen=True)
class StudyOutcome:
    """What one `study run` process saw and did."""

    study_dir: Path
    counts: dict[str, int]  # runs per state (runfolder.STATES) over the whole study
    trained: int  # runs this process trained
    skipped: int  # runs found already completed: in the queue when this process started, or by their files
    ensembles: tuple[Path, ...]


def default_storage(study_dir: Path) -> str:
    """The SQLite file inside the study folder."""
    return f"sqlite:///{study_dir.resolve() / STORAGE_FILE}"


def plan_study(spec_path: str | Path, out_dir: str | Path, overrides: Sequence[str] = ()) -> StudyPlan:
    """Load, validate and expand a spec (with `--set` overrides) for a study folder, and check its training
    data is there; nothing is written."""
    plan = expand(load_study_spec(spec_path, overrides), out_dir)
    check_plan(plan)
    check_data(plan)
    return plan


def run_study(
    spec_path: str | Path,
    out_dir: str | Path,
    *,
    workers: int = 1,
    worker_only: bool = False,
    options: WorkerOptions = WorkerOptions(),
    overrides: Sequence[str] = (),
    restart: bool = False,
    log: Log = print,
) -> StudyOutcome:
    """Run (or continue) a study; with `workers` > 1, that many processes on this machine share the queue.

    A folder holding another spec's study is refused (StudyFolderError) unless `restart`; so is one holding a
    tune, a suite, or files cnnlab did not write."""
    plan = plan_study(spec_path, out_dir, overrides)
    spec_path = Path(spec_path)
    restart = restart and not worker_only
    check_study_out(plan, spec_path, options.storage, restart=restart)  # before anything is written
    if options.storage and not worker_only:
        open_storage_first(study_storage(plan, options.storage, restart=restart))
    with contextlib.ExitStack() as in_use:  # the folder is in use until this process is done with it
        if worker_only:
            url = study_storage(plan, options.storage)
            queue = join_as_worker(plan, spec_path, url, options, log=log)
            use_joined_study(plan, spec_path, in_use, log=log)
        else:
            queue = claim_study(plan, spec_path, options, overrides, restart=restart, log=log, in_use=in_use)
        completed_before = _count(queue.states(), len(plan.runs))["completed"]
        helpers = _helpers(plan, queue.url, workers, options)
        try:
            for helper in helpers:
                helper.start()
            trained, skipped = work(plan, queue, options=options, log=log)
            for helper in helpers:
                helper.join()  # each stops by itself once the queue is empty
        finally:
            for helper in helpers:
                _stop(helper)
        ensembles = () if worker_only else build_ensembles(plan, log=log)
        counts = _count(queue.states(), len(plan.runs))
    return StudyOutcome(plan.study_dir, counts, trained, completed_before + skipped, ensembles)


def claim_study(
    plan: StudyPlan,
    spec_path: Path,
    options: WorkerOptions,
    overrides: Sequence[str] = (),
    *,
    restart: bool = False,
    log: Log = print,
    in_use: contextlib.ExitStack | None = None,
) -> work_queue.RunQueue:
    """A planner's set-up, under the folder's lock: check the folder again (another `study run` may have
    taken it meanwhile), discard another spec's study when `restart` (refused while another process works
    in the folder), mark the folder in use by this process until `in_use` closes, write study.yaml, the
    splits and study.json, fill the queue, and put back runs recorded completed whose result is gone. Two
    planners of different specs started at once: the second waits for the lock, then is refused."""
    with folder_lock(plan.study_dir, log=log):
        if check_study_out(plan, spec_path, options.storage, restart=restart):
            discard_study(plan.study_dir)
        if in_use is not None:
            in_use.enter_context(folder_in_use(plan.study_dir))
        url = study_storage(plan, options.storage, restart=restart)
        prepare_study_dir(plan, spec_path, url, options, overrides)
        queue = open_queue(plan, url, options)
        queue.enqueue(len(plan.runs))
        requeue_lost_results(plan, queue, log=log)
    return queue


def check_study_out(plan: StudyPlan, spec_path: Path, storage: str | None, *, restart: bool) -> bool:
    """Everything a study checks in its folder before writing: no other kind's files, no foreign files, no
    other spec's study (unless `restart`: then True, the old study is to be discarded), a usable storage."""
    if storage:
        work_queue.check_storage_url(storage)
    planned = [run.config for run in plan.runs if run.config is not None]  # final runs: their members' data
    check_out_outside_data(plan.study_dir, (config.data.name for config in planned))
    check_out_folder(plan.study_dir, STUDY_FOLDER, also_own=_storage_file(plan.study_dir, storage))
    other_spec = check_study_folder(plan, spec_path, restart=restart)
    study_storage(plan, storage, restart=restart)
    return other_spec


def _storage_file(study_dir: Path, given: str | None) -> tuple[str, ...]:
    """The file names of a SQLite queue kept inside the study folder (--storage, or as study.json records
    it), which the folder may hold beside its own files."""
    recorded = (_existing_plan_or_none(study_dir) or {}).get("storage")
    return storage_files_in(study_dir, given, recorded)


def _existing_plan_or_none(study_dir: Path) -> dict[str, Any] | None:
    with contextlib.suppress(StudyFolderError):
        return _existing_plan(study_dir)
    return None


# What a study writes into its folder; --restart removes these and nothing else.
STUDY_FILES = STUDY_FOLDER.files
STUDY_DIRS = STUDY_FOLDER.dirs


def check_study_folder(plan: StudyPlan, spec_path: Path, *, restart: bool, worker: bool = False) -> bool:
    """Refuse a folder whose study.json was written for another plan, unless `restart`; True when the folder
    holds another plan's study that `restart` is to discard (nothing is changed here). A `worker`
    (--worker-only) is told to give the folder's own spec: --restart is the planner's, not a worker's."""
    try:
        existing = _existing_plan(plan.study_dir)
    except StudyFolderError:
        if not restart:
            raise
        return True
    if existing is None or existing.get("plan_hash") == plan.plan_hash:
        return False
    if restart:
        return True
    theirs = f"{existing.get('name')!r} from {existing.get('spec_path') or 'an unknown spec'}"
    raise StudyFolderError(
        f"study folder {str(plan.study_dir)!r} holds study {theirs} (plan {existing.get('plan_hash')}); "
        f"refusing {plan.spec.name!r} from {spec_path} (plan {plan.plan_hash}): "
        + _why_another_plan(existing, spec_path, plan)
        + "a folder holds one spec; "
        + (
            "a --worker-only process joins with the spec the folder was started with"
            if worker
            else "use another --out, or --restart to discard that study and start over"
        )
    )


def _why_another_plan(existing: dict[str, Any], spec_path: Path, plan: StudyPlan) -> str:
    """For the same spec file with another plan, what changed: the file, or the --set overrides; or, when
    the effective spec is the one the folder's study.yaml holds, a file it names or a relative path in it."""
    if existing.get("spec_path") != str(spec_path.absolute()):
        return ""
    if _recorded_spec(plan.study_dir) == plan.spec.raw:
        return (
            "the spec and its --set overrides are unchanged, so a file it names was edited (a base: run "
            "file) or a relative path in it now means another one: folder:, data.data_dir and file: paths "
            "are taken against the working directory, so run it from the folder it was started in, or make "
            "them absolute; "
        )
    return (
        "the spec file was edited, or its --set overrides differ, since the folder was started "
        "(its study.yaml holds the spec it ran); "
    )


def _recorded_spec(study_dir: Path) -> Any:
    """The effective spec the folder's study.yaml holds (None when it is missing or unreadable)."""
    try:
        return yaml.safe_load((study_dir / SPEC_FILE).read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None


def study_storage(plan: StudyPlan, given: str | None, *, restart: bool = False) -> str:
    """The queue storage of a process on this study: --storage as given, else the database server a
    planner recorded in study.json (so workers on other machines need not repeat the URL), else the folder's
    own SQLite file. A --storage other than the recorded server is refused (its queue would be another one)
    unless `restart`."""
    recorded = (_existing_plan(plan.study_dir) or {}).get("storage")
    server = recorded if isinstance(recorded, str) and not recorded.startswith("sqlite") else None
    if given and server and not restart and not _same_storage(given, server):
        shown = work_queue.shown_url(server)
        raise StudyFolderError(
            f"study folder {str(plan.study_dir)!r} keeps its queue in {shown}, not in "
            f"{work_queue.shown_url(given)}; pass --storage {shown} or leave --storage out "
            "(or --restart to discard that study and start over)"
        )
    return given or server or default_storage(plan.study_dir)


def _same_storage(first: str, second: str) -> bool:
    return work_queue.storage_engine_url(first) == work_queue.storage_engine_url(second)


def _existing_plan(study_dir: Path) -> dict[str, Any] | None:
    path = study_dir / PLAN_FILE
    if not path.is_file():
        return None
    try:
        plan = safeio.read_json(path)
    except (OSError, ValueError) as error:
        raise StudyFolderError(
            f"{path} is unreadable ({error}); move it away, or use --restart to start the study over"
        ) from None
    return plan if isinstance(plan, dict) else {}


def discard_study(study_dir: Path) -> None:
    """Remove what a study wrote into its folder (its files, its run folders' files, its splits, ensembles
    and figures); files cnnlab did not write stay, and so do the folders holding them. Refused
    (StudyFolderError, nothing removed) while another process works on that study."""
    with folder_unused(study_dir, STUDY_FOLDER):
        remove_own_files(study_dir, STUDY_FOLDER)


def open_storage_first(url: str) -> None:
    """Open the storage before anything is written, so a bad --storage URL changes no file."""
    work_queue.open_storage(url)


def prepare_study_dir(
    plan: StudyPlan, spec_path: Path, url: str, options: WorkerOptions, overrides: Sequence[str] = ()
) -> None:
    """Write study.yaml (the spec as given or overridden), the shared splits, and study.json (the plan)."""
    study_dir = plan.study_dir
    study_dir.mkdir(parents=True, exist_ok=True)
    safeio.atomic_write_text(study_dir / SPEC_FILE, spec_text(spec_path, plan.spec.raw, overrides))
    write_splits(plan)
    safeio.atomic_write_json(
        study_dir / PLAN_FILE,
        {
            **plan.to_json(),
            "spec_path": str(spec_path.absolute()),
            "storage": url,
            "queue": queue_name(plan),
            "max_attempts": options.max_attempts,
        },
    )


def spec_text(spec_path: str | Path, raw: Any, overrides: Sequence[str]) -> str:
    """The spec file's own text, or (with overrides) the effective spec with a header naming them."""
    if not overrides:
        return Path(spec_path).read_text()
    header = f"# {spec_path} with " + " ".join(f"--set {item}" for item in overrides) + "\n"
    return header + yaml.safe_dump(dict(raw), sort_keys=False)


def write_splits(plan: StudyPlan) -> None:
    """Compute each splits file once from the study's split seed (kept if it already exists)."""
    for split in plan.splits:
        labels = load_split(split.data, "train").labels
        if split.path.is_file():
            Splits.load(split.path, labels)  # a stale file for other labels is an error, not silently reused
            continue
        made = make_splits(labels, seed=split.seed, val_fraction=split.val_fraction, folds=split.folds)
        made.save(split.path)


def queue_name(plan: StudyPlan) -> str:
    """The Optuna study holding this plan's queue: a changed spec gets a fresh queue."""
    return f"cnnlab:{plan.spec.name}:{plan.plan_hash}"


def open_queue(
    plan: StudyPlan, url: str, options: WorkerOptions, *, planner: bool = True
) -> work_queue.RunQueue:
    """Connect to (or, for a planner, create) the plan's queue in the storage; QueueMissing for a worker
    that plans nothing when no planner has created it yet."""
    return work_queue.RunQueue(
        url,
        queue_name(plan),
        heartbeat_s=options.heartbeat_s,
        grace_s=options.grace_s,
        max_attempts=options.max_attempts,
        create=planner,
        progressed=functools.partial(_progressed, plan),
    )


def join_as_worker(
    plan: StudyPlan, spec_path: Path, url: str, options: WorkerOptions, *, log: Log = print
) -> work_queue.RunQueue:
    """`--worker-only`: the plan's queue once a planner (a `study run` without --worker-only) has created
    and filled it. Waits up to QUEUE_WAIT_S, saying so once; creates nothing (neither the queue nor a SQLite
    file), so a worker started first never delays the planner. A planner of another spec taking the folder
    meanwhile ends the wait (StudyFolderError)."""
    deadline = time.monotonic() + QUEUE_WAIT_S
    up_to = f"{QUEUE_WAIT_S / 60:.0f} min" if QUEUE_WAIT_S >= 60 else f"{QUEUE_WAIT_S:.0f} s"
    where = f"study {plan.spec.name!r} and fill its queue in {work_queue.shown_url(url)}"
    queue: work_queue.RunQueue | None = None
    said = False
    while True:
        check_out_folder(plan.study_dir, STUDY_FOLDER, also_own=_storage_file(plan.study_dir, url))
        check_study_folder(plan, spec_path, restart=False, worker=True)
        if queue is None and work_queue.storage_exists(url):
            with contextlib.suppress(work_queue.QueueMissing):
                queue = open_queue(plan, url, options, planner=False)
        if queue is not None and queue.enqueued():
            return queue
        if time.monotonic() > deadline:
            raise ConfigError(
                f"no `cnnlab study run` without --worker-only came to plan {where} within {up_to}; "
                "start one (the same spec, --out and --storage) first"
            )
        if not said:
            log(f"waiting up to {up_to} for a `cnnlab study run` without --worker-only to plan {where}")
            said = True
        time.sleep(0.5)


def use_joined_study(
    plan: StudyPlan, spec_path: Path, in_use: contextlib.ExitStack, *, log: Log = print
) -> None:
    """A --worker-only process that found its queue marks the folder in use until `in_use` closes, then
    checks under the folder's lock that the study is still its spec's: a `--restart` of another spec may
    have discarded it since the last look (StudyFolderError, as when the worker started)."""
    in_use.enter_context(folder_in_use(plan.study_dir))
    with folder_lock(plan.study_dir, log=log):
        check_study_folder(plan, spec_path, restart=False, worker=True)


def _record_stopped(
    queue: work_queue.RunQueue,
    claim: work_queue.Claim,
    run_id: str,
    reason: str,
    *,
    errors: tuple[type[BaseException], ...] = work_queue.STORAGE_ERRORS,
) -> None:
    """Record a claimed run interrupted (it resumes from its checkpoint) as the study stops; a storage that
    fails meanwhile is ignored: the study stops regardless."""
    with contextlib.suppress(*errors):
        queue.finish(claim, runfolder.INTERRUPTED, run_id=run_id, reason=reason)


def requeue_lost_results(plan: StudyPlan, queue: work_queue.RunQueue, *, log: Log = print) -> None:
    """Put back in the queue, saying so, every run the queue records as completed whose folder holds no
    readable completed result.json (deleted, truncated, edited): it trains again, so that the report never
    silently lacks a configuration."""
    for index, state in sorted(queue.states().items()):
        if state.state != runfolder.COMPLETED or index >= len(plan.runs):
            continue
        run = plan.runs[index]
        run_id = run.run_id or state.trial.user_attrs.get("run_id")
        problem = missing_result(plan.run_dir(str(run_id))) if run_id else None
        if problem is not None:
            queue.requeue(index)
            log(
                f"[{index + 1}/{len(plan.runs)}] requeued {run_id} {_describe(run)}: recorded completed, "
                f"but {problem}; it trains again"
            )


def missing_result(run_dir: Path) -> str | None:
    """Why a run folder does not hold a completed run (no folder, no result.json, a damaged or unfinished
    one), or None when it does."""
    if not run_dir.is_dir():
        return f"its folder {run_dir} is gone"
    try:
        result = runfolder.read_result(run_dir)
    except runfolder.RunFolderError:
        return "its result.json is damaged"
    if result is None:
        return "its folder holds no result.json"
    if result.get("status") != runfolder.COMPLETED:
        return f"its result.json says {result.get('status')!r}"
    return None


def _progressed(plan: StudyPlan, trial: Any) -> bool:
    """Did a dead worker's attempt record an epoch in the run folder since it claimed the run?"""
    run_id = trial.user_attrs.get("run_id")
    start = trial.user_attrs.get(work_queue.PROGRESS_AT_CLAIM)
    if not run_id or start is None:
        return False
    return runfolder.epochs_recorded(plan.run_dir(str(run_id))) > int(start)


def work(
    plan: StudyPlan, queue: work_queue.RunQueue, *, options: WorkerOptions = WorkerOptions(), log: Log = print
) -> tuple[int, int]:
    """Claim and execute runs until every run is done or failed; returns (trained, skipped) here."""
    trained = skipped = 0
    n_runs = len(plan.runs)
    outage = StorageOutage(queue.url, log)
    while True:
        try:
            claim = queue.claim(functools.partial(_claimable, plan, queue.states(), time.monotonic()))
            outage.over()
            if claim is None:
                if queue.drained(n_runs):
                    return trained, skipped
                time.sleep(options.poll_s)
                continue
            outcome = execute(plan, queue, claim, log=log)
        except work_queue.STORAGE_ERRORS as error:
            outage.failed(error)
            time.sleep(max(options.poll_s, 1.0))
            continue
        trained += outcome == "trained"
        skipped += outcome == "skipped"


class StorageOutage:
    """A worker's view of its queue's database failing (a dropped connection, a paused process's SQLite
    lock past its wait, a server restart): the work loop tries again, says so once per outage, and gives up
    with one line after STORAGE_OUTAGE_S without a success. A run whose outcome could not be recorded is
    reaped like a dead worker's and, completed in its folder, recorded as such by the next worker."""

    def __init__(self, url: str, log: Log) -> None:
        self.url = url
        self.log = log
        self.since: float | None = None

    def failed(self, error: BaseException) -> None:
        shown = work_queue.shown_url(self.url)
        reason = work_queue.describe_storage_error(error)
        if self.since is None:
            self.since = time.monotonic()
            self.log(f"the queue's database {shown} failed ({reason}); trying again")
        elif time.monotonic() - self.since > STORAGE_OUTAGE_S:
            raise CnnlabError(
                f"the queue's database {shown} has failed for {STORAGE_OUTAGE_S / 60:.0f} min ({reason}); "
                "every run keeps its checkpoints: run the same command again once the database is back"
            )

    def over(self) -> None:
        if self.since is not None:
            self.log(f"the queue's database {work_queue.shown_url(self.url)} answers again")
        self.since = None


_BUSY_UNTIL: dict[int, float] = {}  # run index → when this process may look at it again (folder was held)


def _claimable(plan: StudyPlan, states: dict[int, work_queue.RunState], now: float, index: int) -> bool:
    """A run may start once the runs it depends on are finished, while no other process holds its folder."""
    run = plan.runs[index]
    if _BUSY_UNTIL.get(index, 0.0) > now:
        return False
    if run.run_id is not None and runfolder.is_held(plan.run_dir(run.run_id)):
        return False
    return all(
        source in states and states[source].state in runfolder.FINISHED_STATES for source in run.depends_on
    )


def execute(plan: StudyPlan, queue: work_queue.RunQueue, claim: work_queue.Claim, *, log: Log = print) -> str:
    """Run one claimed run; returns "trained", "skipped", "failed", "lost" or "busy" and records the outcome
    in the queue. An interrupt records the run as interrupted (no attempt used) and is re-raised."""
    run = plan.runs[claim.run_index]
    where = f"[{run.index + 1}/{len(plan.runs)}]"
    try:
        run = _resolved(plan, run, queue.states())
    except CnnlabError as error:
        queue.finish(claim, runfolder.FAILED, reason=str(error))
        log(f"{where} failed   {run.configuration}: {error}")
        return "failed"
    assert run.config is not None and run.run_id is not None
    run_dir = plan.run_dir(run.run_id)
    finished = _completed_or_cleared(run_dir, f"{where} cleared  {run.run_id} {_describe(run)}", log)
    if finished is not None:
        queue.finish(claim, work_queue.SKIPPED, value=_score(finished), run_id=run.run_id)
        log(f"{where} skipped  {run.run_id} {_describe(run)} (already completed)")
        return "skipped"
    queue.note(claim, run_id=run.run_id, **{work_queue.PROGRESS_AT_CLAIM: runfolder.epochs_recorded(run_dir)})
    log(f"{where} start    {run.run_id} {_describe(run)}")
    started = time.perf_counter()
    try:
        with queue.heartbeat(claim) as lost:
            status, summary = _fit(plan, run, run_dir, lost)
    except Interrupted as stop:
        _record_stopped(queue, claim, run.run_id, f"interrupted by {stop.signal_name}")
        log(f"{where} interrupted {run.run_id} {_describe(run)} (resumes from its last checkpoint)")
        raise
    except RunLost:
        log(
            f"{where} lost     {run.run_id} {_describe(run)}: this worker was paused past its heartbeat "
            "and the run went back to the queue; stopped it without a result (it resumes from its checkpoint)"
        )
        return "lost"
    except DiskFull:
        # the storage may sit on the same full disk and fail in any way
        _record_stopped(queue, claim, run.run_id, "the disk filled", errors=(Exception,))
        log(f"{where} stopped  {run.run_id} {_describe(run)}: the disk filled (resumes once space is freed)")
        raise
    except runfolder.RunFolderLost:
        _record_stopped(queue, claim, run.run_id, "its run folder was removed")
        log(f"{where} stopped  {run.run_id} {_describe(run)}: its run folder was removed, moved or replaced")
        raise runfolder.RunFolderLost(
            f"the run folder {cfg.quoted(run_dir)} was removed, moved or replaced while run {run.run_id} "
            "trained in it; the study stopped (nothing is recorded as failed); run it again to train that "
            "run afresh"
        ) from None
    except runfolder.RunFolderBusy as busy:
        queue.finish(claim, work_queue.BUSY, run_id=run.run_id)
        _BUSY_UNTIL[run.index] = time.monotonic() + queue.grace_s
        log(f"{where} busy     {run.run_id} {_describe(run)}: {busy}; trying other runs first")
        return "busy"
    elapsed = time.perf_counter() - started
    mine = queue.finish(claim, status, value=_score(summary), run_id=run.run_id, reason=summary.get("reason"))
    note = "" if mine else " (its claim had expired meanwhile; no other worker ran it)"
    flagged = f" [flagged: {'; '.join(summary['flags'])}]" if summary.get("flags") else ""
    scores = f"{_metrics(summary)} {elapsed:.1f} s{note}{flagged}"
    log(f"{where} {status:<8} {run.run_id} {_describe(run)} {scores}")
    return "trained"


def _completed_or_cleared(run_dir: Path, line: str, log: Log) -> dict[str, Any] | None:
    """The run's completed result, else None; a damaged result.json (unreadable, or edited into one that is
    not a result) is removed first, saying so on a `line`, so that the run trains again and rewrites it (it
    resumes from its last checkpoint)."""
    try:
        return runfolder.completed_result(run_dir)
    except runfolder.RunFolderError as error:
        (run_dir / runfolder.RESULT_FILE).unlink(missing_ok=True)
        log(f"{line}: removed its damaged result.json ({one_line(str(error), 300)}); it trains again")
        return None


class RunLost(Exception):
    """The worker lost its claim on the run it was training (paused past its heartbeat)."""


def _resolved(plan: StudyPlan, run: PlannedRun, states: dict[int, work_queue.RunState]) -> PlannedRun:
    """The run with its config: a final run is resolved by selection; a broken dependency is an error."""
    if run.role == ROLE_FINAL:
        selection = select_configuration(plan)
        finals = {
            r.seed: resolve_config(final_config(selection, r.seed)).run_id
            for r in plan.runs
            if r.role == ROLE_FINAL
        }
        write_selection(plan.study_dir, selection, finals)
        return dataclasses.replace(
            run, config=final_config(selection, run.seed), configuration=selection.chosen.configuration
        )
    for index in run.depends_on:
        if states[index].state != runfolder.COMPLETED:
            source = plan.runs[index]
            raise CnnlabError(
                f"it starts from run {source.run_id} ({source.stage}: {source.configuration}, "
                f"seed {source.seed}), which did not complete"
            )
    return run


def _fit(plan: StudyPlan, run: PlannedRun, run_dir: Path, lost: Any) -> tuple[str, dict[str, Any]]:
    """Train one run in this process; an error becomes a recorded failure instead of stopping the study."""
    assert run.config is not None
    try:
        result = fit(run.config, run_dir, tags=run.tags(plan.spec.name), resume=True, abandon=lost)
        return result.status, dict(result.summary)
    except RunAbandoned:
        raise RunLost() from None
    except (runfolder.RunFolderBusy, runfolder.RunFolderLost, DiskFull):
        raise
    except Exception as error:  # any failure of one run is recorded; the study goes on
        reason = str(error) if isinstance(error, CnnlabError) else f"{type(error).__name__}: {error}"
        return runfolder.FAILED, _record_failure(plan, run, run_dir, reason)


def _record_failure(plan: StudyPlan, run: PlannedRun, run_dir: Path, reason: str) -> dict[str, Any]:
    """A failed result.json for a run that stopped before fit could write one (e.g. a bad model switch)."""
    assert run.config is not None and run.run_id is not None
    with runfolder.hold(run_dir, run.run_id):
        existing = runfolder.read_result(run_dir)
        if existing is not None and existing.get("status") == runfolder.FAILED:
            return existing
        summary = {
            "run_id": run.run_id,
            "status": runfolder.FAILED,
            "reason": reason,
            "model": run.config.model.name,
            "dataset": run.config.data.name,
            "config": cfg.to_dict(run.config),
            "tags": run.tags(plan.spec.name),
            "best": None,
            "last": None,
            "test": None,
        }
        runfolder.write_result(run_dir, summary)
    return summary


def _score(summary: dict[str, Any]) -> float | None:
    """The value a finished trial carries in the storage: best validation accuracy, else test accuracy."""
    value = metric_value(summary, "best.val_acc")
    return value if value is not None else metric_value(summary, "test.acc")


def _describe(run: PlannedRun) -> str:
    stage = f"{run.stage}: " if run.stage != "main" else ""
    fold = f" fold={run.fold}" if run.fold is not None else ""
    role = " (retrained on all training data)" if run.role == ROLE_FINAL else ""
    return f"{stage}{run.configuration} seed={run.seed}{fold}{role}"


def _metrics(summary: dict[str, Any]) -> str:
    parts = []
    for label, metric in (("val_acc", "best.val_acc"), ("test_acc", "test.acc")):
        value = metric_value(summary, metric)
        if value is not None:
            parts.append(f"{label}={value:.4f}")
    if summary.get("reason"):
        parts.append(f"reason: {str(summary['reason']).splitlines()[0][:200]}")
    return " ".join(parts)


def build_ensembles(plan: StudyPlan, *, log: Log = print) -> tuple[Path, ...]:
    """Write every ensemble of the spec from its completed members' saved predictions."""
    written = []
    for ensemble in plan.spec.ensembles:
        members = [plan.runs[index] for index in plan.ensemble_members[ensemble.name]]
        dirs = [plan.run_dir(str(run.run_id)) for run in members]
        dirs = [d for d in dirs if runfolder.completed_result(d) is not None]
        if not dirs:
            log(f"ensemble {ensemble.name}: no completed member run; skipped")
            continue
        out_dir = plan.study_dir / ENSEMBLES_DIR / ensemble.name
        summary = build_ensemble(ensemble.name, ensemble.method, dirs, out_dir)
        accuracies = " ".join(
            f"{split}_acc={summary[split]['acc']:.4f}" for split in ("val", "test") if summary.get(split)
        )
        log(
            f"ensemble {ensemble.name} ({ensemble.method} of {len(dirs)} runs): "
            f"{accuracies or 'no split shared by all members'}"
        )
        written.append(out_dir)
    return tuple(written)


def _count(states: dict[int, work_queue.RunState], n_runs: int) -> dict[str, int]:
    counts = dict.fromkeys(runfolder.STATES, 0)
    for index in range(n_runs):
        counts[states[index].state if index in states else runfolder.PENDING] += 1
    return counts


def _helpers(plan: StudyPlan, url: str, workers: int, options: WorkerOptions) -> list[BaseProcess]:
    """`workers - 1` more worker processes on this machine (not started yet), each calling
    `work_in_helper` with its share of the CPU threads. Spawned, not forked: torch is not fork-safe."""
    if workers < 2:
        return []
    threads = max(1, (os.cpu_count() or 1) // workers)
    torch.set_num_threads(threads)
    spawn = multiprocessing.get_context("spawn")
    return [
        spawn.Process(target=work_in_helper, args=(plan, url, options, threads), name=f"worker-{number}")
        for number in range(2, workers + 1)
    ]


def work_in_helper(plan: StudyPlan, url: str, options: WorkerOptions, threads: int) -> None:
    """A helper process of `run_study`: work through the queue like the main process, then exit.

    SIGINT/SIGTERM record its run as interrupted and exit 130/143 (the main process says how to resume);
    a user error prints one line and exits 2, as the CLI does."""
    torch.set_num_threads(threads)
    for stream in (sys.stdout, sys.stderr):  # line by line, so workers' lines never cut into each other
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True, errors="backslashreplace")
    try:
        with signals_raise(), folder_in_use(plan.study_dir):
            work(plan, open_queue(plan, url, options), options=options)
    except Interrupted as stop:
        sys.exit(stop.exit_code)
    except CnnlabError as error:
        print(f"cnnlab: error: {one_line(str(error))}", file=sys.stderr)
        sys.exit(error.exit_code)
    finally:
        gc.freeze()  # exit without the final garbage collection, as the CLI does (cli.run_program)


def _stop(helper: BaseProcess) -> None:
    """Stop a helper still running (this process was interrupted): it records its run as interrupted."""
    if helper.pid is None:  # never started
        return
    helper.join(timeout=2)  # a Ctrl-C reached the helpers too; let them finish recording
    if helper.is_alive():
        helper.terminate()  # SIGTERM: recorded as interrupted
        helper.join(timeout=20)
    if helper.is_alive():
        helper.kill()  # it did not stop; its run is resumed later from its checkpoint
        helper.join()
