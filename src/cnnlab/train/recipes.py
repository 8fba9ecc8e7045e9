"""Default recipes: what a run trains with for the keys the user left unset, chosen by situation.

One recipe per situation (docs/training.md, "Default recipes", says where each comes from and what was
measured with it):

- `cifar-sgd`: the hand-written CIFAR-scale nets (and any other net written here or in a plugin);
- `torchvision-scratch`: ImageNet-shaped torchvision nets trained from scratch;
- `pretrained`: any net whose `train.init` is not `scratch` (torchvision:, file: or run: weights);
- `lenet-classic`: `lenet5` (the classic sigmoid LeNet trains only with an adaptive optimizer).

The recipe fills only the keys left unset (None): `optim.optimizer, lr, momentum, nesterov, weight_decay,
schedule, warmup_epochs`, `data.augment` and `train.backbone_lr_mult`; a key the user gave always wins. When
the user picks another optimizer than the recipe's, that optimizer's own defaults (OPTIMIZER_DEFAULTS) fill
its lr, momentum, nesterov and weight decay, so `--optimizer sgd` alone never inherits an Adam learning rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cnnlab import config as cfg
from cnnlab.data.catalog import FOLDER_PREFIX
from cnnlab.models import model_info

# The optimizer-specific keys and their values when the user chose the optimizer but not these.
OPTIMIZER_KEYS = ("optim.lr", "optim.momentum", "optim.nesterov", "optim.weight_decay")
OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    "sgd": {"optim.lr": 0.1, "optim.momentum": 0.9, "optim.nesterov": True, "optim.weight_decay": 5e-4},
    "adam": {"optim.lr": 1e-3, "optim.momentum": 0.9, "optim.nesterov": False, "optim.weight_decay": 0.0},
    "adamw": {"optim.lr": 1e-3, "optim.momentum": 0.9, "optim.nesterov": False, "optim.weight_decay": 0.01},
}
NATURAL_IMAGE_DATASETS = ("cifar10", "cifar100")  # photos: a mirrored image is still the same class
RECIPE_KEYS = (
    "optim.optimizer",
    *OPTIMIZER_KEYS,
    "optim.schedule",
    "optim.warmup_epochs",
    "data.augment",
    "train.backbone_lr_mult",
)


@dataclass(frozen=True)
class Recipe:
    """A named set of values for the recipe keys (data.augment: 'natural' = flip on photos, else none)."""

    name: str
    values: Mapping[str, Any]
    source: str  # where the values come from, for docs/training.md and `describe`


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            "cifar-sgd",
            {
                "optim.optimizer": "sgd",
                **OPTIMIZER_DEFAULTS["sgd"],
                "optim.lr": 0.05,  # He et al.'s 0.1 at batch 128, scaled to batch 64 (Goyal et al. 2017)
                "optim.schedule": "cosine",
                "optim.warmup_epochs": 1.0,
                "data.augment": "natural",
                "train.backbone_lr_mult": 1.0,
            },
            "He et al. 2016 (CIFAR ResNets: SGD 0.1 at batch 128, momentum 0.9, warmup), scaled linearly to "
            "batch 64 (Goyal et al. 2017); Loshchilov & Hutter 2017 (cosine)",
        ),
        Recipe(
            "torchvision-scratch",
            {
                "optim.optimizer": "adamw",
                "optim.lr": 1e-3,
                "optim.momentum": 0.9,
                "optim.nesterov": False,
                "optim.weight_decay": 0.05,
                "optim.schedule": "cosine",
                "optim.warmup_epochs": 1.0,
                "data.augment": "natural",
                "train.backbone_lr_mult": 1.0,
            },
            "Loshchilov & Hutter 2019 (AdamW), Goyal et al. 2017 (linear warmup), timm's adamw recipes",
        ),
        Recipe(
            "pretrained",
            {
                "optim.optimizer": "sgd",
                "optim.lr": 0.01,
                "optim.momentum": 0.9,
                "optim.nesterov": True,
                "optim.weight_decay": 1e-4,
                "optim.schedule": "cosine",
                "optim.warmup_epochs": 0.0,
                "data.augment": "natural",
                "train.backbone_lr_mult": 0.1,
            },
            "PyTorch's transfer-learning tutorial (SGD 0.001, momentum 0.9) for the backbone, the new head "
            "10x faster (Howard & Ruder 2018, discriminative rates)",
        ),
        Recipe(
            "lenet-classic",
            {
                "optim.optimizer": "adam",
                "optim.lr": 0.01,
                "optim.momentum": 0.9,
                "optim.nesterov": False,
                "optim.weight_decay": 0.0,
                "optim.schedule": "cosine",
                "optim.warmup_epochs": 0.0,
                "data.augment": "none",
                "train.backbone_lr_mult": 1.0,
            },
            "Kingma & Ba 2015 (Adam); measured here: sigmoid LeNet with SGD 0.1 stays at chance",
        ),
    )
}
RECIPE_CHOICES = ("auto", *RECIPES)


def situation(config: cfg.RunConfig) -> str:
    """The recipe `optim.recipe: auto` picks for this config's model and init."""
    if config.train.init != "scratch":
        return "pretrained"
    info = model_info(config.model.name)
    if info.family == "lenet":
        return "lenet-classic"
    if info.source == "torchvision":
        return "torchvision-scratch"
    return "cifar-sgd"


def recipe_values(config: cfg.RunConfig) -> dict[str, Any]:
    """The dotted values resolving adds: `optim.recipe` named, and every recipe key left unset filled."""
    name = situation(config) if config.optim.recipe == "auto" else config.optim.recipe
    recipe = RECIPES[name]
    chosen_optimizer = config.optim.optimizer or recipe.values["optim.optimizer"]
    values: dict[str, Any] = {"optim.recipe": name}
    for key in RECIPE_KEYS:
        if _value(config, key) is not None:
            continue
        if key in OPTIMIZER_KEYS and chosen_optimizer != recipe.values["optim.optimizer"]:
            values[key] = OPTIMIZER_DEFAULTS[chosen_optimizer][key]
        elif key == "data.augment":
            values[key] = _augment(recipe.values[key], config.data.name)
        else:
            values[key] = recipe.values[key]
    return values


def describe(config: cfg.RunConfig) -> str:
    """The run's first line: the recipe and the values it trains with, keys that differ marked 'yours'.

    e.g. `recipe: torchvision-scratch (adamw lr 0.001, wd 0.05, warmup 1 epoch, cosine, flip) — set optim.*
    to override`."""
    recipe = RECIPES[config.optim.recipe]
    optim = config.optim
    expected = {**recipe.values, "data.augment": _augment(recipe.values["data.augment"], config.data.name)}
    if optim.optimizer != recipe.values["optim.optimizer"]:
        expected.update(OPTIMIZER_DEFAULTS[optim.optimizer])
    parts = [
        (optim.optimizer, "optim.optimizer"),
        (f"lr {_number(optim.lr)}", "optim.lr"),
        (f"wd {_number(optim.weight_decay)}", "optim.weight_decay"),
    ]
    if optim.optimizer == "sgd":
        momentum = f"momentum {_number(optim.momentum)}{' nesterov' if optim.nesterov else ''}"
        parts.append((momentum, "optim.momentum"))
    if optim.warmup_epochs:
        parts.append((f"warmup {_number(optim.warmup_epochs)} epoch", "optim.warmup_epochs"))
    parts.append((optim.schedule, "optim.schedule"))
    augment = config.data.augment if config.data.augment != "none" else "no augmentation"
    parts.append((augment, "data.augment"))
    if config.train.backbone_lr_mult != 1.0:
        parts.append((f"backbone lr x{_number(config.train.backbone_lr_mult)}", "train.backbone_lr_mult"))
    marks = ["" if _value(config, key) == expected[key] else " [yours]" for _, key in parts]
    shown = ", ".join(text + mark for (text, _), mark in zip(parts, marks))
    return f"recipe: {recipe.name} ({shown}) — set optim.* to override"


def _augment(rule: str, dataset: str) -> str:
    """'natural': flip on photos (folders, CIFAR: flip+crop, the papers' setting), none on glyphs (a mirrored
    digit is another glyph)."""
    if rule != "natural":
        return rule
    if dataset in NATURAL_IMAGE_DATASETS:
        return "flip+crop"
    return "flip" if dataset.startswith(FOLDER_PREFIX) else "none"


def _value(config: cfg.RunConfig, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(config, section), name)


def _number(value: Any) -> str:
    return value if isinstance(value, str) else f"{value:g}"
