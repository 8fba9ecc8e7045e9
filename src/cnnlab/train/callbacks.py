"""Lightning callbacks of a run: per-epoch seeding, metrics.csv, divergence, lost claims, freezing; and its
checkpoint I/O plugin."""

from __future__ import annotations

import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from cnnlab import runfolder, safeio
from cnnlab.train.inference import predict_probs, score_predictions
from cnnlab.train.system import ClassifierSystem


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch: a pure function of (run seed, epoch), so a resumed run replays it exactly."""
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2**63 - 1)


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O: saves atomically, loads only through `cnnlab.safeio.load_checkpoint`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        runfolder.check_still_held(Path(path).parent.parent)  # run/checkpoints/x.ckpt: the run is still there
        safeio.atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return safeio.load_checkpoint(path)


class RunDiverged(Exception):
    """Raised inside training when the loss stops being finite."""


class RunAbandoned(Exception):
    """Raised inside training when the run's claim passed to another worker: stop, write nothing more."""


class AbandonWatch(pl.Callback):
    """Stops training at the next batch once `event` is set (a study worker found its claim lost)."""

    def __init__(self, event: threading.Event | None) -> None:
        self.event = event

    def _check(self) -> None:
        if self.event is not None and self.event.is_set():
            raise RunAbandoned("the claim on this run passed to another worker")

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._check()

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._check()

    def on_train_epoch_end(self, *args: Any, **kwargs: Any) -> None:
        self._check()


class EpochSeeder(pl.Callback):
    """Seeds torch's global generator (dropout) at every epoch start; the loader seeds its own order."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.manual_seed(epoch_seed(self.seed, trainer.current_epoch))


class EpochRecorder(pl.Callback):
    """Writes metrics.csv (one row per epoch) and prints the per-epoch line users know: on rank zero only
    (every rank keeps the rows, so a checkpoint holds them whichever rank saves it). The metrics are global:
    the epoch metrics are synced over the ranks before they are logged."""

    def __init__(self, run_dir: Path, *, echo: bool, tester: EpochTester | None = None) -> None:
        self.run_dir = run_dir
        self.echo = echo
        self.tester = tester  # train.test_every_epoch: test_acc/test_loss in every row (curves only)
        self.lr_found: Any = None  # optim.lr: auto: the finder's FoundRate, for result.json
        self.rows: list[dict[str, float]] = []
        self.train_seconds = 0.0
        self.train_images = 0
        self._epoch_start = 0.0
        self._train_end = 0.0
        self._lr = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()
        self._train_end = 0.0
        self._lr = trainer.optimizers[0].param_groups[0]["lr"]

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and not self._train_end:
            self._train_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = time.perf_counter()
        self.train_seconds += (self._train_end or now) - self._epoch_start
        self.train_images += trainer.datamodule.train_images_per_epoch  # all ranks together
        metrics = trainer.callback_metrics
        row = {
            "epoch": trainer.current_epoch,
            "lr": self._lr,
            "epoch_time_s": round(now - self._epoch_start, 4),
        }
        for name in ("train_loss", "train_acc", "val_loss", "val_acc"):
            row[name] = float(metrics[name]) if name in metrics else math.nan
        if self.tester is not None:
            row.update(self.tester.score(pl_module))
        self.rows.append(row)
        if not trainer.is_global_zero:
            return  # under DDP rank zero alone writes and prints
        runfolder.check_still_held(self.run_dir)  # before this epoch's metrics and checkpoints are written
        runfolder.write_metrics(self.run_dir, self.rows)
        if self.echo:
            _print_line(trainer, format_epoch_line(row))

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "train_seconds": self.train_seconds, "train_images": self.train_images}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])
        self.train_seconds = state_dict["train_seconds"]
        self.train_images = state_dict["train_images"]


def _print_line(trainer: pl.Trainer, line: str) -> None:
    """A line above the progress bar (through tqdm, so the two never share a line), or plain stdout."""
    bar = trainer.progress_bar_callback
    if bar is not None and getattr(bar, "is_enabled", False):
        bar.print(line)
    else:
        print(line, file=sys.stdout, flush=True)


def format_epoch_line(row: dict[str, float]) -> str:
    """One line per epoch, under 80 columns even with the test scores: accuracy in percent, then loss.

    `Epoch: 3, train 81.2% 0.512, val 80.1% 0.543, test 79.9% 0.551, lr 1e-3, 4.1s` (test only with
    train.test_every_epoch, val only with a validation split)."""
    parts = [f"Epoch: {int(row['epoch'])}"]
    for split in ("train", "val", "test"):
        acc, loss = row.get(f"{split}_acc"), row.get(f"{split}_loss")
        if acc is not None and not (acc != acc and loss != loss):  # both nan: no such split (val_fraction 0)
            parts.append(f"{split} {_percent(row[f'{split}_acc'])} {_loss(row[f'{split}_loss'])}")
    parts.append(f"lr {_short(row['lr'])}")
    seconds = row["epoch_time_s"]
    parts.append(f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s")
    return ", ".join(parts)


def _percent(value: float) -> str:
    if value != value:
        return "nan"
    return "100%" if value >= 0.9995 else f"{100 * value:.1f}%"


def _loss(value: float) -> str:
    """Three decimals below 10; a blown-up loss in short scientific notation (1.3e6)."""
    if value != value or not math.isfinite(value):
        return str(value)
    return f"{value:.3f}" if abs(value) < 10 else (f"{value:.1f}" if abs(value) < 1000 else _short(value))


def _short(value: float) -> str:
    """A number in at most ~6 characters: 0.1, 0.001, 3.2e-4, 1.3e6."""
    if value == 0 or 1e-3 <= abs(value) < 1000:
        return f"{value:.3g}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


class EpochTester:
    """train.test_every_epoch: the test split scored after every epoch, for the learning curves only.

    The scores go into the epoch's row (metrics.csv `test_acc`, `test_loss`, the epoch line) and TensorBoard;
    no checkpoint, early stopping or selection reads them (those monitor val_acc). Every DDP rank scores the
    whole split (the same numbers), so the rows agree whichever rank saves a checkpoint."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        batch_size: int,
        class_names: tuple[str, ...] | list[str],
    ) -> None:
        self.images, self.labels = images, labels.numpy()
        self.mean, self.std, self.batch_size = mean, std, batch_size
        self.class_names = class_names

    def score(self, pl_module: ClassifierSystem) -> dict[str, float]:
        """Score the current weights in eval mode, log them, and leave the module in the mode it was in."""

        training = pl_module.training
        probs = predict_probs(
            pl_module.model,
            self.images,
            mean=self.mean,
            std=self.std,
            device=pl_module.device,
            batch_size=self.batch_size,
        )
        pl_module.train(training)
        scores = score_predictions(probs, self.labels, self.class_names)
        row = {"test_acc": scores["acc"], "test_loss": scores["loss"]}
        for name, value in row.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False)
        return row


class DivergenceGuard(pl.Callback):
    """Stops the run on a non-finite training loss, before a bad checkpoint can be written. Under DDP the
    ranks agree first (a loss that is non-finite on any rank stops every rank at the same step)."""

    def __init__(self, check_every: int) -> None:
        self.check_every = check_every

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        last_batch = batch_idx + 1 == trainer.num_training_batches
        if batch_idx % self.check_every and not last_batch:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        bad = not bool(torch.isfinite(loss))
        if trainer.world_size > 1:
            bad = bool(trainer.strategy.reduce_boolean_decision(bad, all=False))
        if bad:
            raise RunDiverged(
                f"non-finite training loss at epoch {trainer.current_epoch}, step {batch_idx}; "
                f"{divergence_hint(str(trainer.precision))}"
            )


def divergence_hint(precision: str) -> str:
    """How to get past a non-finite loss: float16 weights overflow whatever the rate; else a gentler rate."""
    if precision == "16-true":
        return (
            "train.precision=16-true keeps the weights and optimizer state in float16, whose range "
            "overflows: use 16-mixed, bf16-mixed or 32-true"
        )
    return "lower optim.lr, or add optim.warmup_epochs or optim.grad_clip"


class BackboneFreeze(pl.Callback):
    """`linear` (unfreeze_epoch None) and `gradual` fine-tuning: the backbone trains from unfreeze_epoch.

    Frozen parameters get no gradient (the optimizer skips them); frozen BatchNorm layers stay in eval mode,
    so their running statistics do not move.
    """

    def __init__(self, unfreeze_epoch: int | None) -> None:
        self.unfreeze_epoch = unfreeze_epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: ClassifierSystem) -> None:
        frozen = self.unfreeze_epoch is None or trainer.current_epoch < self.unfreeze_epoch
        head_ids = {id(p) for p in pl_module.model.get_classifier().parameters()}
        for parameter in pl_module.model.parameters():
            if id(parameter) not in head_ids:
                parameter.requires_grad_(not frozen)
        pl_module.frozen_backbone = frozen
        pl_module.train()
