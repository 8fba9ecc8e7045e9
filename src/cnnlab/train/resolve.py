"""The one place a run config is resolved: `cnnlab train` and the study planner both call `resolve_config`,
so a run's id (the hash of the resolved config) is the same whichever of them made it.

Resolved means: the stem and the image side the model is fed (`model.stem: auto` becomes what it chose),
the default recipe's values in every optimizer key the user left unset (`optim.recipe` named; see
`cnnlab.train.recipes`), and every path (folder datasets, data_dir, splits_file, file:/run: inits)
absolute, so any command works from any working directory. Resolving a resolved config changes nothing.
"""

from __future__ import annotations

from pathlib import Path

from cnnlab import config as cfg
from cnnlab.data import native_side
from cnnlab.data.catalog import FOLDER_PREFIX
from cnnlab.errors import ConfigError
from cnnlab.models import load_plugin, model_info, resolve_stem
from cnnlab.train.recipes import recipe_values

PATH_INIT_SCHEMES = ("file", "run")


def resolve_config(config: cfg.RunConfig) -> cfg.RunConfig:
    """The config a run trains with: stem and image size chosen, every path absolute."""
    if config.model.plugin:
        load_plugin(config.model.plugin)
    info = model_info(config.model.name)
    side = native_side(config.data)
    pretrained = is_pretrained(config.train.init)
    stem, fed_side = resolve_stem(info.name, config.model.stem, side, pretrained=pretrained)
    recorded = recorded_stem(config.model.stem, stem)
    return cfg.with_values(
        config,
        {
            "model.stem": recorded,
            "data.image_size": fed_side,
            **_absolute_paths(config),
            **recipe_values(config),  # optim keys, data.augment, backbone rate left unset: the recipe's
        },
    )


def model_switches(model: cfg.ModelConfig) -> dict[str, object]:
    """The run config's model switches, as `create_model` takes them (None: the architecture's default)."""
    return {
        "dropout": model.dropout,
        "norm": model.norm,
        "activation": model.activation,
        "pool": model.pool,
        "blocks": model.blocks,
        "widths": list(model.widths) if model.widths is not None else None,
        "groups": model.groups,
        "width_per_group": model.width_per_group,
    }


def is_pretrained(init: str) -> bool:
    """Weights from ImageNet training (torchvision names or a file): they need torchvision's stem."""
    return init.startswith(("torchvision:", "file:"))


def recorded_stem(option: str, stem: str | None) -> str:
    """The stem choice written to the resolved config: 'auto' becomes what it chose (small or imagenet at
    the recorded data.image_size), so resolving again changes nothing."""
    if option != "auto" or stem is None:
        return option
    return stem


def absolute(path: str, key: str) -> str:
    """A user path made absolute against the working directory (`~` expanded); `key` names it in errors."""
    if "\x00" in path:
        raise ConfigError(f"{key}={cfg.short(path)} holds a NUL character; give a plain path")
    try:
        return str(Path(path).expanduser().absolute())
    except RuntimeError as error:  # ~user of an unknown user
        raise ConfigError(f"{key}={cfg.short(path)}: {error}; give the path without ~") from None


def _absolute_paths(config: cfg.RunConfig) -> dict[str, str]:
    data, train = config.data, config.train
    paths: dict[str, str] = {}
    if data.name.startswith(FOLDER_PREFIX) and data.name[len(FOLDER_PREFIX) :].strip():
        paths["data.name"] = FOLDER_PREFIX + absolute(data.name[len(FOLDER_PREFIX) :], "data.name")
    if data.data_dir:
        paths["data.data_dir"] = absolute(data.data_dir, "data.data_dir")
    if data.splits_file:
        paths["data.splits_file"] = absolute(data.splits_file, "data.splits_file")
    scheme, _, target = train.init.partition(":")
    if scheme in PATH_INIT_SCHEMES and target:
        paths["train.init"] = f"{scheme}:{absolute(target, 'train.init')}"
    return paths
