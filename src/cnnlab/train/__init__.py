"""One run: the Lightning system, fine-tune callbacks, `fit`, and evaluate/predict/export.

The names below load on first use (PEP 562), so a command that needs only a light submodule (`study status`
reads run ids through `cnnlab.train.resolve`) does not import Lightning (about 8 s of a 2-core start-up).
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "RunAbandoned": "cnnlab.train.callbacks",
    "RunResult": "cnnlab.train.run",
    "completed_result": "cnnlab.train.run",
    "evaluate_checkpoint": "cnnlab.train.inference",
    "export_checkpoint": "cnnlab.train.inference",
    "fit": "cnnlab.train.run",
    "load_model": "cnnlab.train.inference",
    "predict_images": "cnnlab.train.inference",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'cnnlab.train' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
