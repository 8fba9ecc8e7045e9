"""cnnlab: comparative experiments with convolutional image classifiers.

Importing cnnlab does not import Lightning; `fit` loads the training stack on first use.
"""

from __future__ import annotations

from typing import Any

from cnnlab.version import __version__

__all__ = ["__version__", "create_model", "fit", "list_models"]


def __getattr__(name: str) -> Any:
    if name in ("create_model", "list_models"):
        from cnnlab import models

        return getattr(models, name)
    if name == "fit":
        from cnnlab.train import fit

        return fit
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
