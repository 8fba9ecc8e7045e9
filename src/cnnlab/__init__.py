"""cnnlab: comparative experiments with convolutional image classifiers.

The library lives in its subpackages: `cnnlab.models` (`create_model`, `list_models`), `cnnlab.data`,
`cnnlab.train` (`fit`), `cnnlab.study` and `cnnlab.report`. The spec's top-level names (`cnnlab.create_model`,
`cnnlab.list_models`, `cnnlab.model_info`, `cnnlab.fit`) load on first use (PEP 562): every `cnnlab` command,
`--help` included, imports this package first, and the training stack an eager re-export would pull in costs
seconds (docs/architecture.md, "Imports").
"""

from __future__ import annotations

from cnnlab.version import __version__  # nothing heavier here: `cnnlab`'s Ctrl-C handling is not up yet

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers know this idiom)
if TYPE_CHECKING:
    from typing import Any

_HOMES = {
    "create_model": "cnnlab.models",
    "fit": "cnnlab.train",
    "list_models": "cnnlab.models",
    "model_info": "cnnlab.models",
}
__all__ = ["__version__", *sorted(_HOMES)]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_HOMES[name]), name)
