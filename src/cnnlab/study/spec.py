"""Study and tune specs: YAML → typed, validated specs. Every error names the spec key (`grid.optim.lrr`).

A study spec is a base run config, a grid of dotted-key overrides (cartesian product), seeds, a validation
protocol (holdout or `cv: {folds: k}`), and optional `select`, `ensembles` and `stages`. A tune spec is a base
run config, a search `space` and a k-fold protocol. See docs/studies.md for the format.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cnnlab import config as cfg
from cnnlab.errors import ConfigError, close_matches

STUDY_KEYS = (
    "name",
    "description",
    "base",
    "grid",
    "seeds",
    "cv",
    "holdout",
    "split_seed",
    "select",
    "ensembles",
    "stages",
)
STAGE_KEYS = ("name", "base", "grid", "seeds", "cv", "holdout")
SELECT_KEYS = ("metric", "seeds")
SELECT_METRICS = ("best.val_acc", "last.val_acc")
ENSEMBLE_KEYS = ("name", "members", "method")
ENSEMBLE_METHODS = ("mean", "vote")
TUNE_KEYS = (
    "name",
    "description",
    "base",
    "space",
    "cv",
    "seed",
    "split_seed",
    "trials",
    "sampler_seed",
    "pruner",
)
PRUNERS = ("median", "none")
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,99}")  # ensemble names become folder names
STAGE_INIT_PREFIX = "stage:"  # `train.init: stage:<name>` → the matching run of an earlier stage
MAX_RUNS = 10_000  # runs one study may plan: a grid beyond it is a typo or a study to split, not a plan


Values = Mapping[str, Any]  # dotted config key → value already checked by `config.coerce_key`


@dataclasses.dataclass(frozen=True)
class PerModelInit:
    """`train.init` given per model (`{resnext50_32x4d: file:a.pth, densenet121: file:b.pth}`): one weights
    file cannot serve two architectures. The run takes the entry of its `model.name`."""

    inits: tuple[tuple[str, str], ...]  # (model name, init)
    where: str  # the spec key it was given under, for errors

    def for_model(self, model: str) -> str:
        """The init of `model`; a model without an entry is a ConfigError naming the spec key."""
        for name, init in self.inits:
            if name == model:
                return init
        names = ", ".join(name for name, _ in self.inits)
        raise ConfigError(
            f"study spec key {self.where}.train.init has no entry for model {model!r}; "
            f"it gives: {names}; add {model}: <init>"
        )


@dataclasses.dataclass(frozen=True)
class GridAxis:
    """One grid dimension: a dotted config key with values, or a named axis of override sets."""

    key: str
    choices: tuple[tuple[str, Values], ...]  # (label of the choice, typed dotted overrides)


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage: overrides over the study base, its own grid, seeds and validation protocol."""

    name: str
    base: Values  # typed dotted overrides over the study's base
    grid: tuple[GridAxis, ...]
    seeds: tuple[int, ...]
    folds: int | None  # k-fold cross-validation; None: holdout
    val_fraction: float | None  # holdout share; None: the base config's data.val_fraction


@dataclasses.dataclass(frozen=True)
class SelectSpec:
    """Pick the best configuration by mean validation metric, retrain it on all training data, test once."""

    metric: str = "best.val_acc"
    seeds: tuple[int, ...] = ()  # seeds of the retrained run(s); empty: the study's first seed


@dataclasses.dataclass(frozen=True)
class EnsembleSpec:
    """An ensemble over the runs matched by `members` (configuration labels, grid values or key filters)."""

    name: str
    members: tuple[str | Mapping[str, Any], ...]
    method: str = "mean"


@dataclasses.dataclass(frozen=True)
class StudySpec:
    """A validated study spec; `stages` always holds at least one stage (a plain study is stage "main")."""

    name: str
    base: Values  # typed dotted overrides over the config defaults
    stages: tuple[StageSpec, ...]
    split_seed: int
    select: SelectSpec | None
    ensembles: tuple[EnsembleSpec, ...]
    raw: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class SearchParam:
    """One search dimension of `tune`: a float/int range (optionally log-scaled) or a list of choices."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] | None = None


@dataclasses.dataclass(frozen=True)
class TuneSpec:
    """A validated tune spec: base config, search space, k-fold protocol and trial budget."""

    name: str
    base: Mapping[str, Any]
    space: tuple[SearchParam, ...]
    folds: int
    seed: int
    split_seed: int
    trials: int
    sampler_seed: int
    pruner: str
    raw: Mapping[str, Any]


def load_study_spec(path: str | Path, overrides: Sequence[str] = ()) -> StudySpec:
    """Read and validate a study spec file (with `--set` overrides); the default name is the file stem."""
    path = Path(path)
    raw = apply_overrides(_non_empty(cfg.load_yaml(path, "study spec"), path, "study"), overrides)
    return parse_study_spec(raw, default_name=path.stem, base_dir=path.parent)


def load_tune_spec(path: str | Path, overrides: Sequence[str] = ()) -> TuneSpec:
    """Read and validate a tune spec file (with `--set` overrides); the default name is the file stem."""
    path = Path(path)
    raw = apply_overrides(_non_empty(cfg.load_yaml(path, "tune spec"), path, "tune"), overrides)
    return parse_tune_spec(raw, default_name=path.stem, base_dir=path.parent)


def _non_empty(raw: dict[str, Any], path: Path, kind: str) -> dict[str, Any]:
    """An empty spec file is a mistake (a wrong path, an unsaved editor), not a request for the defaults."""
    if not raw:
        raise ConfigError(
            f"{kind} spec {cfg.quoted(path)} is empty; write at least "
            "base: {model.name: ..., data.name: ...} (docs/studies.md)"
        )
    return raw


def apply_overrides(raw: Mapping[str, Any], assignments: Sequence[str]) -> dict[str, Any]:
    """Apply `--set KEY=VALUE` to a spec mapping: `base.data.name=cifar10`, `grid.optim.lr=[0.1]`,
    `stages.<name>.base.data.per_class=50`, `seeds=[0]`, `cv.folds=5`, `space.optim.lr={low: 0.01, high: 1}`.
    """
    tree = _copy(raw)
    for text in assignments:
        key, value = cfg.parse_assignment(text)
        head, _, rest = key.partition(".")
        if head == "stages" and rest:
            name, _, rest = rest.partition(".")
            _set_in(_stage(tree, name, key), rest, value, key)
        else:
            _set_in(tree, key, value, key)
    return tree


def _copy(raw: Mapping[str, Any]) -> dict[str, Any]:
    import copy

    return copy.deepcopy(dict(raw))


def _stage(tree: dict[str, Any], name: str, key: str) -> dict[str, Any]:
    for stage in tree.get("stages") or []:
        if isinstance(stage, dict) and stage.get("name") == name:
            return stage
    names = [stage.get("name") for stage in tree.get("stages") or [] if isinstance(stage, dict)]
    raise ConfigError(
        f"--set {key}: no stage named {name!r}; stages: {', '.join(map(str, names)) or '(none)'}"
    )


def _set_in(tree: dict[str, Any], key: str, value: Any, full_key: str) -> None:
    """`base.<key>` merges into the base; `grid.`/`space.<key>` sets one axis, or a key inside a named grid
    option (`grid.recipe.fine-tune.train.init`); other keys are nested."""
    head, _, rest = key.partition(".")
    if head in ("base", "grid", "space") and rest:
        section = tree.setdefault(head, {})
        if not isinstance(section, dict):
            raise ConfigError(f"--set {full_key}: {head!r} in the spec is not a mapping (a file path?)")
        if head == "base":
            tree[head] = cfg.merge(cfg.merge({}, section), {rest: value})
        elif head == "grid" and "." in rest and rest.split(".")[0] not in cfg.SECTIONS:
            _set_in_option(section, rest, value, full_key)
        else:
            section[rest] = value
        return
    if not rest:
        tree[head] = value
        return
    child = tree.setdefault(head, {})
    if not isinstance(child, dict):
        raise ConfigError(f"--set {full_key}: {head!r} in the spec is a value, not a mapping")
    _set_in(child, rest, value, full_key)


def _set_in_option(grid: dict[str, Any], key: str, value: Any, full_key: str) -> None:
    """`<axis>.<option>[.<config key>]`: replace a named option's overrides, or set one key inside them."""
    axis, _, rest = key.partition(".")
    options = grid.get(axis)
    if not isinstance(options, dict):
        named = [name for name, choices in grid.items() if "." not in str(name) and isinstance(choices, dict)]
        raise ConfigError(
            f"--set {full_key}: the grid has no named axis {axis!r}{close_matches(axis, named)}; "
            f"named axes: {', '.join(map(str, named)) or '(none)'}"
        )
    for option in sorted(map(str, options), key=len, reverse=True):  # longest first: names may hold dots
        if rest == option:
            options[option] = value
            return
        if rest.startswith(f"{option}."):
            current = options[option] if isinstance(options[option], Mapping) else {}
            options[option] = cfg.merge(cfg.merge({}, current), {rest[len(option) + 1 :]: value})
            return
    wanted = rest.split(".")[0]
    raise ConfigError(
        f"--set {full_key}: grid axis {axis!r} has no option {wanted!r}{close_matches(wanted, options)}; "
        f"options: {', '.join(map(str, options))}"
    )


def parse_study_spec(
    raw: Mapping[str, Any], *, default_name: str = "study", base_dir: Path | None = None
) -> StudySpec:
    """Validate a study spec mapping; errors name the offending key."""
    _check_keys(raw, STUDY_KEYS, "study spec")
    base = _parse_base(raw.get("base"), "base", base_dir)
    if "stages" in raw:
        if "grid" in raw:
            raise ConfigError(
                "study spec key 'grid' cannot be used with 'stages'; give each stage its own grid"
            )
        stages = _parse_stages(raw["stages"], raw)
    else:
        stages = (_parse_stage({"name": "main"}, "", raw),)
    _check_size(stages)
    select = _parse_select(raw["select"]) if raw.get("select") is not None else None
    ensembles = _parse_ensembles(raw.get("ensembles") or [])
    spec = StudySpec(
        name=_name(raw, default_name),
        base=base,
        stages=stages,
        split_seed=_integer(raw.get("split_seed", 0), "split_seed"),
        select=select,
        ensembles=ensembles,
        raw=dict(raw),
    )
    _validate_base_sections(spec)
    return spec


def parse_tune_spec(
    raw: Mapping[str, Any], *, default_name: str = "tune", base_dir: Path | None = None
) -> TuneSpec:
    """Validate a tune spec mapping; errors name the offending key."""
    _check_keys(raw, TUNE_KEYS, "tune spec")
    base = _parse_base(raw.get("base"), "base", base_dir)
    if not isinstance(raw.get("space"), Mapping) or not raw["space"]:
        raise ConfigError(
            "tune spec key 'space' must be a non-empty mapping of dotted config key → "
            "{low, high[, log, type]} or a list of choices"
        )
    space = tuple(_parse_search_param(key, value) for key, value in raw["space"].items())
    folds = _parse_cv(raw.get("cv"), "cv")
    if folds is None:
        raise ConfigError(
            "tune spec key 'cv' is required: cv: {folds: k} with k ≥ 2 (the objective is the mean "
            "k-fold validation accuracy)"
        )
    pruner = raw.get("pruner", "median")
    if pruner not in PRUNERS:
        raise ConfigError(f"tune spec pruner={pruner!r} is not allowed; allowed: {', '.join(PRUNERS)}")
    spec = TuneSpec(
        name=_name(raw, default_name, "tune"),
        base=base,
        space=space,
        folds=folds,
        seed=_integer(raw.get("seed", 0), "seed"),
        split_seed=_integer(raw.get("split_seed", 0), "split_seed"),
        trials=_positive(raw.get("trials", 20), "trials"),
        sampler_seed=_integer(raw.get("sampler_seed", 0), "sampler_seed"),
        pruner=pruner,
        raw=dict(raw),
    )
    if isinstance(base.get("train.init"), PerModelInit):
        raise ConfigError(
            "tune spec key base.train.init must be one init (a mapping per model is for studies)"
        )
    return spec


NAME_FORBIDDEN = "/<>|`"  # a name titles reports (Markdown, HTML) and names the queue


def _name(raw: Mapping[str, Any], default: str, kind: str = "study") -> str:
    name = raw.get("name", default)
    if (
        not isinstance(name, str)
        or not name.strip()
        or not name.isprintable()
        or any(char in name for char in NAME_FORBIDDEN)
    ):
        raise ConfigError(
            f"{kind} spec key 'name' must be a non-empty line of text without any of {NAME_FORBIDDEN!r}, "
            f"got {cfg.short(name)}"
        )
    return name.strip()


def _check_keys(raw: Any, allowed: Sequence[str], where: str) -> None:
    """Reject a non-mapping or an unknown key, naming it and the allowed keys."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {raw!r}")
    for key in raw:
        if key not in allowed:
            raise ConfigError(
                f"unknown {where} key {key!r}{close_matches(str(key), allowed)}; "
                f"allowed: {', '.join(allowed)}"
            )


def _parse_base(value: Any, where: str, base_dir: Path | None) -> dict[str, Any]:
    """A run config delta (a mapping, nested or dotted, or the path of a run YAML file) → typed values."""
    if value is None:
        return {}
    if isinstance(value, str):
        path = spec_relative(value, base_dir)
        value = cfg.load_yaml(path, f"run config file of study spec key {where!r}")
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"study spec key {where!r} must be a mapping of run config keys or a YAML file path, "
            f"got {value!r}"
        )
    return typed_values(value, where)


def spec_relative(value: str, base_dir: Path | None) -> Path:
    """A file a spec names (a `base:` run YAML file, a suite's study): `~` is the home folder, a relative
    path is taken against the spec file's folder (`base_dir`; the working directory when None)."""
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def typed_values(tree: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A config delta (nested or dotted) → {dotted key: typed value}: the one place a spec's config value is
    checked (type, choices, range); errors are prefixed with the spec key it came from. `train.init` may map
    model names to inits (`PerModelInit`)."""
    try:
        values = {key: _typed(key, value, where) for key, value in _config_keys(tree).items()}
        cfg.check_ranges(cfg.with_values(cfg.RunConfig(), _single_values(values)))  # each value's own range
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    return values


def _config_keys(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Nested or dotted mapping → {section.key: value}; a mapping below a key stays a value (per-model
    init)."""
    flat: dict[str, Any] = {}
    for section, values in cfg.merge({}, tree).items():
        if not isinstance(values, Mapping):
            raise ConfigError(
                f"config section {section!r} must be a mapping of keys, got {cfg.short(values)}"
            )
        flat.update({f"{section}.{name}": value for name, value in values.items()})
    return flat


def _typed(key: str, value: Any, where: str) -> Any:
    if key == "train.init" and isinstance(value, Mapping) and value:
        inits = tuple((str(model), str(cfg.coerce_key(key, init))) for model, init in value.items())
        return PerModelInit(inits=inits, where=where)
    return cfg.coerce_key(key, value)


def _single_values(values: Values) -> dict[str, Any]:
    """The values a RunConfig holds as they are (a per-model init is chosen per run)."""
    return {key: value for key, value in values.items() if not isinstance(value, PerModelInit)}


def init_values(init: Any) -> list[str]:
    """Every init a `train.init` value can give (one, or one per model)."""
    return [value for _, value in init.inits] if isinstance(init, PerModelInit) else [init]


def _parse_stages(value: Any, raw: Mapping[str, Any]) -> tuple[StageSpec, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError("study spec key 'stages' must be a non-empty list of stages, each with a 'name'")
    stages = tuple(_parse_stage(stage, f"stages[{i}].", raw) for i, stage in enumerate(value))
    names = [stage.name for stage in stages]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"study spec stages: duplicate stage name(s) {', '.join(duplicates)}")
    _check_stage_references(stages)
    return stages


def _parse_stage(value: Any, prefix: str, raw: Mapping[str, Any]) -> StageSpec:
    """One stage; seeds and the validation protocol default to the study's top-level ones."""
    _check_keys(value, STAGE_KEYS, f"study spec {prefix.rstrip('.') or 'stage'}")
    name = value.get("name")
    if not isinstance(name, str) or not name.strip() or "/" in name:
        raise ConfigError(f"study spec key {prefix}name must be a non-empty string, got {name!r}")
    own = value if prefix else raw
    grid = _parse_grid(own.get("grid") or {}, f"{prefix}grid")
    seeds = _parse_seeds(
        value.get("seeds", raw.get("seeds", [0])), f"{prefix}seeds" if "seeds" in value else "seeds"
    )
    protocol = value if ("cv" in value or "holdout" in value) else raw
    where = prefix if protocol is value else ""
    if "cv" in protocol and "holdout" in protocol:
        raise ConfigError(f"study spec keys {where}cv and {where}holdout exclude each other; give one")
    folds = _parse_cv(protocol.get("cv"), f"{where}cv")
    val_fraction = _parse_holdout(protocol.get("holdout"), f"{where}holdout")
    return StageSpec(
        name=name.strip(),
        base=_parse_base(value.get("base"), f"{prefix}base", None) if prefix else {},
        grid=grid,
        seeds=seeds,
        folds=folds,
        val_fraction=val_fraction,
    )


def _check_size(stages: Sequence[StageSpec]) -> None:
    """At most MAX_RUNS runs, counted before any is planned: a grid of a few long axes multiplies to millions,
    and expanding them would fill the memory for minutes before the first run."""
    sizes = [(stage, math.prod(len(axis.choices) for axis in stage.grid)) for stage in stages]
    total = sum(points * len(stage.seeds) * (stage.folds or 1) for stage, points in sizes)
    if total <= MAX_RUNS:
        return
    parts = [
        f"{'' if len(stages) == 1 else f'stage {stage.name!r}: '}"
        f"{' × '.join(str(len(axis.choices)) for axis in stage.grid) or '1'} grid point(s) × "
        f"{len(stage.seeds)} seed(s){f' × {stage.folds} folds' if stage.folds else ''}"
        for stage, _ in sizes
    ]
    raise ConfigError(
        f"study spec plans {total:,} runs ({'; '.join(parts)}); a study plans at most {MAX_RUNS:,}: narrow "
        "the grid, the seeds or the folds, or split it into several studies"
    )


def _check_stage_references(stages: Sequence[StageSpec]) -> None:
    """`train.init: stage:<name>` must name an earlier stage that uses holdout validation."""
    for position, stage in enumerate(stages):
        earlier = {s.name: s for s in stages[:position]}
        for where, init in _stage_inits(stage):
            source = init[len(STAGE_INIT_PREFIX) :]
            if source not in earlier:
                raise ConfigError(
                    f"study spec {where}: train.init={init!r} must name an earlier stage"
                    f"{close_matches(source, earlier)}; earlier stages: "
                    f"{', '.join(earlier) or '(none)'}"
                )
            if earlier[source].folds is not None:
                raise ConfigError(
                    f"study spec {where}: stage {source!r} uses cv; a stage whose runs initialise "
                    "another stage must use holdout validation"
                )


def _stage_inits(stage: StageSpec) -> list[tuple[str, str]]:
    """(spec key, value) of every `train.init: stage:...` in a stage's base and grid."""
    found = []
    for value in init_values(stage.base.get("train.init")):
        if isinstance(value, str) and value.startswith(STAGE_INIT_PREFIX):
            found.append((f"stage {stage.name!r} base", value))
    for axis in stage.grid:
        for label, overrides in axis.choices:
            for value in init_values(overrides.get("train.init")):
                if isinstance(value, str) and value.startswith(STAGE_INIT_PREFIX):
                    found.append((f"stage {stage.name!r} grid.{axis.key}={label}", value))
    return found


def _parse_grid(value: Any, where: str) -> tuple[GridAxis, ...]:
    """Dotted key → list of values, or axis name → {choice label: {dotted overrides}}."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"study spec key {where!r} must be a mapping of dotted config key → list of values")
    axes = tuple(_parse_axis(str(key), choices, f"{where}.{key}") for key, choices in value.items())
    _check_one_axis_per_key(axes, where)
    return axes


def _check_one_axis_per_key(axes: Sequence[GridAxis], where: str) -> None:
    """Two axes setting one config key would label a run with a value it did not train with."""
    setter: dict[str, str] = {}
    for axis in axes:
        for key in {key for _, values in axis.choices for key in values}:
            if key in setter:
                raise ConfigError(
                    f"study spec key {where!r}: {key} is set by two axes ({setter[key]} and {axis.key}); "
                    "a run takes one value, so set it on one axis only"
                )
            setter[key] = axis.key


def _parse_axis(key: str, value: Any, where: str) -> GridAxis:
    if "." in key:
        if not isinstance(value, list) or not value:
            raise ConfigError(f"study spec key {where!r} must be a non-empty list of values, got {value!r}")
        _check_not_managed(key, where)
        choices = tuple((_value_label(item), typed_values({key: item}, where)) for item in value)
    else:
        if not isinstance(value, Mapping) or not value:
            raise ConfigError(
                f"study spec key {where!r}: a grid key without a dot is a named axis and must map "
                f"choice names to override mappings (e.g. scratch: {{train.init: scratch}}); "
                f"config keys are dotted, like optim.lr"
            )
        choices = tuple(
            _named_choice(str(label), overrides, f"{where}.{label}") for label, overrides in value.items()
        )
    labels = [label for label, _ in choices]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"study spec key {where!r} lists the same value twice: {labels}")
    return GridAxis(key=key, choices=choices)


def _named_choice(label: str, overrides: Any, where: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(overrides, Mapping):
        raise ConfigError(
            f"study spec key {where!r} must be a mapping of dotted config keys, got {overrides!r}"
        )
    values = typed_values(overrides, where)
    for key in values:
        _check_not_managed(key, f"{where}.{key}")
    return label, values


MANAGED_KEYS = ("train.seed", "data.folds", "data.fold", "data.splits_file")


def _check_not_managed(key: str, where: str, kind: str = "study") -> None:
    """Keys the study (or tune) sets itself (seed, folds, splits) are given by `seeds:` (a tune's `seed:`) and
    `cv:`, not in a grid or search space."""
    if key in MANAGED_KEYS:
        seed_key = "seeds:" if kind == "study" else "seed:"
        hint = f"use '{seed_key}'" if key == "train.seed" else "use 'cv: {folds: k}'"
        raise ConfigError(f"{kind} spec key {where!r}: {key} is set by the {kind}; {hint}")


def _value_label(value: Any) -> str:
    """How a grid value is written in a configuration label."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value_label(item) for item in value) + "]"
    return "null" if value is None else str(value)


def _parse_seeds(value: Any, where: str) -> tuple[int, ...]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ConfigError(f"study spec key {where!r} must list at least one seed")
    seeds = tuple(_integer(item, where) for item in items)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"study spec key {where!r} lists a seed twice: {list(seeds)}")
    return seeds


def _parse_cv(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) != {"folds"}:
        raise ConfigError(f"study spec key {where!r} must be {{folds: k}} with k ≥ 2, got {value!r}")
    folds = _integer(value["folds"], f"{where}.folds")
    if folds < 2:
        raise ConfigError(f"study spec key '{where}.folds'={folds} is out of range; it must be at least 2")
    return folds


def _parse_holdout(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) != {"val_fraction"}:
        raise ConfigError(
            f"study spec key {where!r} must be {{val_fraction: f}} with 0 < f < 1, got {value!r}"
        )
    fraction = value["val_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError(f"study spec key '{where}.val_fraction'={fraction!r} must be a number in (0, 1)")
    return float(fraction)


def _parse_select(value: Any) -> SelectSpec:
    if value is True:
        return SelectSpec()
    _check_keys(value, SELECT_KEYS, "study spec select")
    metric = value.get("metric", "best.val_acc")
    if metric not in SELECT_METRICS:
        raise ConfigError(
            f"study spec select.metric={metric!r} is not allowed{close_matches(metric, SELECT_METRICS)}"
            f"; allowed: {', '.join(SELECT_METRICS)}"
        )
    seeds = _parse_seeds(value["seeds"], "select.seeds") if "seeds" in value else ()
    return SelectSpec(metric=metric, seeds=seeds)


def _parse_ensembles(value: Any) -> tuple[EnsembleSpec, ...]:
    if not isinstance(value, list):
        raise ConfigError("study spec key 'ensembles' must be a list of {name, members, method}")
    ensembles = tuple(_parse_ensemble(item, f"ensembles[{i}]") for i, item in enumerate(value))
    names = [e.name for e in ensembles]
    if len(set(names)) != len(names):
        raise ConfigError(f"study spec ensembles: duplicate ensemble names {names}")
    return ensembles


def _parse_ensemble(value: Any, where: str) -> EnsembleSpec:
    _check_keys(value, ENSEMBLE_KEYS, f"study spec {where}")
    name = value.get("name")
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name.strip()):
        raise ConfigError(
            f"study spec key {where}.name must be a folder-safe name (letters, digits, '.', '_', '+', '-', "
            f"not starting with '.'), got {cfg.short(name)}"
        )
    members = value.get("members")
    if not isinstance(members, list) or len(members) < 1:
        raise ConfigError(
            f"study spec key {where}.members must be a non-empty list of configuration labels, "
            "grid values or {dotted key: value} filters"
        )
    for i, member in enumerate(members):
        if not isinstance(member, (str, Mapping)):
            raise ConfigError(
                f"study spec key {where}.members[{i}] must be a label or a mapping, got {member!r}"
            )
    method = value.get("method", "mean")
    if method not in ENSEMBLE_METHODS:
        raise ConfigError(
            f"study spec key {where}.method={method!r} is not allowed; allowed: {', '.join(ENSEMBLE_METHODS)}"
        )
    return EnsembleSpec(name=name.strip(), members=tuple(members), method=method)


def _parse_search_param(key: Any, value: Any) -> SearchParam:
    where = f"space.{key}"
    if not isinstance(key, str) or "." not in key:
        raise ConfigError(f"tune spec key {where!r} must be a dotted config key like optim.lr")
    _check_not_managed(key, where, "tune")
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"tune spec key {where!r} must list at least one choice")
        for item in value:
            if item is not None and not isinstance(item, (bool, int, float, str)):
                raise ConfigError(
                    f"tune spec key {where!r}: choices must be numbers, strings, booleans or null, "
                    f"got {item!r}"
                )
        choices = tuple(typed_values({key: item}, where)[key] for item in value)
        return SearchParam(key=key, choices=choices)
    _check_keys(value, ("low", "high", "log", "type"), f"tune spec {where}")
    low, high = value.get("low"), value.get("high")
    kind = value.get("type", "int" if isinstance(low, int) and isinstance(high, int) else "float")
    if kind not in ("int", "float"):
        raise ConfigError(f"tune spec key {where}.type={kind!r} is not allowed; allowed: int, float")
    for bound, name in ((low, "low"), (high, "high")):
        if isinstance(bound, bool) or not isinstance(bound, (int, float)):
            raise ConfigError(f"tune spec key {where}.{name} must be a number, got {bound!r}")
        if kind == "int" and not float(bound).is_integer():
            raise ConfigError(f"tune spec key {where}.{name}={bound} must be a whole number for type: int")
    if not low < high:
        raise ConfigError(f"tune spec key {where}: low={low} must be below high={high}")
    log = value.get("log", False)
    if not isinstance(log, bool) or (log and low <= 0):
        raise ConfigError(f"tune spec key {where}.log must be true or false, and log needs low > 0")
    for bound in (low, high):
        typed_values({key: int(bound) if kind == "int" else bound}, where)
    return SearchParam(key=key, low=low, high=high, log=log, integer=kind == "int")


def _validate_base_sections(spec: StudySpec) -> None:
    """Each stage's base merged over the study base must be a valid config (names the stage on error)."""
    for stage in spec.stages:
        where = f"stage {stage.name!r} base" if len(spec.stages) > 1 else "base"
        try:
            cfg.check_ranges(cfg.with_values(cfg.RunConfig(), _single_values({**spec.base, **stage.base})))
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"study spec key {where!r} must be an integer, got {value!r}")
    return value


def _positive(value: Any, where: str) -> int:
    number = _integer(value, where)
    if number < 1:
        raise ConfigError(f"spec key {where!r}={number} is out of range; it must be at least 1")
    return number
