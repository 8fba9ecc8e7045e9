"""`fit(config, out_dir)`: one run, from a config to a finished run directory (docs/architecture.md)."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import platform
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import numpy as np
import torch
import torchvision
from lightning.pytorch.callbacks import (
    EarlyStopping,
    EMAWeightAveraging,
    LearningRateMonitor,
    ModelCheckpoint,
)
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from cnnlab import config as cfg
from cnnlab import runfolder, safeio
from cnnlab.data import (
    ImageSet,
    Splits,
    check_data_config,
    excluded_images,
    load_split,
    make_splits,
    normalization,
    take,
    write_bad_files,
)
from cnnlab.errors import (
    CnnlabError,
    ConfigError,
    DataError,
    DiskFull,
    Interrupted,
    WeightsError,
    disk_full_error,
    first_line,
    one_line,
)
from cnnlab.models import (
    count_flops,
    count_params,
    create_model,
    load_pretrained,
    model_info,
    resolve_stem,
    torchvision_state_dict,
)
from cnnlab.train.artefacts import write_run_images
from cnnlab.train.callbacks import (
    AbandonWatch,
    BackboneFreeze,
    DivergenceGuard,
    EpochRecorder,
    EpochSeeder,
    EpochTester,
    RunAbandoned,
    RunDiverged,
    SafeCheckpointIO,
)
from cnnlab.train.checkpoint import (
    MODEL_PREFIX,
    load_trained_model,
    model_state,
    run_checkpoint_path,
)
from cnnlab.train.data_module import InMemoryDataModule
from cnnlab.train.distributed import run_ranks
from cnnlab.train.health import learning_flags
from cnnlab.train.inference import predict_probs, score_predictions
from cnnlab.train.layout import LayoutChoice, choose_layout
from cnnlab.train.lr_finder import FoundRate, find_lr
from cnnlab.train.options import PRECISIONS, check_trainer_options
from cnnlab.train.precision import PrecisionChoice, ProbeTarget, choose_precision
from cnnlab.train.recipes import describe as describe_recipe
from cnnlab.train.resolve import is_pretrained, model_switches, resolve_config
from cnnlab.train.speed import keep_freed_memory
from cnnlab.train.system import ClassifierSystem
from cnnlab.version import __version__ as cnnlab_version


@dataclass(frozen=True)
class RunResult:
    """What a run produced: its status, its directory and the contents of result.json."""

    status: str
    out_dir: Path
    summary: dict[str, Any]
    rank: int = 0  # global DDP rank of this process; only rank zero (0) wrote the folder and reports


@dataclass(frozen=True)
class PreparedRun:
    """Everything resolved before anything is written: data, splits, model and its initial weights."""

    run_id: str  # hash of the resolved config: the run's identity, in a study and outside
    config: cfg.RunConfig  # resolved (`resolve_config`): stem, image size and absolute paths
    train_set: ImageSet
    splits: Splits
    model: nn.Module
    model_hparams: dict[str, Any]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    gflops: float  # one forward pass of one image: measured before training, so a bad input fails first
    init_note: str = ""  # what loading the init weights changed (first conv adapted, head replaced)


def fit(
    config: cfg.RunConfig,
    out_dir: str | Path,
    *,
    tags: dict[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    abandon: threading.Event | None = None,
) -> RunResult:
    """Train one run into `out_dir` and return its result; a completed run of this config is returned as is.

    The folder is refused (RunFolderError, nothing touched) when it holds files cnnlab did not write, another
    run (unless `overwrite`), or is held by another process. Configuration and data errors raise CnnlabError
    before anything is written. A non-finite loss ends the run "diverged"; any other exception during
    training "failed" (traceback in error.log); SIGINT/SIGTERM "interrupted" (checkpoint kept, Interrupted
    re-raised). `resume` continues from checkpoints/last.ckpt. When `abandon` is set (a study worker lost its
    claim) training stops and RunAbandoned is raised without writing a result. Under DDP every rank calls
    `fit`; rank zero does all of the above, the other ranks train and write nothing (`RunResult.rank` > 0).
    """
    _check_fit_arguments(config, out_dir, tags)
    out_dir = Path(out_dir).absolute()
    config = resolve_config(config)
    check_trainer_options(config)
    _quiet()  # a $CNNLAB_QUIET that is neither yes nor no is refused before anything is written
    ranks = run_ranks(config)
    if not ranks.primary:  # another DDP rank: rank zero owns the folder (lock, files, result.json)
        return _train_other_rank(config, out_dir, ranks.global_rank, resume=resume and not overwrite)
    run_id = config.run_id
    runfolder.check_folder(out_dir, run_id, overwrite=overwrite, config=cfg.to_dict(config))
    _warn_of_a_damaged_result(out_dir)
    if not overwrite and (finished := _completed(out_dir, run_id)) is not None:
        return finished
    # --overwrite: prepared before the lock marks the folder as this run's, so a stop while the data loads
    # leaves the other run's folder as it was, still its own
    prepared = prepare_run(config) if overwrite else None
    with runfolder.hold(out_dir, run_id):
        if not overwrite and (finished := _completed(out_dir, run_id)) is not None:
            return finished  # another process completed it while this one waited
        # before anything is removed: a data error leaves the folder as it was
        prepared = prepared or prepare_run(config)
        if overwrite:
            runfolder.clear_run_files(out_dir)
        checkpoint = runfolder.checkpoint_path(out_dir) if resume else None
        checkpoint = checkpoint if checkpoint is not None and checkpoint.is_file() else None
        if checkpoint is not None:
            _check_resumable(checkpoint, prepared)
        with _full_disk_stops_the_run(out_dir):
            _write_run_header(out_dir, prepared, fresh=checkpoint is None)
            return _train_and_record(prepared, out_dir, checkpoint, tags, abandon)


@contextlib.contextmanager
def _full_disk_stops_the_run(out_dir: Path) -> Iterator[None]:
    """A full disk, while training or while scoring and recording the run, raises DiskFull: the run is not
    recorded as failed, its checkpoints stay, and `--resume` goes on once space is freed (a plain rerun
    would start over)."""
    try:
        yield
    except CnnlabError:
        raise
    except Exception as error:
        full = disk_full_error(error)
        if full is None:
            raise
        what = "disk quota exceeded" if full.errno == errno.EDQUOT else "no space left on the device"
        file = f" writing {cfg.quoted(full.filename)}" if full.filename else ""
        raise DiskFull(
            f"the disk filled while training {out_dir} ({what}{file}); the checkpoints are kept: "
            "free some space"
        ) from None


def _train_and_record(
    prepared: PreparedRun,
    out_dir: Path,
    checkpoint: Path | None,
    tags: dict[str, Any] | None,
    abandon: threading.Event | None,
) -> RunResult:
    """Train, then write result.json: scored when the run ended, without scores when it was interrupted."""
    started = time.perf_counter()
    layout, precision = speed_choices(prepared, checkpoint)
    print(precision.line(), flush=True)  # the run's first lines: what it trains in, and why
    print(layout.line(), flush=True)
    print(describe_recipe(prepared.config), flush=True)
    if prepared.init_note:
        print(prepared.init_note, flush=True)
    recorder = EpochRecorder(out_dir, echo=not _quiet())
    try:
        status, reason = _train(
            prepared, out_dir, checkpoint, recorder, abandon, precision=precision, layout=layout
        )
        if abandon is not None and abandon.is_set():
            raise RunAbandoned("the claim on this run passed to another worker")
        runfolder.check_still_held(out_dir)  # before the scoring writes predictions and result.json there
        wall = time.perf_counter() - started
        summary = _summarize(prepared, out_dir, status, reason, recorder, wall, tags, (layout, precision))
    except Interrupted as stop:
        reason = f"interrupted by {stop.signal_name} after {len(recorder.rows)} epoch(s)"
        summary = _summarize(
            prepared,
            out_dir,
            runfolder.INTERRUPTED,
            reason,
            recorder,
            time.perf_counter() - started,
            tags,
            (layout, precision),
            evaluate=False,
        )
        runfolder.check_still_held(out_dir)
        runfolder.remove_scoring_files(out_dir)
        runfolder.write_result(out_dir, summary)
        raise
    _log_to_tensorboard(out_dir, summary)
    runfolder.write_result(out_dir, summary)
    return RunResult(status=status, out_dir=out_dir, summary=summary)


def _log_to_tensorboard(out_dir: Path, summary: dict[str, Any]) -> None:
    """The final test scalars and the run's settings (TensorBoard's hparams tab) beside the epoch curves."""
    logger = TensorBoardLogger(out_dir, name=runfolder.TENSORBOARD_DIR, version="", default_hp_metric=False)
    step = max(int(summary.get("epochs_run") or 1) - 1, 0)
    test = summary.get("test") or {}
    scores = {f"test_{key}": float(value) for key, value in test.items() if value is not None}
    best = (summary.get("best") or {}).get("val_acc")
    metrics = {"hp/test_acc": scores.get("test_acc", math.nan), "hp/best_val_acc": best or math.nan}
    if scores:
        logger.log_metrics(scores, step=step)
    logger.log_hyperparams(_hparams(summary.get("config") or {}), metrics)
    logger.finalize("success")


def _hparams(config: dict[str, Any]) -> dict[str, Any]:
    """The config as TensorBoard's hparams tab takes it: dotted keys, lists and nulls as text."""
    return {
        key: value if isinstance(value, (bool, int, float, str)) else str(value)
        for key, value in cfg.flatten(config).items()
    }


def _train_other_rank(config: cfg.RunConfig, out_dir: Path, rank: int, *, resume: bool) -> RunResult:
    """A DDP process other than rank zero: it trains its shard in step with rank zero and writes nothing
    (no lock, no file, no line). It resumes exactly when rank zero does: both see the same last.ckpt, which
    rank zero clears only on a fresh start, before its trainer waits for the other ranks."""
    run_id = config.run_id
    if (finished := _completed(out_dir, run_id)) is not None:
        return RunResult(finished.status, out_dir, finished.summary, rank=rank)
    prepared = prepare_run(config)
    checkpoint = runfolder.checkpoint_path(out_dir) if resume else None
    checkpoint = checkpoint if checkpoint is not None and checkpoint.is_file() else None
    recorder = EpochRecorder(out_dir, echo=False)
    try:
        layout, precision = speed_choices(prepared, checkpoint)  # no probe: several processes or CUDA
        with _full_disk_stops_the_run(out_dir):
            status, reason = _train(
                prepared,
                out_dir,
                checkpoint,
                recorder,
                None,
                precision=precision,
                layout=layout,
                primary=False,
            )
    except Interrupted as stop:
        stop.quiet = True  # type: ignore[attr-defined]  # rank zero records it and says how to resume
        raise
    summary = {"run_id": run_id, "status": status, "reason": reason, "rank": rank}
    return RunResult(status=status, out_dir=out_dir, summary=summary, rank=rank)


def _completed(out_dir: Path, run_id: str) -> RunResult | None:
    """This run's completed result in its folder, else None; a damaged result.json (edited, truncated) of
    the folder's own run counts as unfinished: the run trains again (or `--resume` re-scores it from its
    checkpoint) and rewrites it."""
    try:
        summary = runfolder.completed_result(out_dir)
    except runfolder.RunFolderError:
        return None
    if summary is None or summary.get("run_id") != run_id:
        return None
    return RunResult(status=runfolder.COMPLETED, out_dir=out_dir, summary=summary)


def _warn_of_a_damaged_result(out_dir: Path) -> None:
    """Say that the run's result.json cannot be read, and what happens to it (`_completed`)."""
    try:
        runfolder.read_result(out_dir)
    except runfolder.RunFolderError as error:
        print(
            f"cnnlab: warning: {one_line(str(error), 300)}; the run counts as unfinished: it trains "
            "again, or with --resume goes on from its last checkpoint, and result.json is written anew",
            file=sys.stderr,
        )


def completed_result(out_dir: Path) -> RunResult | None:
    """The result of a run directory whose result.json says completed, else None."""
    summary = runfolder.completed_result(out_dir)
    return None if summary is None else RunResult(runfolder.COMPLETED, Path(out_dir), summary)


def prepare_run(config: cfg.RunConfig) -> PreparedRun:
    """Load data and splits, build and initialise the model of a resolved config (nothing is written)."""
    resolved = resolve_config(config)
    info = model_info(resolved.model.name)
    stem, _ = resolve_stem(
        info.name, resolved.model.stem, resolved.data.image_size, pretrained=_pretrained(resolved)
    )
    check_data_config(resolved.data)  # the augmentation preset too, before anything is written
    train_set = load_split(resolved.data, "train")
    _check_classes(train_set, resolved.data.name)
    if resolved.train.test:  # memoised: read now, so a bad data.test_subset fails before training, not after
        load_split(resolved.data, "test")
    splits = _splits_for(resolved, train_set)
    train_idx, _ = splits.indices(resolved.data.split_index)
    mean, std = normalization(train_set.images[torch.as_tensor(train_idx)], resolved.data.normalize)
    hparams = _model_hparams(
        resolved, info, stem, in_chans=train_set.images.shape[1], num_classes=len(train_set.class_names)
    )
    torch.manual_seed(resolved.train.seed)  # weight initialisation is part of the run's seed
    model = create_model(info.name, **hparams)
    note = _initialise(model, resolved.train.init, info.name)
    gflops = _input_gflops(model, resolved, in_chans=hparams["in_chans"])
    return PreparedRun(
        resolved.run_id, resolved, train_set, splits, model, hparams, tuple(mean), tuple(std), gflops, note
    )


def _input_gflops(model: nn.Module, config: cfg.RunConfig, *, in_chans: int) -> float:
    """GFLOPs of one image; a model that cannot take the run's input (a 224 px stem fed 28 px, a plugin's
    forward that fails) is refused here, before anything is written, not after a failed training."""
    side = config.data.image_size
    try:
        return round(count_flops(model, (in_chans, side, side)) / 1e9, 6)
    except Exception as error:  # noqa: BLE001  (the forward of any layout, a plugin's included)
        raise ConfigError(
            f"model {config.model.name!r} (model.stem={config.model.stem}) cannot take the run's "
            f"{in_chans}x{side}x{side} input ({type(error).__name__}: {first_line(error)}); use "
            "model.stem=auto or resize, a larger data.image_size, or another model"
        ) from None


def _check_classes(train_set: ImageSet, dataset: str) -> None:
    """A classifier needs two classes or more, each with training images."""
    names = train_set.class_names
    if len(names) < 2:
        raise DataError(
            f"{cfg.short(dataset)} has {len(names)} class(es) {list(names)} in its training split; a "
            "classifier needs at least 2 (check data.classes, or the folder's class subfolders)"
        )
    empty = [name for name, count in zip(names, train_set.class_counts()) if count == 0]
    if empty:
        raise DataError(
            f"class(es) {', '.join(empty)} of {cfg.short(dataset)} have no training images after "
            "data.subset / data.per_class (or data.bad_images=skip) left them out; keep more images or drop "
            "those classes"
        )


def _pretrained(config: cfg.RunConfig) -> bool:
    return is_pretrained(config.train.init)


def _model_hparams(config: cfg.RunConfig, info: Any, stem: str, *, in_chans: int, num_classes: int) -> dict:
    switches = {**model_switches(config.model), "stem": stem}
    return {
        "num_classes": num_classes,
        "in_chans": in_chans,
        "image_size": config.data.image_size,
        **{key: value for key, value in switches.items() if value is not None},
    }


def _splits_for(config: cfg.RunConfig, train_set: ImageSet) -> Splits:
    if config.data.splits_file:
        splits = Splits.load(config.data.splits_file)
        splits.check_labels(train_set.labels, source=f"data.splits_file {config.data.splits_file}")
        return splits
    return make_splits(
        train_set.labels,
        seed=config.train.seed,
        val_fraction=config.data.val_fraction,
        folds=config.data.folds,
    )


def _initialise(model: nn.Module, init: str, model_name: str) -> str:
    """Apply `train.init`: scratch | torchvision:<WEIGHTS> | file:<path> | run:<run dir>; returns a line
    saying what loading changed ('' for scratch)."""
    scheme, _, value = init.partition(":")
    if scheme == "scratch" and not value:
        return ""
    if scheme == "torchvision" and value:
        state = torchvision_state_dict(model_name, value)
    elif scheme == "file" and value:
        state = _file_init_state(value, model_name)
    elif scheme == "run" and value:
        state = _run_init_state(value, model_name)
    else:
        raise ConfigError(
            f"train.init={init!r} is not understood; use scratch, torchvision:<WEIGHTS>, "
            "file:<path> or run:<run dir>"
        )
    before = _shapes(state, model)
    load_pretrained(model, state, name=model_name)
    return f"init {init}: " + "; ".join(before)


def _file_init_state(path: str, model_name: str) -> dict[str, Any]:
    """The weights of a `file:` init; a file that cannot serve says which key it came from and what works."""
    try:
        return model_state(safeio.load_checkpoint(path))
    except WeightsError as error:
        raise WeightsError(
            f"train.init=file:{path}: {error}; give a {model_name} state_dict saved with "
            "torch.save(model.state_dict(), PATH), a Lightning .ckpt, or a .safetensors file"
        ) from None


def _run_init_state(run_dir: str, model_name: str) -> dict[str, Any]:
    """The model weights of an earlier run's best checkpoint; a run of another architecture is refused by
    name (its tensors could never fit)."""
    checkpoint = safeio.load_checkpoint(run_checkpoint_path(run_dir))
    meta = checkpoint.get("cnnlab")
    trained = meta.get("model") if isinstance(meta, dict) else None
    if isinstance(trained, str) and trained != model_name:
        raise ConfigError(
            f"train.init=run:{run_dir} trained model {cfg.short(trained, 60)}, not {model_name!r}; set "
            f"model.name={trained} or init from a run of {model_name}"
        )
    return model_state(checkpoint)


def _shapes(state: dict[str, Any], model: nn.Module) -> list[str]:
    """What the init weights have to be adapted to this model: input channels and the head's class count."""
    changes = []
    conv = state.get(f"{model.first_conv_path}.weight")
    if conv is not None and conv.shape[1] != model.get_first_conv().in_channels:
        changes.append(
            f"{model.first_conv_path} adapted from {conv.shape[1]} to "
            f"{model.get_first_conv().in_channels} input channels"
        )
    head = state.get(f"{model.classifier_path}.weight")
    classes = model.get_classifier().out_features
    if head is not None and head.shape[0] != classes:
        changes.append(f"head replaced: {head.shape[0]} → {classes} classes")
    return changes or ["loaded as is"]


def _check_fit_arguments(config: Any, out_dir: Any, tags: Any) -> None:
    """The Python API's arguments, checked before anything runs (a bad tag found after training would lose
    the run's result)."""
    if not isinstance(config, cfg.RunConfig):
        raise ConfigError(
            f"fit takes a RunConfig (cnnlab.config.from_dict({{...}})), got {type(config).__name__}"
        )
    if not isinstance(out_dir, (str, os.PathLike)):
        raise ConfigError(f"fit's out_dir is a folder path, got {type(out_dir).__name__}")
    if tags is None:
        return
    if not isinstance(tags, dict) or not all(isinstance(key, str) for key in tags):
        raise ConfigError(f"fit's tags are a mapping of names to values, got {cfg.short(tags)}")
    try:
        json.dumps(tags, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"fit's tags must be JSON values (result.json holds them): {error}") from None


def _check_resumable(checkpoint: Path, prepared: PreparedRun) -> None:
    """Refuse, before anything runs, a last.ckpt that is crafted, truncated, edited, or another config's."""
    config = prepared.config
    try:
        state = safeio.load_checkpoint(checkpoint)
    except WeightsError as error:
        raise WeightsError(f"{error}; or run without --resume to start this run afresh") from None
    meta = state.get("cnnlab")
    recorded = meta.get("config") if isinstance(meta, dict) else None
    try:
        recorded_id = cfg.from_dict(recorded).run_id if isinstance(recorded, dict) else None
    except CnnlabError:
        recorded_id = None
    if recorded_id != config.run_id:
        saved_by = recorded_id or "no cnnlab config"
        raise runfolder.RunFolderError(
            f"cannot resume from {checkpoint}: it was saved by another run ({saved_by}), not this config "
            f"({config.run_id}); run without --resume to start this run afresh"
        )
    problem = _resume_state_problem(state, prepared)
    if problem:
        raise WeightsError(
            f"cannot resume from {checkpoint}: {problem}; the file was edited or not written by cnnlab "
            "train: run without --resume to start this run afresh"
        )
    _check_best_checkpoint(checkpoint.with_name(runfolder.BEST_CHECKPOINT))


def _check_best_checkpoint(best: Path) -> None:
    """A resumed run scores its best.ckpt at the end, and keeps it unless an epoch improves on it: one that
    cannot be read is refused now, not after the remaining epochs have trained."""
    if not best.is_file():
        return
    try:
        safeio.load_checkpoint(best)
    except WeightsError as error:
        raise WeightsError(
            f"cannot resume: {error}; the run's best checkpoint is scored at its end: run without --resume "
            "to start this run afresh"
        ) from None


QUIET_ENV = "CNNLAB_QUIET"  # 1: no progress bar, no per-epoch lines
RESUME_KEYS = ("epoch", "global_step", "state_dict", "loops", "optimizer_states", "lr_schedulers")


def _resume_state_problem(state: dict[str, Any], prepared: PreparedRun) -> str | None:
    """What in a last.ckpt of this config Lightning could not resume from (it would fail mid-run, or train
    on from NaN weights), or None."""
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing:
        return f"it lacks {', '.join(missing)}"
    epoch, epochs = state["epoch"], prepared.config.train.epochs
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= epochs:
        return f"its epoch {cfg.short(epoch, 40)} is not one of this run's {epochs}"
    meta = state["cnnlab"]
    if meta.get("precision") not in PRECISIONS or meta["precision"] == "auto":
        return f"its precision {cfg.short(meta.get('precision'), 40)} is not a precision Lightning trains in"
    return _weights_problem(state["state_dict"], prepared.model)


def _weights_problem(weights: Any, model: nn.Module) -> str | None:
    """A tensor of the model missing, of another shape or not finite in a checkpoint's state_dict, or None."""
    if not isinstance(weights, dict):
        return "its state_dict is not a mapping"
    for key, own in model.state_dict().items():
        stored = weights.get(MODEL_PREFIX + key)
        if not isinstance(stored, torch.Tensor) or stored.shape != own.shape:
            shape = list(stored.shape) if isinstance(stored, torch.Tensor) else "missing"
            return f"its weights do not fit the model ({key}: {shape}, the model has {list(own.shape)})"
        if stored.is_floating_point() and not bool(torch.isfinite(stored).all()):
            return f"its weights hold NaN or infinity ({key})"
    return None


def _write_run_header(out_dir: Path, prepared: PreparedRun, *, fresh: bool) -> None:
    """config.yaml and splits.json; a fresh start clears what an earlier unfinished attempt of cnnlab left."""
    _remove_killed_writes(out_dir)
    if fresh:
        runfolder.clear_run_files(out_dir)
    safeio.atomic_write_text(out_dir / runfolder.CONFIG_FILE, cfg.dump_yaml(prepared.config))
    excluded = excluded_images(prepared.config.data)
    if excluded:
        write_bad_files(excluded, out_dir / runfolder.BAD_IMAGES_FILE)
    if not prepared.config.data.splits_file:
        prepared.splits.save(out_dir / runfolder.SPLITS_FILE)


def _remove_killed_writes(out_dir: Path) -> None:
    """The temporary files of the run's own files (result.json, config.yaml, metrics.csv, ...), checkpoints,
    predictions and sample images whose writer was killed mid-write (SIGKILL, a lost machine): never read,
    some as large as a checkpoint, and this process holds the folder's lock."""
    for pattern in (*runfolder.OWN_FILES, f"{runfolder.CHECKPOINTS_DIR}/*.ckpt"):
        for leftover in safeio.temp_files(out_dir / pattern):
            leftover.unlink(missing_ok=True)


def _train(
    prepared: PreparedRun,
    out_dir: Path,
    checkpoint: Path | None,
    recorder: EpochRecorder,
    abandon: threading.Event | None,
    *,
    precision: PrecisionChoice,
    layout: LayoutChoice,
    primary: bool = True,
) -> tuple[str, str | None]:
    config = prepared.config
    train_idx, val_idx = prepared.splits.indices(config.data.split_index)
    data = InMemoryDataModule(
        prepared.train_set.images,
        prepared.train_set.labels,
        train_idx,
        val_idx,
        data=config.data,
        mean=prepared.mean,
        std=prepared.std,
        seed=config.train.seed,
        channels_last=layout.channels_last,
    )
    model = prepared.model.to(memory_format=torch.channels_last) if layout.channels_last else prepared.model
    if config.train.test_every_epoch:
        recorder.tester = _epoch_tester(prepared)
    optim = config.optim
    if optim.lr == "auto":
        recorder.lr_found = _find_lr(
            prepared, model, data, out_dir, precision=precision.precision, primary=primary
        )
        optim = dataclasses.replace(optim, lr=recorder.lr_found.lr)
    system = ClassifierSystem(
        model,
        num_classes=len(prepared.train_set.class_names),
        optim=optim,
        backbone_lr_mult=config.train.backbone_lr_mult,
        compile=config.train.compile,
    )
    # precision and layout are kept in the checkpoint: a resumed run trains as it started (never probed again)
    system.extra_checkpoint = {
        **_checkpoint_meta(prepared),
        "precision": precision.precision,
        "channels_last": layout.channels_last,
    }
    if _accelerator(config) == "cpu":
        keep_freed_memory()  # no page faults per step (benchmarks/RESULTS.md)
    try:
        with _quiet_lightning():
            trainer = _build_trainer(
                config, out_dir, recorder, abandon, has_val=len(val_idx) > 0, precision=precision.precision
            )
            trainer.fit(system, datamodule=data, ckpt_path=checkpoint)
    except RunDiverged as diverged:
        return runfolder.DIVERGED, str(diverged)
    except RunAbandoned:
        raise
    except Exception as error:  # a training crash is recorded as a failed run; the study goes on
        if disk_full_error(error) is not None:  # torch and Lightning wrap it in their own errors
            raise  # not a failed run: _full_disk_stops_the_run makes it DiskFull
        if primary:  # rank zero alone writes into the run folder (when it is still there)
            runfolder.check_still_held(out_dir)
            safeio.atomic_write_text(out_dir / runfolder.ERROR_LOG, traceback.format_exc())
        return runfolder.FAILED, _failure_reason(error, config.data)  # error.log has the traceback
    return runfolder.COMPLETED, None


def _failure_reason(error: Exception, data: cfg.DataConfig) -> str:
    """The error in one line; one that ran out of memory starts with the keys that size a batch."""
    reason = f"{type(error).__name__}: {error}"
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(error):
        reason = (
            f"out of memory at data.batch_size={data.batch_size}, data.eval_batch_size={data.eval_batch_size}"
            f"{f', data.image_size={data.image_size}' if data.image_size else ''}: lower them; {reason}"
        )
    return one_line(reason, limit=500)


def _epoch_tester(prepared: PreparedRun) -> EpochTester:
    """train.test_every_epoch: the test split, scored every epoch for the curves (never for selection)."""
    test_set = load_split(prepared.config.data, "test")
    return EpochTester(
        test_set.images,
        test_set.labels,
        mean=prepared.mean,
        std=prepared.std,
        batch_size=prepared.config.data.eval_batch_size,
        class_names=prepared.train_set.class_names,
    )


def _find_lr(
    prepared: PreparedRun,
    model: nn.Module,
    data: InMemoryDataModule,
    out_dir: Path,
    *,
    precision: str,
    primary: bool,
) -> FoundRate:
    """optim.lr: auto: the finder's rate, printed and noted in config.yaml (whose optim.lr stays `auto`, the
    rule every run of the configuration shares: it is what the run id hashes)."""
    config = prepared.config  # one process: check_trainer_options refused optim.lr=auto with DDP
    steps = -(-len(prepared.splits.indices(config.data.split_index)[0]) // config.data.batch_size)
    with _quiet_lightning():
        found = find_lr(
            ClassifierSystem,
            model,
            data,
            optim=config.optim,
            seed=config.train.seed,
            accelerator=_accelerator(config),
            precision=precision,  # the run's own choice
            steps_per_epoch=steps,
            show_progress=_progress_bar(),
            num_classes=len(prepared.train_set.class_names),
            backbone_lr_mult=config.train.backbone_lr_mult,
        )
    if primary:
        print(found.line(), flush=True)
        note = f"# {found.line()}; the run trained with optim.lr {found.lr!r}\n"
        safeio.atomic_write_text(out_dir / runfolder.CONFIG_FILE, cfg.dump_yaml(config) + note)
    return found


def _build_trainer(
    config: cfg.RunConfig,
    out_dir: Path,
    recorder: EpochRecorder,
    abandon: threading.Event | None,
    *,
    has_val: bool,
    precision: str,
) -> pl.Trainer:
    # Two callbacks: Lightning's save_last refreshes last.ckpt only in epochs that improved the best one.
    folder = out_dir / runfolder.CHECKPOINTS_DIR
    best = ModelCheckpoint(
        dirpath=folder,
        filename="best",
        monitor="val_acc" if has_val else None,
        mode="max",
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    last = ModelCheckpoint(
        dirpath=folder, filename="last", save_on_train_epoch_end=True, enable_version_counter=False
    )
    callbacks: list[pl.Callback] = [
        AbandonWatch(abandon),  # first: a lost claim stops the run before anything more is written
        EpochSeeder(config.train.seed),
        recorder,
        best,
        last,
        DivergenceGuard(check_every=1 if _accelerator(config) == "cpu" else 25),
        LearningRateMonitor(logging_interval="epoch"),  # lr-<Optimizer> scalars in TensorBoard
    ]
    if config.train.finetune != "full":
        unfreeze = config.train.unfreeze_epoch if config.train.finetune == "gradual" else None
        callbacks.append(BackboneFreeze(unfreeze))
    if config.train.ema is not None:  # validation and every checkpoint's state_dict see the average
        callbacks.append(EMAWeightAveraging(decay=config.train.ema))
    if config.train.early_stopping and has_val:
        callbacks.append(EarlyStopping(monitor="val_acc", mode="max", patience=config.train.early_stopping))
    return pl.Trainer(
        max_epochs=config.train.epochs,
        accelerator=_accelerator(config),
        devices=_devices(config.train.devices),
        num_nodes=config.train.num_nodes,
        strategy=config.train.strategy,
        precision=precision,
        logger=TensorBoardLogger(
            out_dir, name=runfolder.TENSORBOARD_DIR, version="", default_hp_metric=False
        ),
        callbacks=callbacks,
        plugins=[SafeCheckpointIO()],
        default_root_dir=out_dir,
        enable_progress_bar=_progress_bar(),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if has_val else 0,
        gradient_clip_val=config.optim.grad_clip,
        benchmark=_accelerator(config) == "cuda",
        log_every_n_steps=50,
    )


def _accelerator(config: cfg.RunConfig) -> str:
    if config.train.accelerator != "auto":
        return "cuda" if config.train.accelerator == "gpu" else config.train.accelerator
    return "cuda" if torch.cuda.is_available() else "cpu"


def _devices(devices: str) -> int | str:
    return int(devices) if devices.isdigit() else devices


def speed_choices(prepared: PreparedRun, checkpoint: Path | None) -> tuple[LayoutChoice, PrecisionChoice]:
    """train.channels_last and train.precision resolved for this run on this machine (cnnlab.train.layout,
    cnnlab.train.precision): as configured, as the checkpoint of a resumed run records, or `auto`'s choice (a
    short probe on a CPU, cached per machine). The precision probe runs in the chosen layout."""
    config = prepared.config
    meta: Any = safeio.load_checkpoint(checkpoint).get("cnnlab") if checkpoint is not None else None
    meta = meta if isinstance(meta, dict) else {}
    side = config.data.image_size
    target = ProbeTarget(
        accelerator=_accelerator(config),
        processes=run_ranks(config).world_size,
        model=prepared.model,
        model_key=f"{config.model.name} {sorted(prepared.model_hparams.items())}",
        input_shape=(prepared.model_hparams["in_chans"], side, side),
        num_classes=len(prepared.train_set.class_names),
        batch_size=config.data.batch_size,
        run_images=config.train.epochs * len(prepared.splits.indices(config.data.split_index)[0]),
    )
    resumed_layout = meta.get("channels_last")
    layout = choose_layout(
        config.train.channels_last,
        target,
        resumed_with=resumed_layout if isinstance(resumed_layout, bool) else None,
    )
    precision = choose_precision(
        config.train.precision,
        target,
        channels_last=layout.channels_last,
        resumed_with=meta.get("precision"),
    )
    return layout, precision


def _progress_bar() -> bool:
    """A progress bar on a terminal; per-epoch lines only in CI and logs (or with CNNLAB_QUIET set)."""
    return sys.stdout.isatty() and not _quiet()


def _quiet() -> bool:
    """`$CNNLAB_QUIET`: no progress bar and no per-epoch lines (tests, benchmarks)."""
    return cfg.env_switch(QUIET_ENV, "print no progress bar and no per-epoch lines")


class _quiet_lightning:
    """Silence Lightning's start-up banners and advice; warnings that matter still reach the run's log."""

    def __enter__(self) -> None:
        self._levels = {}
        for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            logger.setLevel(logging.WARNING)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", module="lightning")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")

    def __exit__(self, *exc: Any) -> None:
        self._warnings.__exit__(*exc)
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)


def _checkpoint_meta(prepared: PreparedRun) -> dict[str, Any]:
    """What `load_trained_model`, evaluate, predict and export need to rebuild and feed the model."""
    return {
        "model": prepared.config.model.name,
        "model_hparams": prepared.model_hparams,
        "config": cfg.to_dict(prepared.config),
        "class_names": list(prepared.train_set.class_names),
        "image_size": prepared.config.data.image_size,
        "in_chans": prepared.model_hparams["in_chans"],
        "mean": list(prepared.mean),
        "std": list(prepared.std),
    }


def _summarize(
    prepared: PreparedRun,
    out_dir: Path,
    status: str,
    reason: str | None,
    recorder: EpochRecorder,
    wall: float,
    tags: dict[str, Any] | None,
    choices: tuple[LayoutChoice, PrecisionChoice],
    *,
    evaluate: bool = True,
) -> dict[str, Any]:
    config = prepared.config
    layout, precision = choices
    rows = recorder.rows
    summary: dict[str, Any] = {
        "run_id": prepared.run_id,
        "status": status,
        "reason": reason,
        "model": config.model.name,
        "dataset": config.data.name,
        "class_names": list(prepared.train_set.class_names),
        "epochs_run": len(rows),
        "best": _best_row(rows),
        "last": _last_row(rows),
        "test": None,
        "per_class_accuracy": None,
    }
    if evaluate:
        summary.update(_evaluate_best(prepared, out_dir, precision.precision))
    summary["recipe"] = config.optim.recipe
    found = getattr(recorder, "lr_found", None)
    summary["lr_finder"] = dataclasses.asdict(found) if found is not None else None
    if status == runfolder.COMPLETED:
        best = summary["best"] or {}
        summary["flags"] = learning_flags(rows, best.get("val_acc"), _val_class_counts(prepared))
    summary.update(
        {
            "params": count_params(prepared.model),
            "gflops": prepared.gflops,
            "wall_time_s": round(wall, 3),
            "train_time_s": round(recorder.train_seconds, 3),
            "train_images_per_s": round(recorder.train_images / recorder.train_seconds, 1)
            if recorder.train_seconds
            else None,
            "precision": precision.as_dict(),
            "layout": layout.as_dict(),
            "config": cfg.to_dict(config),
            "tags": dict(tags or {}),
            "provenance": _provenance(config),
        }
    )
    return summary


def _val_class_counts(prepared: PreparedRun) -> list[int]:
    """Images per class in the validation split (the training split when there is none)."""
    _, val_idx = prepared.splits.indices(prepared.config.data.split_index)
    labels = (
        prepared.train_set.labels[torch.as_tensor(val_idx)] if len(val_idx) else prepared.train_set.labels
    )
    return torch.bincount(labels, minlength=len(prepared.train_set.class_names)).tolist()


def _evaluate_best(prepared: PreparedRun, out_dir: Path, precision: str) -> dict[str, Any]:
    """Score the best checkpoint on the validation and test splits and save their probabilities (in bf16
    autocast when the run trained in bf16-mixed, as Lightning validated it)."""
    try:
        trained = load_trained_model(run_checkpoint_path(out_dir))
    except ConfigError:
        return {}
    config = prepared.config
    _, val_idx = prepared.splits.indices(config.data.split_index)
    device = torch.device("cuda" if _accelerator(config) == "cuda" else "cpu")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    result: dict[str, Any] = {}
    if len(val_idx):
        val = take(prepared.train_set, val_idx)
        with autocast:
            scores = _predict_and_save(
                trained.model, val, np.asarray(val_idx), prepared, device, out_dir, "val"
            )
        result["per_class_accuracy"] = scores["per_class_accuracy"]
    if config.train.test:
        test_set = load_split(config.data, "test")
        with autocast:
            scores = _predict_and_save(
                trained.model,
                test_set,
                np.arange(len(test_set.labels)),
                prepared,
                device,
                out_dir,
                "test",
            )
        result["test"] = {"acc": scores["acc"], "loss": scores["loss"]}
        result["per_class_accuracy"] = scores["per_class_accuracy"]
    write_run_images(trained.model, prepared, out_dir, device)  # the report's pictures: images/*.npz
    return result


def _predict_and_save(
    model: nn.Module,
    images: ImageSet,
    indices: np.ndarray,
    prepared: PreparedRun,
    device: torch.device,
    out_dir: Path,
    split: str,
) -> dict[str, Any]:
    probs = predict_probs(
        model,
        images.images,
        mean=prepared.mean,
        std=prepared.std,
        device=device,
        batch_size=prepared.config.data.eval_batch_size,
        tta=prepared.config.train.tta,
    )
    labels = images.labels.numpy()
    runfolder.write_predictions(out_dir, split, probs, labels, indices)
    return score_predictions(probs, labels, prepared.train_set.class_names)


def _best_row(rows: list[dict[str, float]]) -> dict[str, float] | None:
    scored = [row for row in rows if row["val_acc"] == row["val_acc"]]  # NaN-free rows
    if not scored:
        return None
    best = max(scored, key=lambda row: row["val_acc"])  # first maximum, as ModelCheckpoint keeps it
    return {"epoch": best["epoch"], "val_acc": best["val_acc"], "val_loss": best["val_loss"]}


def _last_row(rows: list[dict[str, float]]) -> dict[str, float] | None:
    if not rows:
        return None
    keys = ("epoch", "val_acc", "val_loss", "train_acc", "train_loss")
    return {key: rows[-1][key] for key in keys}


def _provenance(config: cfg.RunConfig) -> dict[str, Any]:
    device = (
        torch.cuda.get_device_name(0) if _accelerator(config) == "cuda" else platform.processor() or "cpu"
    )
    return {
        "seed": config.train.seed,
        "config_hash": cfg.config_hash(config),
        "versions": {
            "cnnlab": cnnlab_version,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "lightning": lightning.__version__,
        },
        "device": device,
        "processes": run_ranks(config).world_size,  # DDP ranks that trained it (1 without DDP)
        "threads": torch.get_num_threads(),
        "hostname": platform.node(),
        "git_commit": _git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
