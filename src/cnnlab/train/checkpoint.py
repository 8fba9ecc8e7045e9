"""Checkpoints of cnnlab runs: finding a run's checkpoint and rebuilding its trained model.

No Lightning here (the trainer's checkpoint I/O plugin is `callbacks.SafeCheckpointIO`): evaluate, predict,
explain and export start without importing it, seconds sooner on two cores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab import config as cfg
from cnnlab import runfolder, safeio
from cnnlab.errors import CnnlabError, ConfigError, WeightsError, first_line
from cnnlab.models import create_model, list_models

MODEL_PREFIX = "model."


@dataclass(frozen=True)
class TrainedModel:
    """A model rebuilt from a cnnlab checkpoint, with what is needed to feed it."""

    model: nn.Module
    meta: dict[str, Any]  # config, class_names, in_chans, image_size, mean, std, model_hparams

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])


def model_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The plain model state_dict inside a cnnlab/Lightning checkpoint, or the mapping itself."""
    if "state_dict" not in checkpoint:
        return checkpoint
    return {
        key[len(MODEL_PREFIX) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(MODEL_PREFIX)
    }


def run_checkpoint_path(run_dir: str | Path) -> Path:
    """The checkpoint a finished run hands on: best by validation accuracy, else last."""
    run_dir = Path(run_dir)
    for name in (runfolder.BEST_CHECKPOINT, runfolder.LAST_CHECKPOINT):
        if runfolder.checkpoint_path(run_dir, name).is_file():
            return runfolder.checkpoint_path(run_dir, name)
    raise ConfigError(f"run directory {run_dir} has no checkpoints/best.ckpt or last.ckpt; train it first")


def load_trained_model(path: str | Path) -> TrainedModel:
    """Rebuild a checkpoint's model; the architecture is looked up in the registry, never imported."""

    path = Path(path)
    if path.is_dir():
        path = run_checkpoint_path(path)
    checkpoint = safeio.load_checkpoint(path)
    meta = checkpoint.get("cnnlab")
    if not isinstance(meta, dict) or "model_hparams" not in meta:
        raise WeightsError(
            f"{path} is not a cnnlab checkpoint (no 'cnnlab' metadata); "
            "pass a checkpoint written by `cnnlab train`"
        )
    return build_trained_model(meta, model_state(checkpoint), source=path)


META_TYPES = {  # what evaluate, predict and export read from a checkpoint's (or manifest's) metadata
    "model": str,
    "model_hparams": dict,
    "class_names": list,
    "in_chans": int,
    "image_size": int,
    "mean": list,
    "std": list,
    "config": dict,
}
MAX_IMAGE_SIZE = 4096  # as data.image_size allows


def build_trained_model(meta: dict[str, Any], state: dict[str, Any], *, source: Path) -> TrainedModel:
    """Check the metadata, rebuild the model from the registry and load `state` into it strictly."""
    check_meta(meta, source)
    _check_registered(meta, source)
    try:
        cfg.from_dict(meta["config"])
    except CnnlabError as error:
        raise WeightsError(
            f"{source}: its metadata does not describe a model cnnlab can build ({error})"
        ) from None
    _check_shapes(meta, state, source)
    model = _build_model(meta, source)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, TypeError) as error:
        first = str(error).strip().splitlines()[0][:200]
        raise WeightsError(
            f"{source}: the weights do not fit its {meta['model']!r} model ({first})"
        ) from None
    return TrainedModel(model=model.eval(), meta=meta)


def _build_model(meta: dict[str, Any], source: Path) -> nn.Module:
    """The model its metadata names, with fresh weights; a model too big to allocate is the checkpoint's
    fault (its model_hparams were edited), not a crash."""
    try:
        return create_model(meta["model"], **meta["model_hparams"])
    except CnnlabError as error:
        raise WeightsError(
            f"{source}: its metadata does not describe a model cnnlab can build ({error})"
        ) from None
    except (RuntimeError, MemoryError, ValueError, TypeError, OverflowError) as error:
        raise WeightsError(
            f"{source}: cannot build its {meta['model']!r} model from model_hparams "
            f"{cfg.short(meta['model_hparams'])} ({type(error).__name__}: {first_line(error)}); the metadata "
            "was edited or the model needs more memory than this machine has"
        ) from None


def _check_shapes(meta: dict[str, Any], state: dict[str, Any], source: Path) -> None:
    """Compare the parameter shapes model_hparams describe with the stored weights on the meta device,
    which allocates nothing: edited hparams (widths=[100000, 100000]) are refused before a terabyte is
    asked for. A model that cannot be built there is left to `_build_model` to report."""
    try:
        with torch.device("meta"):
            expected = create_model(meta["model"], **meta["model_hparams"]).state_dict()
    except Exception:  # noqa: BLE001 (any failure here is reported by the real build)
        return
    for key, tensor in expected.items():
        stored = state.get(key)
        if isinstance(stored, torch.Tensor) and stored.shape != tensor.shape:
            raise WeightsError(
                f"{source}: the weights do not fit the {meta['model']!r} model its model_hparams "
                f"{cfg.short(meta['model_hparams'])} describe ({key}: stored {list(stored.shape)}, the model "
                f"has {list(tensor.shape)}); the metadata was edited or belongs to another checkpoint"
            )


def _check_registered(meta: dict[str, Any], source: Path) -> None:
    """A model from a plugin is built only once the user imported that plugin (`--plugin`): a checkpoint
    naming a model never imports code."""
    if meta["model"] in list_models():
        return
    plugin = (meta["config"].get("model") or {}).get("plugin")
    hint = f"pass --plugin {plugin} (only if you trust that code)" if plugin else "its code is not installed"
    raise WeightsError(f"{source}: model {meta['model']!r} is not in the zoo; it came from a plugin: {hint}")


def check_meta(meta: dict[str, Any], source: Path) -> None:
    """Every key present with its type and range, classes matching the model's outputs, normalisation per
    channel: a finite mean and a positive, finite std for each."""
    for key, kind in META_TYPES.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise WeightsError(
                f"{source}: metadata key {key!r} is missing or not a {kind.__name__}; "
                "the file was edited or not written by cnnlab"
            )
    _check_classes(meta, source)
    _check_input_shape(meta, source)
    _check_statistics(meta, source)


def _check_classes(meta: dict[str, Any], source: Path) -> None:
    names = meta["class_names"]
    if not all(isinstance(name, str) for name in names):
        wrong = next(name for name in names if not isinstance(name, str))
        raise WeightsError(
            f"{source}: metadata class_names must be strings, got {cfg.short(wrong, 40)} "
            f"({type(wrong).__name__}); the file was edited or not written by cnnlab"
        )
    classes = meta["model_hparams"].get("num_classes")
    if classes != len(names):
        raise WeightsError(
            f"{source}: {len(names)} class names for a model with {cfg.short(classes, 40)} outputs"
        )


def _check_input_shape(meta: dict[str, Any], source: Path) -> None:
    channels, side = meta["in_chans"], meta["image_size"]
    if channels < 1 or not 1 <= side <= MAX_IMAGE_SIZE:
        raise WeightsError(
            f"{source}: metadata in_chans={channels}, image_size={side} out of range (in_chans at least 1, "
            f"image_size in [1, {MAX_IMAGE_SIZE}]); the file was edited or not written by cnnlab"
        )
    if meta["model_hparams"].get("in_chans") != channels:
        raise WeightsError(f"{source}: input channels, mean and std disagree ({channels} channels)")


def _check_statistics(meta: dict[str, Any], source: Path) -> None:
    channels = meta["in_chans"]
    if len(meta["mean"]) != channels or len(meta["std"]) != channels:
        raise WeightsError(f"{source}: input channels, mean and std disagree ({channels} channels)")
    for key, low_ok in (("mean", True), ("std", False)):
        values = meta[key]
        if not all(_is_finite_number(v) and (low_ok or v > 0) for v in values):
            allowed = "finite numbers" if low_ok else "finite numbers above 0"
            raise WeightsError(
                f"{source}: metadata {key}={cfg.short(values, 80)} must hold {allowed}, one per channel; "
                "the file was edited or not written by cnnlab"
            )


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
