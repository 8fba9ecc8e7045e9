"""Your own networks in the zoo: a plugin is a module (or an entry point in the `cnnlab.models` group of an
installed package) that calls `cnnlab.models.register_model` when imported.

A plugin is imported only because the user asked for it (`model.plugin` in a run config or spec, or
`--plugin NAME` on a command), never because a checkpoint names a model: `evaluate`/`predict`/`export` of a
run trained with a plugin tell the user which `--plugin` to pass instead.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import sys
from typing import Any

from cnnlab.errors import CnnlabError, ConfigError, first_line

ENTRY_POINT_GROUP = "cnnlab.models"
_LOADED: set[str] = set()


def load_plugin(name: str) -> None:
    """Import a plugin by entry-point name (group `cnnlab.models`) or module path, once per process.

    An entry point may name a module or a callable; a callable is called with no arguments (its job is to
    call `register_model`). What the plugin prints goes to stderr (stdout carries cnnlab's own output, e.g.
    `cnnlab models --json`); its failures, a `sys.exit` included, are ConfigErrors naming it."""
    if name in _LOADED:
        return
    target = _entry_point(name)
    with contextlib.redirect_stdout(sys.stderr):
        loaded = _run_plugin_code(name, lambda: target.load() if target else importlib.import_module(name))
        if callable(loaded):
            _run_plugin_code(name, loaded)
    _LOADED.add(name)


def installed_plugins() -> list[str]:
    """Names of the `cnnlab.models` entry points installed in this environment."""
    return sorted(point.name for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _entry_point(name: str) -> Any:
    for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if point.name == name:
            return point
    return None


def _run_plugin_code(name: str, code: Any) -> Any:
    """Call the plugin's import or register function; what goes wrong there is the user's to fix."""
    try:
        return code()
    except CnnlabError as error:  # register_model refused a model (a name the zoo already has)
        raise ConfigError(f"model.plugin={name!r}: {error}") from None
    except SystemExit as stop:
        raise ConfigError(
            f"model.plugin={name!r} called sys.exit({stop.code!r}) while it was imported; a plugin must "
            "only register its models"
        ) from None
    except Exception as error:  # noqa: BLE001  (the plugin's own code failed)
        raise ConfigError(
            f"model.plugin={name!r} could not be imported ({type(error).__name__}: {first_line(error)}); "
            "install the package that provides it, or give its module path"
        ) from None
