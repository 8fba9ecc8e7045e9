"""`optim.lr: auto`: Lightning's learning-rate range test (`Tuner.lr_find`) on the training split.

It trains a copy of the initialised model for up to FINDER_STEPS batches with the learning rate growing
exponentially from MIN_LR to MAX_LR (Smith 2017, "Cyclical Learning Rates", section 3.3) and suggests the
rate where the smoothed loss falls fastest. It runs in its own throwaway Trainer (no checkpoints, logs or
callbacks of the run), seeded by the run's seed, so a config always finds the same rate on the same
machine; the run itself then starts from the untouched initial weights.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from lightning.pytorch.tuner import Tuner
from lightning.pytorch.tuner import lr_finder as lr_finder_module

from cnnlab.config import OptimConfig
from cnnlab.errors import ConfigError

FINDER_STEPS = 100  # Lightning's default number of learning rates tried
MIN_LR = 1e-6
MAX_LR = 1.0
PROBE_LR = 1e-3  # placeholder the optimizer is built with; the finder sets every group's rate itself


@contextlib.contextmanager
def _finder_bar(shown: bool) -> Iterator[None]:
    """Lightning's finder makes its own tqdm bar with no switch, and tqdm reads TQDM_DISABLE only when it is
    imported: hide the bar by handing the finder a tqdm that is disabled."""
    if shown:
        yield
        return
    original = lr_finder_module.tqdm
    lr_finder_module.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        lr_finder_module.tqdm = original


@dataclass(frozen=True)
class FoundRate:
    """What the finder chose and from what: result.json's `lr_finder`."""

    lr: float
    steps: int  # learning rates tried (fewer than FINDER_STEPS when the loss blew up early)
    min_lr: float = MIN_LR
    max_lr: float = MAX_LR

    def line(self) -> str:
        """The run's line saying what the finder chose."""
        return (
            f"optim.lr auto: Lightning's lr finder chose {self.lr:.3g} "
            f"({self.steps} steps from {self.min_lr:g} to {self.max_lr:g})"
        )


def find_lr(
    system_factory: type,
    model: torch.nn.Module,
    datamodule: pl.LightningDataModule,
    *,
    optim: OptimConfig,
    seed: int,
    accelerator: str,
    precision: str,
    steps_per_epoch: int,
    show_progress: bool,
    **system_kwargs: object,
) -> FoundRate:
    """Run the range test on a copy of `model`; the copy is discarded, `model` is not touched. Lightning's
    'Finding best initial lr' bar is shown only where the run shows its own (`show_progress`)."""
    probe_optim = dataclasses.replace(optim, lr=PROBE_LR, warmup_epochs=0.0, schedule="none")
    system = system_factory(copy.deepcopy(model), optim=probe_optim, **system_kwargs)
    epochs = math.ceil(FINDER_STEPS / max(1, steps_per_epoch)) + 1
    torch.manual_seed(seed)  # dropout; the loader seeds its own order from (seed, epoch)
    with tempfile.TemporaryDirectory(prefix="cnnlab-lr-find-") as scratch, _finder_bar(show_progress):
        trainer = pl.Trainer(
            max_epochs=epochs,
            accelerator=accelerator,
            devices=1,
            precision=precision,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            default_root_dir=scratch,
        )
        finder = Tuner(trainer).lr_find(
            system,
            datamodule=datamodule,
            min_lr=MIN_LR,
            max_lr=MAX_LR,
            num_training=FINDER_STEPS,
            update_attr=False,
        )
    suggestion = finder.suggestion() if finder is not None else None
    if suggestion is None or not math.isfinite(suggestion):
        raise ConfigError(
            "optim.lr=auto: the learning-rate finder found no rate (too few training batches for its "
            f"{FINDER_STEPS}-step test, or the loss was never finite); give optim.lr a number"
        )
    return FoundRate(lr=float(suggestion), steps=len(finder.results["lr"]))
