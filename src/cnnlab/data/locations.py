"""Where dataset files are searched and where cnnlab keeps its caches and downloads."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "CNNLAB_DATA"  # a folder of datasets, searched after --data-dir
CACHE_ENV = "CNNLAB_CACHE"  # cache root (decoded folders, downloads); default ~/.cache/cnnlab
OFFLINE_ENV = "CNNLAB_OFFLINE"  # "1": never try a download
SYSTEM_DATA_DIRS = ("/usr/share/datasets",)  # Debian's dataset-* packages install here


def cache_root() -> Path:
    """The cache folder: `$CNNLAB_CACHE`, else `~/.cache/cnnlab`."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "cnnlab"


def download_root(data_dir: str | None) -> Path:
    """Where a download goes: `--data-dir`, else `$CNNLAB_DATA`, else `<cache>/datasets`."""
    if data_dir:
        return Path(data_dir).expanduser().resolve()
    configured = os.environ.get(DATA_ENV)
    return Path(configured).expanduser().resolve() if configured else cache_root() / "datasets"


def search_roots(data_dir: str | None) -> list[tuple[Path, str]]:
    """Folders searched for dataset files, in order, each with where it came from."""
    roots: list[tuple[Path, str]] = []
    if data_dir:
        roots.append((Path(data_dir).expanduser().resolve(), "--data-dir"))
    if os.environ.get(DATA_ENV):
        roots.append((Path(os.environ[DATA_ENV]).expanduser().resolve(), f"${DATA_ENV}"))
    roots.extend((Path(system), "system") for system in SYSTEM_DATA_DIRS)
    roots.append((cache_root() / "datasets", "download cache"))
    seen: set[Path] = set()
    return [(root, origin) for root, origin in roots if not (root in seen or seen.add(root))]


def offline() -> bool:
    """True when `$CNNLAB_OFFLINE` forbids downloads."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")
