"""`fit(config, out_dir)`: one run, from a config to a finished run directory (docs/architecture.md)."""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from cnnlab import config as cfg
from cnnlab import io
from cnnlab.data import ImageSet, Splits, load_split, make_splits, normalization, take, write_bad_files
from cnnlab.errors import ConfigError
from cnnlab.models import count_flops, count_params, create_model, load_pretrained, model_info, resolve_stem
from cnnlab.train.callbacks import BackboneFreeze, DivergenceGuard, EpochRecorder, EpochSeeder, RunDiverged
from cnnlab.train.checkpoint import SafeCheckpointIO, load_trained_model, model_state, run_checkpoint_path
from cnnlab.train.data_module import InMemoryDataModule
from cnnlab.train.inference import predict_probs, score_predictions
from cnnlab.train.speed import keep_freed_memory
from cnnlab.train.system import ClassifierSystem

RESULT_FILE = "result.json"


@dataclass(frozen=True)
class RunResult:
    """What a run produced: its status, its directory and the contents of result.json."""

    status: str
    out_dir: Path
    summary: dict[str, Any]


@dataclass(frozen=True)
class PreparedRun:
    """Everything resolved before anything is written: data, splits, model and its initial weights."""

    run_id: str  # hash of the config as requested: the run's identity in a study
    config: cfg.RunConfig  # resolved: stem and image size filled in
    train_set: ImageSet
    splits: Splits
    model: nn.Module
    model_hparams: dict[str, Any]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def fit(
    config: cfg.RunConfig, out_dir: str | Path, *, tags: dict[str, Any] | None = None, resume: bool = False
) -> RunResult:
    """Train one run into `out_dir` and return its result; a completed run directory is returned as is.

    Configuration and data errors raise CnnlabError before anything is written. A non-finite loss ends the
    run with status "diverged"; any other exception during training with status "failed" (traceback in
    error.log). `resume` continues from checkpoints/last.ckpt when it exists.
    """
    out_dir = Path(out_dir)
    finished = completed_result(out_dir)
    if finished is not None:
        return finished
    prepared = prepare_run(config)
    checkpoint = _resume_checkpoint(out_dir, prepared.config, resume)
    _write_run_header(out_dir, prepared, fresh=checkpoint is None)
    started = time.perf_counter()
    status, reason, recorder = _train(prepared, out_dir, checkpoint)
    summary = _summarize(prepared, out_dir, status, reason, recorder, time.perf_counter() - started, tags)
    io.atomic_write_json(out_dir / RESULT_FILE, summary)
    return RunResult(status=status, out_dir=out_dir, summary=summary)


def completed_result(out_dir: Path) -> RunResult | None:
    """The result of a run directory whose result.json says completed, else None."""
    path = out_dir / RESULT_FILE
    if not path.is_file():
        return None
    summary = io.read_json(path)
    if summary.get("status") != "completed":
        return None
    return RunResult(status="completed", out_dir=out_dir, summary=summary)


def prepare_run(config: cfg.RunConfig) -> PreparedRun:
    """Resolve the config (stem, image size), load data and splits, build and initialise the model."""
    info = model_info(config.model.name)
    native = load_split(config.data, "train")
    pretrained = config.train.init.startswith("torchvision:")
    native_side = config.data.image_size or native.images.shape[-1]
    stem, side = resolve_stem(info.name, config.model.stem, native_side, pretrained=pretrained)
    recorded_stem = _recorded_stem(config.model.stem, stem, resized=side != native_side)
    resolved = cfg.replace(config, **{"model.stem": recorded_stem, "data.image_size": side})
    train_set = load_split(resolved.data, "train")
    splits = _splits_for(resolved, train_set)
    train_idx, _ = splits.indices(resolved.data.fold if resolved.data.folds else 0)
    mean, std = normalization(train_set.images[torch.as_tensor(train_idx)], resolved.data.normalize)
    hparams = _model_hparams(
        resolved, info, stem, in_chans=train_set.images.shape[1], num_classes=len(train_set.class_names)
    )
    torch.manual_seed(resolved.train.seed)  # weight initialisation is part of the run's seed
    model = create_model(info.name, **hparams)
    _initialise(model, resolved.train.init, info.name)
    return PreparedRun(
        cfg.config_hash(config), resolved, train_set, splits, model, hparams, tuple(mean), tuple(std)
    )


def _recorded_stem(option: str, stem: str | None, *, resized: bool) -> str:
    """The stem choice written to the resolved config: 'auto' becomes what it chose (small or resize)."""
    if option != "auto" or stem is None:
        return option
    if stem == "small":
        return "small"
    return "resize" if resized else option


def _model_hparams(config: cfg.RunConfig, info: Any, stem: str, *, in_chans: int, num_classes: int) -> dict:
    switches = {
        "dropout": config.model.dropout,
        "norm": config.model.norm,
        "activation": config.model.activation,
        "pool": config.model.pool,
        "stem": stem,
    }
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


def _initialise(model: nn.Module, init: str, model_name: str) -> None:
    """Apply `train.init`: scratch | torchvision:<WEIGHTS> | file:<path> | run:<run dir>."""
    from cnnlab.models import torchvision_state_dict

    scheme, _, value = init.partition(":")
    if scheme == "scratch" and not value:
        return
    if scheme == "torchvision" and value:
        state = torchvision_state_dict(model_name, value)
    elif scheme == "file" and value:
        state = model_state(io.load_checkpoint(value))
    elif scheme == "run" and value:
        state = model_state(io.load_checkpoint(run_checkpoint_path(value)))
    else:
        raise ConfigError(
            f"train.init={init!r} is not understood; use scratch, torchvision:<WEIGHTS>, "
            "file:<path> or run:<run dir>"
        )
    load_pretrained(model, state, name=model_name)


def _resume_checkpoint(out_dir: Path, config: cfg.RunConfig, resume: bool) -> Path | None:
    last = out_dir / "checkpoints" / "last.ckpt"
    if not resume or not last.is_file():
        return None
    previous = cfg.from_dict(cfg.load_yaml(out_dir / "config.yaml"))
    if cfg.config_hash(previous) != cfg.config_hash(config):
        raise ConfigError(
            f"cannot resume in {out_dir}: it holds a run with a different config; "
            "use the same config or another --out"
        )
    return last


def _write_run_header(out_dir: Path, prepared: PreparedRun, *, fresh: bool) -> None:
    """config.yaml and splits.json; a fresh start clears what an earlier unfinished attempt left."""
    if fresh:
        for stale in (
            "checkpoints",
            "tensorboard",
            "predictions",
            "metrics.csv",
            RESULT_FILE,
            "error.log",
            "bad_images.txt",
        ):
            target = out_dir / stale
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    io.atomic_write_text(out_dir / "config.yaml", cfg.dump_yaml(prepared.config))
    if prepared.train_set.bad_files:
        write_bad_files(prepared.train_set.bad_files, out_dir / "bad_images.txt")
    if not prepared.config.data.splits_file:
        prepared.splits.save(out_dir / "splits.json")


def _train(
    prepared: PreparedRun, out_dir: Path, checkpoint: Path | None
) -> tuple[str, str | None, EpochRecorder]:
    config = prepared.config
    train_idx, val_idx = prepared.splits.indices(config.data.fold if config.data.folds else 0)
    data = InMemoryDataModule(
        prepared.train_set.images,
        prepared.train_set.labels,
        train_idx,
        val_idx,
        data=config.data,
        mean=prepared.mean,
        std=prepared.std,
        seed=config.train.seed,
        channels_last=config.train.channels_last,
    )
    model = (
        prepared.model.to(memory_format=torch.channels_last) if config.train.channels_last else prepared.model
    )
    system = ClassifierSystem(
        model,
        num_classes=len(prepared.train_set.class_names),
        optim=config.optim,
        backbone_lr_mult=config.train.backbone_lr_mult,
        compile=config.train.compile,
    )
    system.extra_checkpoint = _checkpoint_meta(prepared)
    if _accelerator(config) == "cpu":
        keep_freed_memory()  # no page faults per step (benchmarks/RESULTS.md)
    recorder = EpochRecorder(out_dir / "metrics.csv", echo=not os.environ.get("CNNLAB_QUIET"))
    try:
        with _quiet_lightning():
            trainer = _build_trainer(config, out_dir, recorder, has_val=len(val_idx) > 0)
            trainer.fit(system, datamodule=data, ckpt_path=checkpoint)
    except RunDiverged as diverged:
        return "diverged", str(diverged), recorder
    except Exception as error:  # a training crash is recorded as a failed run; the study goes on
        io.atomic_write_text(out_dir / "error.log", traceback.format_exc())
        return "failed", f"{type(error).__name__}: {error}", recorder
    return "completed", None, recorder


def _build_trainer(
    config: cfg.RunConfig, out_dir: Path, recorder: EpochRecorder, *, has_val: bool
) -> pl.Trainer:
    # Two callbacks: Lightning's save_last refreshes last.ckpt only in epochs that improved the best one.
    folder = out_dir / "checkpoints"
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
        EpochSeeder(config.train.seed),
        recorder,
        best,
        last,
        DivergenceGuard(check_every=1 if _accelerator(config) == "cpu" else 25),
    ]
    if config.train.finetune != "full":
        unfreeze = config.train.unfreeze_epoch if config.train.finetune == "gradual" else None
        callbacks.append(BackboneFreeze(unfreeze))
    if config.train.early_stopping and has_val:
        callbacks.append(EarlyStopping(monitor="val_acc", mode="max", patience=config.train.early_stopping))
    return pl.Trainer(
        max_epochs=config.train.epochs,
        accelerator=_accelerator(config),
        devices=_devices(config.train.devices),
        num_nodes=config.train.num_nodes,
        strategy=config.train.strategy,
        precision=_precision(config),
        logger=TensorBoardLogger(out_dir, name="tensorboard", version="", default_hp_metric=False),
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
        return config.train.accelerator
    return "cuda" if torch.cuda.is_available() else "cpu"


def _devices(devices: str) -> int | str:
    return int(devices) if devices.isdigit() else devices


def _precision(config: cfg.RunConfig) -> str:
    if config.train.precision != "auto":
        return config.train.precision
    return "bf16-mixed" if _accelerator(config) == "cuda" else "32-true"


def _progress_bar() -> bool:
    """A progress bar on a terminal; per-epoch lines only in CI and logs (or with CNNLAB_QUIET set)."""
    return sys.stdout.isatty() and not os.environ.get("CNNLAB_QUIET")


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
) -> dict[str, Any]:
    config = prepared.config
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
    summary.update(_evaluate_best(prepared, out_dir))
    side = config.data.image_size
    in_chans = prepared.model_hparams["in_chans"]
    summary.update(
        {
            "params": count_params(prepared.model),
            "gflops": round(count_flops(prepared.model, (in_chans, side, side)) / 1e9, 6),
            "wall_time_s": round(wall, 3),
            "train_time_s": round(recorder.train_seconds, 3),
            "train_images_per_s": round(recorder.train_images / recorder.train_seconds, 1)
            if recorder.train_seconds
            else None,
            "config": cfg.to_dict(config),
            "tags": dict(tags or {}),
            "provenance": _provenance(config),
        }
    )
    return summary


def _evaluate_best(prepared: PreparedRun, out_dir: Path) -> dict[str, Any]:
    """Score the best checkpoint on the validation and test splits and save their probabilities."""
    try:
        trained = load_trained_model(run_checkpoint_path(out_dir))
    except ConfigError:
        return {}
    config = prepared.config
    _, val_idx = prepared.splits.indices(config.data.fold if config.data.folds else 0)
    device = torch.device("cuda" if _accelerator(config) == "cuda" else "cpu")
    result: dict[str, Any] = {}
    if len(val_idx):
        val = take(prepared.train_set, val_idx)
        scores = _predict_and_save(
            trained.model, val, np.asarray(val_idx), prepared, device, out_dir / "predictions" / "val.npz"
        )
        result["per_class_accuracy"] = scores["per_class_accuracy"]
    if config.train.test:
        test_set = load_split(config.data, "test")
        scores = _predict_and_save(
            trained.model,
            test_set,
            np.arange(len(test_set.labels)),
            prepared,
            device,
            out_dir / "predictions" / "test.npz",
        )
        result["test"] = {"acc": scores["acc"], "loss": scores["loss"]}
        result["per_class_accuracy"] = scores["per_class_accuracy"]
    return result


def _predict_and_save(
    model: nn.Module,
    images: ImageSet,
    indices: np.ndarray,
    prepared: PreparedRun,
    device: torch.device,
    path: Path,
) -> dict[str, Any]:
    probs = predict_probs(
        model,
        images.images,
        mean=prepared.mean,
        std=prepared.std,
        device=device,
        batch_size=prepared.config.data.eval_batch_size,
    )
    labels = images.labels.numpy()
    with io.atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            probs=probs.astype(np.float32),
            labels=labels.astype(np.int64),
            indices=indices.astype(np.int64),
        )
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
    import lightning
    import torchvision

    from cnnlab import __version__

    device = (
        torch.cuda.get_device_name(0) if _accelerator(config) == "cuda" else platform.processor() or "cpu"
    )
    return {
        "seed": config.train.seed,
        "config_hash": cfg.config_hash(config),
        "versions": {
            "cnnlab": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "lightning": lightning.__version__,
        },
        "device": device,
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
