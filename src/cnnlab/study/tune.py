"""`tune`: hyperparameter search with Optuna (TPE sampler, median pruning by fold) over a YAML search space.

The objective of a trial is the mean k-fold validation accuracy of its configuration (folds from the
tune's split seed, computed once and saved); after each fold the running mean is reported so a clearly
worse trial stops early. Several processes, here or on other machines, share one storage URL; the trial
budget counts over all of them, and a trial whose worker died is retried by another.

The budget is met exactly: a trial starts only when fewer than `trials` trials begun before it (by trial id,
which the storage hands out in order) are finished or still running. When enough of them are, it waits for
them; once they have finished, it is not needed and ends without training ("surplus": failed, left out of
tune.json); should one of them fail, or its worker die, it goes ahead instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from cnnlab import config as cfg
from cnnlab import safeio
from cnnlab.data import check_folds, load_split, make_splits
from cnnlab.errors import CnnlabError, ConfigError, Interrupted, one_line
from cnnlab.runfolder import (
    TUNE_BEST_FILE,
    TUNE_SPEC_FILE,
    TUNE_STORAGE_FILE,
    TUNE_SUMMARY_FILE,
    RunFolderBusy,
    resolved_folder,
)
from cnnlab.study.checks import (
    TUNE_FOLDER,
    StudyFolderError,
    check_config,
    check_init_file,
    check_out_folder,
    check_out_outside_data,
    check_training_data,
    folder_in_use,
    folder_lock,
    folder_unused,
    remove_own_files,
    storage_files_in,
)
from cnnlab.study.plan import RUNS_DIR, splits_plan
from cnnlab.study.queue import (
    STORAGE_ERRORS,
    WorkerOptions,
    check_storage_url,
    open_storage,
    quiet_optuna,
)
from cnnlab.study.runner import spec_text
from cnnlab.study.selection import metric_value
from cnnlab.study.spec import SearchParam, TuneSpec, load_tune_spec
from cnnlab.train import RunResult, fit

SPEC_FILE = TUNE_SPEC_FILE
BEST_FILE = TUNE_BEST_FILE
SUMMARY_FILE = TUNE_SUMMARY_FILE
STORAGE_FILE = TUNE_STORAGE_FILE
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SURPLUS = "surplus"  # trial user attr: started once the budget was already met elsewhere; trained nothing
BUDGET_POLL_S = 0.5


class RunFailed(Exception):
    """One fold's run failed or diverged: the trial is recorded as failed and the search goes on."""


class BudgetMet(Exception):
    """The trial budget was met by trials begun before this one: it ends without training."""


@dataclasses.dataclass(frozen=True)
class TuneOutcome:
    """The best trial over every process sharing the storage, and how many trials finished."""

    out_dir: Path
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    finished: int
    best_file: Path | None


def run_tune(
    spec_path: str | Path,
    out_dir: str | Path,
    *,
    trials: int | None = None,
    storage: str | None = None,
    heartbeat_s: int | None = None,  # default WorkerOptions.heartbeat_s
    overrides: Sequence[str] = (),
    restart: bool = False,
    log: Any = print,
) -> TuneOutcome:
    """Run trials until `trials` (default: the spec's) have finished across all processes, then report.

    A folder holding another tune spec's search is refused (StudyFolderError) unless `restart`, which first
    removes that search's files; so is one holding a study, a suite, or files cnnlab did not write."""
    spec = load_tune_spec(spec_path, overrides)
    check_space(spec)
    out_dir = resolved_folder(out_dir)
    url = storage or f"sqlite:///{out_dir / STORAGE_FILE}"
    check_storage_url(url)
    with contextlib.ExitStack() as in_use:  # the folder is in use until this process is done with it
        claim_tune_folder(
            spec, Path(spec_path), out_dir, url, overrides, restart=restart, log=log, in_use=in_use
        )
        budget = trials or spec.trials
        study, created = _open_study(spec, url, heartbeat_s or WorkerOptions.heartbeat_s)
        remaining = budget - _count_finished(study)
        if remaining > 0:
            callback = optuna.study.MaxTrialsCallback(budget, states=FINISHED)
            with _quiet_failed_trials():
                study.optimize(
                    lambda trial: _objective(trial, spec, out_dir, log, budget),
                    n_trials=remaining,
                    callbacks=[callback],
                    catch=(RunFailed, CnnlabError, BudgetMet),
                )
        return _report(study, spec, out_dir, spec_path, url)


def check_space(spec: TuneSpec) -> None:
    """The base config, and the base with each categorical choice, name a known model with switches it
    supports, a known dataset whose training data is there and cuts into the spec's folds, and an existing
    weights file: a typo, a missing folder or too many folds stops the search before anything is written
    (ranges were checked with the spec); a trial fails only for what its own params do."""
    checked: set[str] = set()
    _check_trial_config(cfg.from_dict(spec.base), spec.folds, checked)
    for param in spec.space:
        for number, choice in enumerate(param.choices or ()):
            try:
                config = cfg.from_dict(cfg.merge(cfg.merge({}, spec.base), {param.key: choice}))
                _check_trial_config(config, spec.folds, checked)
            except CnnlabError as error:
                raise ConfigError(f"tune spec space.{param.key}[{number}]={choice!r}: {error}") from None


def _check_trial_config(config: cfg.RunConfig, folds: int, checked: set[str]) -> None:
    check_config(config)
    check_init_file(config.train.init, checked)
    check_training_data(config.data)
    try:
        check_folds(load_split(config.data, "train").labels, folds)
    except CnnlabError as error:
        raise ConfigError(f"tune spec cv.folds={folds}: {error}") from None


def claim_tune_folder(
    spec: TuneSpec,
    spec_path: Path,
    out_dir: Path,
    url: str,
    overrides: Sequence[str],
    *,
    restart: bool = False,
    log: Any = print,
    in_use: contextlib.ExitStack | None = None,
) -> None:
    """Check the folder before writing (a tune folder of this spec, or a new or empty one), then again under
    its lock, where tune.yaml and the spec's identity in tune.json are written: two tunes of different specs
    started at once cannot both take the folder. `restart` removes another spec's search first (refused
    while another process works in the folder); the folder is in use by this process until `in_use`
    closes."""
    also_own = storage_files_in(out_dir, url)
    check_out_outside_data(out_dir, [str(spec.base.get("data.name", ""))])
    check_out_folder(out_dir, TUNE_FOLDER, also_own=also_own)
    _check_same_tune(out_dir, spec, spec_path, restart=restart)
    with folder_lock(out_dir, log=log):
        check_out_folder(out_dir, TUNE_FOLDER, also_own=also_own)
        if _check_same_tune(out_dir, spec, spec_path, restart=restart):
            with folder_unused(out_dir, TUNE_FOLDER):
                remove_own_files(out_dir, TUNE_FOLDER)
        if in_use is not None:
            in_use.enter_context(folder_in_use(out_dir))
        if not (out_dir / SUMMARY_FILE).is_file():
            safeio.atomic_write_json(out_dir / SUMMARY_FILE, _identity(spec, spec_path, url))
        safeio.atomic_write_text(out_dir / SPEC_FILE, spec_text(spec_path, spec.raw, overrides))


def _check_same_tune(out_dir: Path, spec: TuneSpec, spec_path: Path, *, restart: bool) -> bool:
    """Refuse a folder whose tune.json records another spec's search, unless `restart` (then True: that
    search is to be removed). A folder from before tune.json recorded its spec is taken as it is."""
    path = out_dir / SUMMARY_FILE
    if not path.is_file():
        return False
    try:
        recorded = safeio.read_json(path)
    except (OSError, ValueError) as error:
        if restart:
            return True
        raise StudyFolderError(
            f"{path} is unreadable ({error}); move it away, or use --restart to start the search over"
        ) from None
    theirs = recorded.get("spec_hash") if isinstance(recorded, dict) else None
    if theirs is None or theirs == _spec_hash(spec):
        return False
    if restart:
        return True
    raise StudyFolderError(
        f"tune folder {str(out_dir)!r} holds the search {recorded.get('name')!r} from "
        f"{recorded.get('spec_path') or 'an unknown spec'} (spec {theirs}); refusing {spec.name!r} from "
        f"{spec_path} (spec {_spec_hash(spec)}): a folder holds one spec; use another --out, or --restart "
        "to discard that search"
    )


def _identity(spec: TuneSpec, spec_path: str | Path, url: str) -> dict[str, Any]:
    """What tune.json records from the start: which spec's search the folder holds, and where its trials
    are stored."""
    return {
        "name": spec.name,
        "spec_hash": _spec_hash(spec),
        "spec_path": str(Path(spec_path).absolute()),
        "storage": url,
    }


def _needed(trial: optuna.Trial, budget: int) -> bool:
    """Is this trial needed for the budget? Waits while trials begun before it could still meet it."""
    mine = trial._trial_id
    while True:
        earlier = [
            t
            for t in trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
            if t._trial_id < mine and not t.user_attrs.get(SURPLUS)
        ]
        if sum(t.state in FINISHED for t in earlier) >= budget:
            return False
        if len(earlier) < budget:
            return True
        time.sleep(BUDGET_POLL_S)  # enough are running: see whether they finish (a dead one is reaped)
        optuna.storages.fail_stale_trials(trial.study)


class _quiet_failed_trials:
    """Optuna logs every caught failure with its traceback; a failed or diverged trial gets one cnnlab line
    from `_objective` instead, and a surplus trial is not a failure at all."""

    def __enter__(self) -> None:
        self.logger = logging.getLogger("optuna.study._optimize")
        self.filter = _DropFailedTrials()
        self.logger.addFilter(self.filter)

    def __exit__(self, *exc: object) -> None:
        self.logger.removeFilter(self.filter)


class _DropFailedTrials(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Trial ") and " failed with " in message)


def _open_study(spec: TuneSpec, url: str, heartbeat_s: int) -> tuple[optuna.Study, bool]:
    """Create or join the tune's Optuna study; the creating process seeds the sampler (reproducible alone)."""
    quiet_optuna()  # before the (experimental) retry callback is made, or its warning is printed
    retry = (
        getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        or optuna.storages.RetryFailedTrialCallback
    )
    storage = open_storage(url, heartbeat_s=heartbeat_s, on_stale=retry(max_retry=2))
    name = f"cnnlab-tune:{spec.name}:{_spec_hash(spec)}"
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
        if spec.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    try:
        sampler = optuna.samplers.TPESampler(seed=spec.sampler_seed)
        return optuna.create_study(
            study_name=name, storage=storage, direction="maximize", sampler=sampler, pruner=pruner
        ), True
    except optuna.exceptions.DuplicatedStudyError:
        # a joining process samples with its own random stream, or two would propose the same first trials
        return optuna.load_study(
            study_name=name, storage=storage, sampler=optuna.samplers.TPESampler(), pruner=pruner
        ), False


def _spec_hash(spec: TuneSpec) -> str:
    identity = {
        "base": spec.base,
        "space": [dataclasses.asdict(p) for p in spec.space],
        "folds": spec.folds,
        "seed": spec.seed,
        "split_seed": spec.split_seed,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=list).encode()).hexdigest()[:12]


def _count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _objective(trial: optuna.Trial, spec: TuneSpec, out_dir: Path, log: Any, budget: int) -> float:
    """Mean validation accuracy over the folds; reported fold by fold for pruning. SIGINT/SIGTERM hand the
    trial back (see `_requeue_interrupted`) and end the process."""
    try:
        return _run_trial(trial, spec, out_dir, log, budget)
    except Interrupted as stop:
        with contextlib.suppress(*STORAGE_ERRORS):  # the interrupt ends the process regardless
            _requeue_interrupted(trial, stop)
        raise


def _requeue_interrupted(trial: optuna.Trial, stop: Interrupted) -> None:
    """Record the interrupted trial as failed and queue its params again, so the next `tune` takes them
    first and resumes their runs from their checkpoints (left running, it would wait out the heartbeat
    grace and its runs stay half-trained). A trial that had no params yet is just left out, like a surplus."""
    if trial.params:
        trial.set_user_attr("reason", f"interrupted by {stop.signal_name}; its params were queued again")
        trial.study.enqueue_trial(trial.params, skip_if_exists=False)
    else:
        trial.set_user_attr(SURPLUS, True)
    trial.study.tell(trial, state=TrialState.FAIL)


def _run_trial(trial: optuna.Trial, spec: TuneSpec, out_dir: Path, log: Any, budget: int) -> float:
    if not _needed(trial, budget):
        trial.set_user_attr(SURPLUS, True)
        trial.study.stop()
        raise BudgetMet(f"{budget} trials are finished")
    params = {param.key: _suggest(trial, param) for param in spec.space}
    label = " ".join(f"{key}={value}" for key, value in params.items())
    try:
        return _cross_validate(trial, spec, params, label, out_dir, log)
    except (RunFailed, CnnlabError) as error:
        log(f"trial {trial.number} failed: {label}: {one_line(str(error), 500)}")
        raise


def _cross_validate(
    trial: optuna.Trial, spec: TuneSpec, params: dict[str, Any], label: str, out_dir: Path, log: Any
) -> float:
    """Train the trial's folds in turn, reporting the running mean after each so a worse trial is pruned."""
    scores: list[float] = []
    for fold in range(spec.folds):
        config = _fold_config(spec, params, fold, out_dir)
        score = _fit_fold(config, out_dir, trial, label, fold, spec, log)
        scores.append(score)
        trial.report(statistics.fmean(scores), step=fold)
        if fold < spec.folds - 1 and trial.should_prune():
            log(
                f"trial {trial.number} pruned after fold {fold}: {label} "
                f"mean val_acc={statistics.fmean(scores):.4f}"
            )
            raise optuna.TrialPruned()
    mean = statistics.fmean(scores)
    log(f"trial {trial.number} {label}: mean {spec.folds}-fold val_acc={mean:.4f}")
    return mean


def _suggest(trial: optuna.Trial, param: SearchParam) -> Any:
    if param.choices is not None:
        return trial.suggest_categorical(param.key, list(param.choices))
    if param.integer:
        return trial.suggest_int(param.key, int(param.low), int(param.high), log=param.log)
    return trial.suggest_float(param.key, float(param.low), float(param.high), log=param.log)


def _fold_config(spec: TuneSpec, params: dict[str, Any], fold: int, out_dir: Path) -> cfg.RunConfig:
    """Base ⊕ trial params ⊕ (fold, seed, no test) with the tune's shared splits file."""
    tree = cfg.merge(
        cfg.merge({}, spec.base),
        {**params, "data.folds": spec.folds, "data.fold": fold, "train.seed": spec.seed, "train.test": False},
    )
    config = cfg.from_dict(tree)
    split = splits_plan(config, spec.split_seed, out_dir)
    if not split.path.is_file():
        labels = load_split(split.data, "train").labels
        make_splits(labels, seed=split.seed, folds=split.folds).save(split.path)
    return cfg.replace(config, **{"data.splits_file": str(split.path)})


def _fit_fold(
    config: cfg.RunConfig, out_dir: Path, trial: optuna.Trial, label: str, fold: int, spec: TuneSpec, log: Any
) -> float:
    """Train one fold (reusing a completed identical run) and return its validation accuracy."""
    run_id = cfg.config_hash(config)
    tags = {
        "study": spec.name,
        "configuration": label,
        "seed": spec.seed,
        "fold": fold,
        "stage": "tune",
        "role": "member",
        "trial": trial.number,
    }
    result = _fit_when_free(config, out_dir / RUNS_DIR / run_id, tags, log)
    trial.set_user_attr(f"run_fold{fold}", run_id)
    score = metric_value(result.summary, "best.val_acc")
    if result.status != "completed" or score is None:
        reason = f"fold {fold} run {run_id} {result.status}: {result.summary.get('reason')}"
        trial.set_user_attr("reason", reason)
        raise RunFailed(reason)
    return score


def _fit_when_free(config: cfg.RunConfig, run_dir: Path, tags: dict[str, Any], log: Any) -> RunResult:
    """Train (or resume) a fold's run; while another process trains the same run (its trial drew the same
    params), wait for it, then take its result (or resume from its checkpoint): the trial does not fail
    because two processes share a run."""
    said = False
    while True:
        try:
            return fit(config, run_dir, tags=tags, resume=True)
        except RunFolderBusy:
            if not said:
                log(
                    f"trial {tags['trial']} fold {tags['fold']}: another process is training its run "
                    f"{run_dir.name} (a trial of the same params); waiting for it"
                )
                said = True
            time.sleep(BUDGET_POLL_S)


def _report(
    study: optuna.Study, spec: TuneSpec, out_dir: Path, spec_path: str | Path, url: str
) -> TuneOutcome:
    """Write best.yaml (a run config: base ⊕ best params) and tune.json (the spec's identity, every trial)."""
    identity = _identity(spec, spec_path, url)
    finished = _count_finished(study)
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    trials = [
        {
            "number": t.number,
            "state": t.state.name.lower(),
            "params": t.params,
            "value": t.value,
            "intermediate": {str(k): v for k, v in t.intermediate_values.items()},
            "reason": t.user_attrs.get("reason"),
        }
        for t in study.get_trials(deepcopy=False)
        if not t.user_attrs.get(SURPLUS)
    ]
    if not completed:
        safeio.atomic_write_json(out_dir / SUMMARY_FILE, {**identity, "best": None, "trials": trials})
        return TuneOutcome(out_dir, None, {}, None, finished, None)
    best = study.best_trial
    best_config = cfg.merge(cfg.merge({}, spec.base), best.params)
    header = (
        f"# cnnlab tune {spec.name}: best of {finished} finished trials = trial {best.number}, "
        f"mean {spec.folds}-fold validation accuracy {best.value:.4f}\n"
        f"# train it: cnnlab train -c {BEST_FILE} --out DIR\n"
    )
    best_file = safeio.atomic_write_text(
        out_dir / BEST_FILE, header + yaml.safe_dump(best_config, sort_keys=False)
    )
    safeio.atomic_write_json(
        out_dir / SUMMARY_FILE,
        {
            **identity,
            "folds": spec.folds,
            "finished": finished,
            "best": {"trial": best.number, "value": best.value, "params": best.params},
            "trials": trials,
        },
    )
    return TuneOutcome(out_dir, best.value, dict(best.params), best.number, finished, best_file)
