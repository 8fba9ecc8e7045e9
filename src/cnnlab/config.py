"""Typed run configuration: frozen dataclasses, YAML load/merge/validate. Every error names the key.

A run config has four sections, addressed by dotted keys (`model.name`, `data.batch_size`, `optim.lr`,
`train.epochs`). Files and `--set` overrides hold only the deltas from these defaults.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from cnnlab.errors import ConfigError, close_matches, not_a_file

NORMS = ("batch", "group", "layer", "instance", "none")
ACTIVATIONS = ("relu", "sigmoid", "tanh", "gelu", "leakyrelu", "silu")
CHOICES: dict[str, tuple[str, ...]] = {
    "model.norm": NORMS,
    "model.activation": ACTIVATIONS,
    "model.pool": ("avg", "max"),
    "model.stem": ("auto", "resize", "small", "imagenet"),
    "data.normalize": ("dataset", "weights", "none"),
    "data.bad_images": ("error", "skip"),
    "optim.optimizer": ("sgd", "adam", "adamw"),
    "optim.recipe": ("auto", "cifar-sgd", "torchvision-scratch", "pretrained", "lenet-classic"),
    "optim.schedule": ("none", "multistep", "cosine", "onecycle"),
    "train.finetune": ("full", "linear", "gradual"),
    "train.tta": ("none", "flip"),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which network to build and its regularization switches (None: the architecture's own default)."""

    name: str = "resnet20_cifar"
    dropout: float | None = None  # probability before the classifier / in hidden linear layers
    norm: str | None = None  # batch | group | layer | instance | none
    activation: str | None = None  # relu | sigmoid | tanh | gelu | leakyrelu | silu
    pool: str | None = None  # avg | max (lenet5)
    stem: str = "auto"  # ImageNet-shaped nets: auto | resize (to 224) | small (3x3 stem) | imagenet (as is)
    blocks: int | None = None  # residual blocks per group/stage (CIFAR ResNets and ResNeXts)
    widths: tuple[int, ...] | None = None  # channels per group (cifar ResNets) or of lenet5's two convs
    groups: int | None = None  # ResNeXt cardinality: groups of the 3x3 convolution
    width_per_group: int | None = None  # ResNeXt bottleneck width per group at the first stage
    plugin: str | None = None  # import this module (or `cnnlab.models` entry point) first: your own nets


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which images, how they are split, augmented, normalized and batched."""

    # digits | mnist | fashion-mnist | kmnist | cifar10 | cifar100 | folder:PATH | synthetic
    name: str = "digits"
    data_dir: str | None = None  # searched first for dataset files
    image_size: int | None = None  # square side in pixels; None: the dataset's own
    val_fraction: float = 0.1  # stratified holdout taken from the training split
    folds: int | None = None  # stratified k-fold instead of holdout
    fold: int = 0  # which fold validates when folds is set
    subset: int | None = None  # keep N training images (stratified)
    per_class: int | None = None  # keep N training images per class
    test_subset: int | None = None  # score N test images (stratified, fixed seed: the same for every run)
    classes: tuple[str, ...] | None = None  # keep these classes, re-indexed in this order
    augment: str | None = None  # none | flip | crop | flip+crop | randomresizedcrop; None: the recipe's
    normalize: str = "dataset"  # dataset statistics | pretrained weights' statistics | none
    batch_size: int = 64
    eval_batch_size: int = 1024
    bad_images: str = "error"  # folder datasets: error lists bad files; skip excludes them
    test_fraction: float = 0.2  # folder datasets without a test split: stratified test share
    splits_file: str | None = None  # saved splits to reuse (written by studies)
    background: tuple[int, ...] = (255, 255, 255)  # folder images: RGB (0..255) shown through transparency

    @property
    def split_index(self) -> int:
        """Which of the saved validation sets this run validates on: its fold, or the one holdout set."""
        return self.fold if self.folds else 0


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer, learning-rate schedule and loss options."""

    # None: filled by the recipe (cnnlab.train.recipes, docs/training.md "Default recipes")
    recipe: str = "auto"  # auto (by model and init) | a name from CHOICES["optim.recipe"]
    optimizer: str | None = None  # sgd | adam | adamw
    lr: float | str | None = None  # peak learning rate, or "auto": Lightning's learning-rate finder
    momentum: float | None = None  # sgd only
    nesterov: bool | None = None  # sgd only
    weight_decay: float | None = None
    schedule: str | None = None  # none | multistep | cosine | onecycle
    warmup_epochs: float | None = None  # linear warmup from lr/10, in epochs (fractions allowed)
    milestones: tuple[int, ...] = ()  # multistep: epochs at which lr is multiplied by gamma
    gamma: float = 0.1
    label_smoothing: float = 0.0
    grad_clip: float | None = None  # max gradient norm


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Epochs, seed, initialisation / transfer, devices and speed switches."""

    epochs: int = 10
    seed: int = 0
    init: str = "scratch"  # scratch | torchvision:<WEIGHTS> | file:<path> | run:<run dir>
    finetune: str = "full"  # full | linear | gradual
    unfreeze_epoch: int = 1  # gradual: epoch at which the backbone starts training
    backbone_lr_mult: float | None = None  # backbone lr = lr * this (discriminative rates); None: recipe's
    early_stopping: int | None = None  # patience in epochs on validation accuracy
    test: bool = True  # evaluate the test split at the end
    test_every_epoch: bool = False  # also score the test split every epoch (curves only, never selection)
    ema: float | None = None  # decay of an exponential moving average of the weights (Lightning's
    #   EMAWeightAveraging, updated every step): validation, checkpoints and scores use the average
    tta: str = "none"  # none | flip: final val/test scores and predict average the image and its mirror
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"  # auto: bf16 on CUDA, and on a CPU where it measured faster (train/precision.py)
    channels_last: bool | str = "auto"  # auto: NCHW where a probe measured it faster (train/layout.py)
    compile: bool = False  # torch.compile the model


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One fully resolved run."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()

    @functools.cached_property
    def run_id(self) -> str:
        """The run's identity, `config_hash(self)`, computed once per config object."""
        return config_hash(self)


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
}


def all_keys() -> list[str]:
    """Every dotted key a run config accepts."""
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


MAX_YAML_VALUES = 100_000  # a config or spec is a few hundred values; aliases of aliases can make billions


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last silently),
    an alias inside the node it names (a structure that never ends) and a document whose aliases expand to
    more than MAX_YAML_VALUES values (a "billion laughs" file that would fill the memory when read)."""

    def construct_document(self, node: yaml.Node) -> Any:
        _expanded_values(node, {}, set())
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise ConfigError(f"key {short(key)} is given twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_12_scalars(loader: type[yaml.SafeLoader]) -> None:
    """Integers and booleans read as YAML 1.2 does: `010` is ten (YAML 1.1: eight), `1:30` and `0x10` are
    text (1.1: 90 and 16), and only true/false are booleans (1.1 also turns the class names yes, no, on and
    off into booleans). Config fields still take "yes"/"no" for a boolean (`_coerce_scalar`)."""
    replaced = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:bool")
    loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in replaced]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    loader.add_implicit_resolver(replaced[0], re.compile(r"^[-+]?[0-9][0-9_]*$"), list("-+0123456789"))
    loader.add_constructor(replaced[0], lambda self, node: int(self.construct_scalar(node).replace("_", "")))
    loader.add_implicit_resolver(
        replaced[1], re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
    )


_yaml_12_scalars(_StrictLoader)


def _expanded_values(node: yaml.Node, counted: dict[int, int], open_nodes: set[int]) -> int:
    """How many values `node` holds with every alias written out; ConfigError past MAX_YAML_VALUES or on a
    node that holds itself. Each node is counted once (`counted`), so the check is linear in the file."""
    if id(node) in counted:
        return counted[id(node)]
    if id(node) in open_nodes:
        line = node.start_mark.line + 1
        raise ConfigError(f"the alias at line {line} refers to a value that holds it; write the value out")
    open_nodes.add(id(node))
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    total = 1 + sum(_expanded_values(child, counted, open_nodes) for child in children)
    open_nodes.discard(id(node))
    if total > MAX_YAML_VALUES:
        raise ConfigError(
            f"its aliases expand to more than {MAX_YAML_VALUES:,} values (line {node.start_mark.line + 1}); "
            "write the values out instead of aliases of aliases"
        )
    counted[id(node)] = total
    return total


def parse_yaml(text: str, where: str) -> Any:
    """Parse YAML text strictly (duplicate keys refused); errors name `where` and the line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    except RecursionError:
        raise ConfigError(f"{where}: values nested too deep to read; flatten the file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        problem = str(getattr(error, "problem", error))
        hint = "; indent with spaces, not tabs" if "'\\t'" in problem else ""
        raise ConfigError(f"{where}: invalid YAML{line}: {problem}{hint}") from None


def load_yaml(path: str | Path, kind: str = "config file") -> dict[str, Any]:
    """Read a YAML mapping; a missing, unreadable or non-UTF-8 file or bad YAML is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(not_a_file(path, kind, "a YAML file", quoted(path)))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{kind} {quoted(path)} is not UTF-8 text (byte {error.start}); save it as UTF-8"
        ) from None
    except OSError as error:
        raise ConfigError(f"cannot read {kind} {quoted(path)}: {error.strerror}") from None
    data = parse_yaml(text, quoted(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{quoted(path)}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def parse_assignment(text: str) -> tuple[str, Any]:
    """`key=value` from `--set`; the value is parsed as YAML (so 0.1, true, [1, 2] are typed). An empty
    value is refused (`--set optim.lr=$LR` with LR unset would otherwise train at the default): `null`
    asks for the default."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {short(text)}")
    if not raw.strip():
        raise ConfigError(
            f"--set {short(text)} gives no value; write one after '=' ({key.strip()}=null for the default)"
        )
    try:
        value = yaml.load(raw, Loader=_StrictLoader)  # noqa: S506
    except (yaml.YAMLError, ConfigError, RecursionError):
        value = raw
    return key.strip(), value


def apply_assignments(tree: Mapping[str, Any], assignments: Sequence[str]) -> dict[str, Any]:
    """`--set KEY=VALUE`s merged over `tree` one after another: a later one wins where they overlap, and
    keys they do not share are all kept (`--set optim={lr: 0.1} --set optim={momentum: 0.5}` sets both)."""
    merged = merge({}, tree)
    for text in assignments:
        key, value = parse_assignment(text)
        if value is None and _takes_no_null(key):
            _unset_dotted(merged, key)  # `--set train.epochs=null`: the key's default, whatever set it before
        else:
            merged = merge(merged, {key: value})
    return merged


def _takes_no_null(key: str) -> bool:
    """A known key whose type has no null (model.name, train.epochs): null for it asks for its default."""
    section, _, name = key.partition(".")
    cls = SECTIONS.get(section)
    if cls is None or name not in {field.name for field in dataclasses.fields(cls)}:
        return False
    return type(None) not in typing.get_args(typing.get_type_hints(cls)[name])


def _unset_dotted(tree: dict[str, Any], key: str) -> None:
    """Remove `a.b` from a nested dict, if it is there."""
    *parents, leaf = key.split(".")
    node: Any = tree
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(leaf, None)


def short(value: Any, limit: int = 80) -> str:
    """repr(value) for a one-line message: control characters escaped, long values cut in the middle."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit // 2]}...{text[-limit // 4 :]} ({len(text)} chars)"


def quoted(path: str | Path) -> str:
    """A file name for a one-line message (newlines, tabs and undecodable bytes escaped)."""
    return short(str(path), 160)


SWITCH_ON, SWITCH_OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
SWITCH_WORDS = dict.fromkeys(SWITCH_ON, True) | dict.fromkeys(SWITCH_OFF, False)


def env_switch(name: str, on_means: str) -> bool:
    """A yes/no environment variable (1/true/yes/on or 0/false/no/off, any case; unset or empty is off); any
    other value is a ConfigError naming it and `on_means` (what 1 does), never read as either."""
    given = os.environ.get(name, "")
    value = given.strip().lower()
    if value not in SWITCH_WORDS and value:
        raise ConfigError(
            f"${name}={quoted(given)} is not understood; set it to 1 to {on_means}, or 0 (or unset it) not to"
        )
    return SWITCH_WORDS.get(value, False)


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b` in a nested dict, creating sections as needed."""
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {key!r}: {part!r} is a value, not a section")
        node = child
    node[leaf] = value


def merge(base: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge `delta` over `base` into nested sections (dotted keys of both are expanded). A key that one
    of them gives twice (`model.name` beside `model: {name: ...}`) is a ConfigError."""
    _check_unique_leaves(base)
    _check_unique_leaves(delta)
    return _apply(_apply({}, base), delta)


def _apply(base: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    merged = json.loads(json.dumps(base, default=list))
    for key, value in delta.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        elif "." in key:
            set_dotted(merged, key, value)
        else:
            merged[key] = json.loads(json.dumps(value, default=list)) if isinstance(value, Mapping) else value
    return merged


def _check_unique_leaves(tree: Mapping[str, Any], prefix: str = "") -> set[str]:
    leaves: set[str] = set()
    for key, value in tree.items():
        if not isinstance(key, str):
            raise ConfigError(f"config key {short(key)} under {prefix or 'the top level'!r} is not a name")
        dotted = f"{prefix}{key}"
        found = (
            _check_unique_leaves(value, f"{dotted}.") if isinstance(value, Mapping) and value else {dotted}
        )
        twice = leaves & found
        if twice:
            raise ConfigError(f"config key {sorted(twice)[0]!r} is given twice (dotted and nested); keep one")
        leaves |= found
    return leaves


def from_dict(tree: Mapping[str, Any]) -> RunConfig:
    """Validate a nested (or dotted) mapping into a RunConfig; unknown keys and bad values name the key."""
    if not isinstance(tree, Mapping):
        raise ConfigError(f"a run config is a mapping of config keys, got {type(tree).__name__}")
    tree = merge({}, tree)
    sections = {}
    for section, values in tree.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown config section {section!r}{close_matches(section, SECTIONS)}; "
                f"allowed: {', '.join(SECTIONS)}"
            )
        if values is None:  # `optim:` with every key under it commented out: no deltas
            values = {}
        if not isinstance(values, Mapping):
            raise ConfigError(f"config section {section!r} must be a mapping of keys, got {short(values)}")
        sections[section] = _build_section(section, SECTIONS[section], values)
    config = RunConfig(**sections)
    check_ranges(config)
    return config


def to_dict(config: RunConfig) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), suitable for YAML and JSON."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def replace(config: RunConfig, **dotted: Any) -> RunConfig:
    """A copy with dotted keys replaced, e.g. replace(cfg, **{"train.epochs": 1}); each value is checked."""
    updated = with_values(config, {key: coerce_key(key, value) for key, value in dotted.items()})
    check_ranges(updated)
    return updated


def with_values(config: RunConfig, values: Mapping[str, Any]) -> RunConfig:
    """A copy with already-checked values (from `coerce_key`) at dotted keys: a nested `dataclasses.replace`,
    no dict round trip and no second check (`check_ranges` checks a combination of checked values)."""
    by_section: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, _, name = key.partition(".")
        by_section.setdefault(section, {})[name] = value
    sections = {
        section: dataclasses.replace(getattr(config, section), **fields)
        for section, fields in by_section.items()
    }
    return dataclasses.replace(config, **sections)


def coerce_key(key: str, value: Any) -> Any:
    """One dotted key's value converted to its field's type and checked against its choices; an unknown key
    or a bad value raises ConfigError naming the key."""
    section, _, name = key.partition(".")
    cls = SECTIONS.get(section)
    if cls is None or not name:
        raise ConfigError(
            f"unknown config key {key!r}{close_matches(key, all_keys())}; keys are dotted, like optim.lr"
        )
    fields = {f.name for f in dataclasses.fields(cls)}
    if name not in fields:
        raise ConfigError(
            f"unknown config key {key!r}{close_matches(key, all_keys())}; "
            f"allowed in {section}: {', '.join(fields)}"
        )
    annotation = typing.get_type_hints(cls)[name]
    if value is None and type(None) not in typing.get_args(annotation):
        default = getattr(cls(), name)
        raise ConfigError(f"{key} cannot be null (empty); give a value, or leave the key out for {default!r}")
    coerced = _coerce(value, annotation, key)
    _check_choice(key, coerced)
    return coerced


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config mapping → dotted keys (`optim.lr`)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_hash(config: RunConfig) -> str:
    """Stable short hash of the resolved config: the run id (docs/architecture.md, "One identity").

    Nothing in it depends on where a study folder lives: a splits file counts by its name (a study's are
    named by the digest of how they were made) and a `run:<dir>` init by the source run's folder name (its
    run id), so a study folder moved or copied elsewhere keeps every run id.
    """
    tree = to_dict(config)
    if tree["data"]["splits_file"]:
        tree["data"]["splits_file"] = Path(tree["data"]["splits_file"]).name
    scheme, _, target = tree["train"]["init"].partition(":")
    if scheme == "run" and target:
        tree["train"]["init"] = f"run:{Path(target).name}"
    canonical = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def dump_yaml(config: RunConfig) -> str:
    """The resolved config as YAML text (what `config.yaml` holds)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def _build_section(section: str, cls: type, values: Mapping[str, Any]) -> Any:
    return cls(**{name: coerce_key(f"{section}.{name}", value) for name, value in values.items()})


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the field's type, or raise naming the key and the expected type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for kind in inner[1:]:  # `float | str` (optim.lr), `bool | str`: the type first, else the word "auto"
            try:
                return _coerce(value, inner[0], key)
            except ConfigError:
                if inner[0] in (int, float) and _is_number(value):
                    raise  # a number where a number goes, refused (not finite): that is the message
                if not isinstance(value, str):
                    raise ConfigError(
                        f"{key} must be {_EXPECTED[inner[0]]}, or auto; got {short(value)}"
                    ) from None
                return _coerce(value, kind, key)
        return _coerce(value, inner[0], key)
    if origin is tuple:
        items = [value] if isinstance(value, (str, int, float)) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {short(value)}")
        return tuple(_coerce(item, args[0], key) for item in items)
    return _coerce_scalar(value, annotation, key)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _coerce_scalar(value: Any, kind: type, key: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        raise ConfigError(f"{key} must be {_EXPECTED[bool]}, got {short(value)}")
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return _finite(float(value), key)
    if kind is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if kind in (int, float) and isinstance(value, str):
        try:
            number = kind(value)
        except ValueError:
            pass
        else:
            return _finite(number, key) if kind is float else number
    raise ConfigError(f"{key} must be {_EXPECTED.get(kind, kind.__name__)}, got {short(value)}")


def _finite(number: float, key: str) -> float:
    if not math.isfinite(number):
        raise ConfigError(f"{key} must be a finite number, got {number!r}")
    return number


def _check_choice(key: str, value: Any) -> None:
    allowed = CHOICES.get(key)
    if allowed is not None and value is not None and value not in allowed:
        raise ConfigError(
            f"{key}={short(value)} is not allowed{close_matches(value, allowed)}; "
            f"allowed: {', '.join(allowed)}"
        )


SEED_LIMIT = 2**32  # numpy's and Lightning's seeds are 32-bit


def _lr_ok(lr: float | str | None) -> bool:
    """optim.lr: unset (the recipe's), a positive number, or "auto" (the learning-rate finder)."""
    if lr is None or isinstance(lr, str):
        return lr in (None, "auto")
    return lr > 0


def check_ranges(config: RunConfig) -> None:
    """Raise ConfigError naming the first key out of its range (some ranges span keys: fold < folds)."""
    data, optim, train = config.data, config.optim, config.train
    checks = [
        ("train.epochs", config.train.epochs >= 1, "at least 1"),
        ("train.seed", 0 <= train.seed < SEED_LIMIT, f"in [0, {SEED_LIMIT})"),
        ("data.image_size", data.image_size is None or 1 <= data.image_size <= 4096, "in [1, 4096]"),
        ("data.subset", data.subset is None or data.subset >= 1, "at least 1"),
        ("data.per_class", data.per_class is None or data.per_class >= 1, "at least 1"),
        ("data.test_subset", data.test_subset is None or data.test_subset >= 1, "at least 1"),
        (
            "data.background",
            len(data.background) == 3 and all(0 <= c <= 255 for c in data.background),
            "three values in 0..255",
        ),
        ("optim.momentum", optim.momentum is None or 0 <= optim.momentum < 1, "in [0, 1)"),
        ("optim.weight_decay", optim.weight_decay is None or optim.weight_decay >= 0, "0 or more"),
        (
            "optim.warmup_epochs",
            optim.warmup_epochs is None or 0 <= optim.warmup_epochs <= train.epochs,
            "in [0, train.epochs]",
        ),
        (
            "optim.milestones",
            all(m >= 1 for m in optim.milestones) and list(optim.milestones) == sorted(set(optim.milestones)),
            "increasing epochs, each at least 1",
        ),
        ("optim.gamma", optim.gamma > 0, "positive"),
        ("optim.label_smoothing", 0 <= optim.label_smoothing < 1, "in [0, 1)"),
        ("optim.grad_clip", optim.grad_clip is None or optim.grad_clip > 0, "positive"),
        ("train.unfreeze_epoch", train.unfreeze_epoch >= 0, "0 or more"),
        ("train.early_stopping", train.early_stopping is None or train.early_stopping >= 1, "at least 1"),
        ("train.num_nodes", train.num_nodes >= 1, "at least 1"),
        ("data.batch_size", config.data.batch_size >= 1, "at least 1"),
        ("data.eval_batch_size", config.data.eval_batch_size >= 1, "at least 1"),
        ("optim.lr", _lr_ok(config.optim.lr), "a positive number or auto (the learning-rate finder)"),
        ("train.channels_last", train.channels_last in (True, False, "auto"), "true, false or auto"),
        ("data.val_fraction", 0 <= config.data.val_fraction < 1, "in [0, 1)"),
        ("data.test_fraction", 0 < config.data.test_fraction < 1, "in (0, 1)"),
        ("model.dropout", config.model.dropout is None or 0 <= config.model.dropout < 1, "in [0, 1)"),
        ("data.folds", config.data.folds is None or config.data.folds >= 2, "at least 2"),
        (
            "data.fold",
            config.data.folds is None or 0 <= config.data.fold < config.data.folds,
            "in [0, folds)",
        ),
        ("train.backbone_lr_mult", (config.train.backbone_lr_mult or 0) >= 0, "0 or more"),
        ("train.ema", config.train.ema is None or 0 < config.train.ema < 1, "in (0, 1), e.g. 0.999"),
    ]
    for key, ok, allowed in checks:
        if not ok:
            section, name = key.split(".")
            value = getattr(getattr(config, section), name)
            raise ConfigError(f"{key}={short(value)} is out of range; it must be {allowed}")
