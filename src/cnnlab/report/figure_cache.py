"""A study's figures drawn once while what they show is unchanged: `report_files/.figures.json` (this module
owns the format) keeps the last report's figures with the key they were drawn for.

The key hashes the content of every file the report reads (`collect.input_files`: result.json, metrics.csv,
predictions and thumbnails of each run, the spec, the plan, the selection) with the report package's own
source and the versions of matplotlib and numpy. Drawing the figures is most of a report's time (matplotlib,
seconds per study); reading them back is milliseconds, so `cnnlab report` again, or a `study run` that
trained nothing, costs what the tables cost. Any change to an input, to the code or to those versions draws
every figure again. A cache that cannot be read or written (a hand-edited file, a read-only folder) is
ignored: the figures are drawn.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np

from cnnlab.report.collect import input_files
from cnnlab.report.document import PLOT_DIR
from cnnlab.report.plots import Plot
from cnnlab.safeio import atomic_write_text

CACHE_FILE = ".figures.json"
FORMAT = 1
_CODE = tuple(sorted(Path(__file__).parent.glob("*.py")))  # the report package: the figures' code


def cached_plots(root: Path, key: str, draw: Callable[[], list[Plot]]) -> list[Plot]:
    """The study's figures: the cached ones when they were drawn for inputs of this key (`inputs_key`, taken
    before the study was read), else `draw()` (cached under the key)."""
    path = root / PLOT_DIR / CACHE_FILE
    found = _read(path, key)
    if found is not None:
        return found
    plots = draw()
    _write(path, key, plots)
    return plots


def inputs_key(root: Path) -> str:
    """What the figures depend on, as one hash: the report's input files, its code, the plotting versions.

    Take it before reading the study: a file a live run writes in between then makes the key older than the
    figures (the next report draws again), never the figures older than their key (kept stale for good)."""
    digest = hashlib.sha256(_code_digest())
    for path in input_files(root):
        try:
            content = path.read_bytes()
        except FileNotFoundError:  # removed since the folder was listed (a run folder cleared for a rerun)
            continue
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(content).digest())
    return digest.hexdigest()


@functools.cache
def _code_digest() -> bytes:
    """The report package's source and the plotting versions, hashed once per process."""
    digest = hashlib.sha256(f"{FORMAT} matplotlib {matplotlib.__version__} numpy {np.__version__}".encode())
    for path in _CODE:
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.digest()


def _read(path: Path, key: str) -> list[Plot] | None:
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("format") != FORMAT or stored.get("key") != key:
            return None
        return [
            Plot(item["name"], item["title"], item["caption"], base64.b64decode(item["png"]), item["section"])
            for item in stored["figures"]
        ]
    except (OSError, UnicodeDecodeError, ValueError, binascii.Error, KeyError, TypeError, AttributeError):
        return None


def _write(path: Path, key: str, plots: list[Plot]) -> None:
    figures = [
        {
            "name": plot.name,
            "title": plot.title,
            "caption": plot.caption,
            "section": plot.section,
            "png": base64.b64encode(plot.png).decode("ascii"),
        }
        for plot in plots
    ]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"format": FORMAT, "key": key, "figures": figures}))
    except OSError:
        pass  # a read-only study folder: the report is drawn each time
