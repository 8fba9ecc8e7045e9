"""Where dataset files are searched and where cnnlab keeps its caches and downloads."""

from __future__ import annotations

import os
from pathlib import Path

from cnnlab.config import env_switch, quoted
from cnnlab.errors import DataError

DATA_ENV = "CNNLAB_DATA"  # a folder of datasets, searched after --data-dir
CACHE_ENV = "CNNLAB_CACHE"  # cache root (decoded folders, downloads); default ~/.cache/cnnlab
OFFLINE_ENV = "CNNLAB_OFFLINE"  # "1": never try a download
SYSTEM_DATA_DIRS = ("/usr/share/datasets",)  # Debian's dataset-* packages install here
USER_ORIGINS = ("--data-dir", f"${DATA_ENV}")  # search places a user named: an incomplete one is an error


def cache_root() -> Path:
    """The cache folder, absolute: `$CNNLAB_CACHE` (a relative one taken against the working directory, so
    every message names where the files really are), else `~/.cache/cnnlab`."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser().absolute() if configured else Path.home() / ".cache" / "cnnlab"


def data_dir_folder(data_dir: str | None) -> Path | None:
    """`data.data_dir` (`--data-dir`) as an absolute folder, or None when unset.

    A path that is not a folder is an error, never skipped: a typo would otherwise train on the copy found
    further down the lookup order without a word."""
    return _user_folder(data_dir, "data.data_dir (--data-dir)", "fix the path") if data_dir else None


def data_env_folder() -> Path | None:
    """`$CNNLAB_DATA` as an absolute folder, or None when unset or empty; a path that is not a folder is an
    error, as for `data.data_dir`."""
    configured = os.environ.get(DATA_ENV)
    how = f"fix or unset ${DATA_ENV}"
    return _user_folder(configured, f"${DATA_ENV}", how) if configured else None


def _user_folder(path: str, key: str, how: str) -> Path:
    """An existing, readable folder a user named with `key`; anything else is a one-line DataError."""
    folder = Path(path).expanduser().resolve()
    if not folder.exists():
        raise DataError(f"{key} {quoted(folder)} does not exist; create it (downloads go there) or {how}")
    if not folder.is_dir():
        raise DataError(f"{key} {quoted(folder)} is a file, not a folder; give the folder of dataset files")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise DataError(f"{key} {quoted(folder)} cannot be read (permission denied); {how}")
    return folder


def download_root(data_dir: str | None) -> Path:
    """Where a download goes: `--data-dir`, else `$CNNLAB_DATA`, else `<cache>/datasets`."""
    return data_dir_folder(data_dir) or data_env_folder() or cache_root() / "datasets"


def search_roots(data_dir: str | None) -> list[tuple[Path, str]]:
    """Folders searched for dataset files, in order, each with where it came from."""
    roots: list[tuple[Path, str]] = []
    given, configured = data_dir_folder(data_dir), data_env_folder()
    if given:
        roots.append((given, "--data-dir"))
    if configured:
        roots.append((configured, f"${DATA_ENV}"))
    roots.extend((Path(system), "system") for system in SYSTEM_DATA_DIRS)
    roots.append((cache_root() / "datasets", "download cache"))
    seen: set[Path] = set()
    return [(root, origin) for root, origin in roots if not (root in seen or seen.add(root))]


def offline() -> bool:
    """True when `$CNNLAB_OFFLINE` forbids downloads; a value that is neither yes nor no (`y`, `offline`)
    is an error, never taken as "downloads allowed"."""
    return env_switch(OFFLINE_ENV, "never download")
