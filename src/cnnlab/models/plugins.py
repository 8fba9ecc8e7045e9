"""Your own networks in the zoo: a plugin is a module (or an entry point in the `cnnlab.models` group of an
installed package) that calls `cnnlab.models.register_model` when imported.

A plugin is imported only because the user asked for it (`model.plugin` in a run config or spec, or
`--plugin NAME` on a command), never because a checkpoint names a model: `evaluate`/`predict`/`export` of a
run trained with a plugin tell the user which `--plugin` to pass instead.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any

from cnnlab.errors import ConfigError

ENTRY_POINT_GROUP = "cnnlab.models"
_LOADED: set[str] = set()


def load_plugin(name: str) -> None:
    """Import a plugin by entry-point name (group `cnnlab.models`) or module path, once per process.

    An entry point may name a module or a callable; a callable is called with no arguments (its job is to
    call `register_model`)."""
    if name in _LOADED:
        return
    target = _entry_point(name)
    try:
        loaded = target.load() if target is not None else importlib.import_module(name)
    except Exception as error:  # the plugin's own code failed: the user's to fix
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"model.plugin={name!r} could not be imported ({type(error).__name__}: {first}); install the "
            f"package that provides it, or give its module path"
        ) from None
    if callable(loaded):
        _call(loaded, name)
    _LOADED.add(name)


def installed_plugins() -> list[str]:
    """Names of the `cnnlab.models` entry points installed in this environment."""
    return sorted(point.name for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _entry_point(name: str) -> Any:
    for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if point.name == name:
            return point
    return None


def _call(register: Any, name: str) -> None:
    try:
        register()
    except ValueError as error:  # registered twice, e.g. the module was imported by other means first
        if "registered twice" not in str(error):
            raise ConfigError(f"plugin {name!r} failed to register its models: {error}") from None
