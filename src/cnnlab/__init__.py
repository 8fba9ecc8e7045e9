"""cnnlab: comparative experiments with convolutional image classifiers.

The library lives in its subpackages: `cnnlab.models` (`create_model`, `list_models`), `cnnlab.data`,
`cnnlab.train` (`fit`), `cnnlab.study` and `cnnlab.report`. Nothing is re-exported here: every `cnnlab`
command, `--help` included, imports this package first, and the training stack it would pull in costs
seconds (docs/architecture.md, "Imports").
"""

from __future__ import annotations

from cnnlab.version import __version__

__all__ = ["__version__"]
