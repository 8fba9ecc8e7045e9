"""The LightningModule ("system") that trains any zoo model: loss, metrics, optimizer, schedule, freezing."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from cnnlab import config as cfg
from cnnlab.config import OptimConfig
from cnnlab.train.recipes import recipe_values
from cnnlab.train.speed import compiled_forward

BatchNormTypes = (nn.modules.batchnorm._BatchNorm,)
FUSED_DEVICES = ("cpu", "cuda")  # where torch >= 2.4 has fused SGD, Adam and AdamW kernels


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(head parameters, backbone parameters): the head is whatever `get_classifier()` returns."""
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    head = [p for p in model.parameters() if id(p) in head_ids]
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    return head, backbone


def backbone_modules(model: nn.Module) -> list[nn.Module]:
    """Every module of the model that is not part of the classifier head."""
    head = set(model.get_classifier().modules())
    return [m for m in model.modules() if m not in head]


BAR_EVERY = 10  # steps between progress-bar updates of the running loss and accuracy


class ClassifierSystem(pl.LightningModule):
    """Cross-entropy classification of one zoo model; the plain nn.Module stays separate (`self.model`)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        num_classes: int,
        optim: OptimConfig,
        backbone_lr_mult: float,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        # train.compile: a compiled forward beside the plain model (a function, not a submodule, so the
        # checkpoint's state_dict keys do not change)
        self.compiled_forward = compiled_forward(model) if compile else None
        self.optim = optim
        self.backbone_lr_mult = backbone_lr_mult
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=optim.label_smoothing)
        # epoch metrics: updated every step (no per-step self.log, no input checks that sync the device),
        # logged once per epoch
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro", validate_args=False)
        self.val_loss = MeanMetric(nan_strategy="disable")
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro", validate_args=False)
        self.frozen_backbone = False  # set by the fine-tune callbacks; frozen BatchNorm stays in eval mode
        self.extra_checkpoint: dict[str, Any] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.compiled_forward is not None:
            return self.compiled_forward(images)
        return self.model(images)

    def train(self, mode: bool = True) -> ClassifierSystem:
        """Lightning calls train() at every epoch start; a frozen backbone keeps its BatchNorm in eval."""
        super().train(mode)
        if mode and self.frozen_backbone:
            for module in backbone_modules(self.model):
                if isinstance(module, BatchNormTypes):
                    module.eval()
        return self

    def on_train_epoch_start(self) -> None:
        self.train_loss.reset()
        self.train_acc.reset()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = self.loss_fn(logits, labels)
        self.train_loss.update(loss.detach(), weight=len(labels))
        self.train_acc.update(logits.detach(), labels)
        if batch_idx % BAR_EVERY == 0 and self._bar_shown():
            self._show_on_bar(loss, logits, labels)
        if batch_idx + 1 == self.trainer.num_training_batches:
            # logged at the last step, so callbacks reading callback_metrics at epoch end see the values
            self._log_epoch_metrics("train", self.train_loss, self.train_acc)
        return loss

    def _bar_shown(self) -> bool:
        bar = self.trainer.progress_bar_callback
        return bar is not None and getattr(bar, "is_enabled", False)

    def _show_on_bar(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """The batch's loss and accuracy on the progress bar (a terminal only: it costs a host sync)."""
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        self.log_dict({"loss": loss.detach(), "acc": accuracy}, prog_bar=True, logger=False, on_step=True)

    def on_validation_epoch_start(self) -> None:
        self.val_loss.reset()
        self.val_acc.reset()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.val_loss.update(self.loss_fn(logits, labels), weight=len(labels))
        self.val_acc.update(logits, labels)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val", self.val_loss, self.val_acc)

    def _log_epoch_metrics(self, stage: str, loss: MeanMetric, accuracy: MulticlassAccuracy) -> None:
        """Log `<stage>_loss` (mean over images) and `<stage>_acc` once per epoch (synced across ranks)."""
        self.log(f"{stage}_loss", loss.compute(), on_step=False, on_epoch=True)
        self.log(f"{stage}_acc", accuracy.compute(), on_step=False, on_epoch=True)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.model, self.optim, self.backbone_lr_mult)
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = max(1, total_steps // self.trainer.max_epochs)
        scheduler = build_scheduler(optimizer, self.optim, steps_per_epoch, total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cnnlab"] = self.extra_checkpoint


def completed_optim(optim: OptimConfig) -> OptimConfig:
    """An OptimConfig with every key the recipe fills set: a resolved run's is already complete; one built by
    hand (OptimConfig(lr=0.1)) gets the cifar-sgd recipe's values for the keys it left unset."""
    if isinstance(optim.lr, str):
        raise ValueError("optim.lr=auto must be replaced by the rate the finder chose before training")
    values = recipe_values(cfg.RunConfig(optim=optim))
    optim_values = {key.partition(".")[2]: v for key, v in values.items() if key.startswith("optim.")}
    return dataclasses.replace(optim, **optim_values)


def build_optimizer(model: nn.Module, optim: OptimConfig, backbone_lr_mult: float) -> torch.optim.Optimizer:
    """Two parameter groups, head first: the head at `lr`, the backbone at `lr * backbone_lr_mult`.

    The update is torch's fused kernel where the parameters are float32 on the CPU or a CUDA GPU: one pass
    over each tensor instead of torch's default per-tensor loop of several, the same update to rounding,
    3-9x faster (benchmarks/RESULTS.md, "Optimizer update"): an AlexNet's AdamW update took longer than its
    forward and backward on two CPU cores. Half-precision weights (16-true, bf16-true) keep torch's default,
    which updates them in their own precision. A resumed run's optimizer keeps the implementation its
    checkpoint was saved with (torch restores the parameter groups' settings): its epochs stay bitwise."""
    optim = completed_optim(optim)
    head, backbone = split_parameters(model)
    groups = [{"params": head, "lr": optim.lr}]
    if backbone:
        groups.append({"params": backbone, "lr": optim.lr * backbone_lr_mult})
    fused = all(_fusable(p) for p in model.parameters()) or None  # None: torch's own choice
    if optim.optimizer == "sgd":
        return torch.optim.SGD(
            groups,
            lr=optim.lr,
            momentum=optim.momentum,
            nesterov=optim.nesterov and optim.momentum > 0,
            weight_decay=optim.weight_decay,
            fused=fused,
        )
    if optim.optimizer == "adam":
        return torch.optim.Adam(groups, lr=optim.lr, weight_decay=optim.weight_decay, fused=fused)
    return torch.optim.AdamW(groups, lr=optim.lr, weight_decay=optim.weight_decay, fused=fused)


def _fusable(parameter: torch.Tensor) -> bool:
    return parameter.dtype == torch.float32 and parameter.device.type in FUSED_DEVICES


def build_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, steps_per_epoch: int, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step schedule: linear warmup then none/multistep/cosine; onecycle is torch's own."""
    optim = completed_optim(optim)
    if optim.schedule == "onecycle":
        warmup_share = optim.warmup_epochs * steps_per_epoch / total_steps if optim.warmup_epochs else 0.3
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=total_steps,
            pct_start=min(max(warmup_share, 0.01), 0.99),
        )
    warmup_steps = round(optim.warmup_epochs * steps_per_epoch)
    milestone_steps = [m * steps_per_epoch for m in optim.milestones]

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.1 + 0.9 * step / warmup_steps
        if optim.schedule == "cosine":
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if optim.schedule == "multistep":
            return optim.gamma ** sum(step >= m for m in milestone_steps)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
