"""Atomic writes and the one safe loader for every checkpoint and weights file.

Every artefact is written to a temporary file in its own folder and renamed into place, so a reader never
sees a half-written file and concurrent runs under one output root never collide. Every weights load goes
through `load_checkpoint`: safetensors or `torch.load(weights_only=True)`, never full unpickling.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cnnlab.errors import WeightsError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on error removed.

    The file gets the mode of a normally created file (0o666 less the umask, or what the folder's default
    ACL says), not mkstemp's private 0o600, so a group sharing a study folder can read what it holds.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _new_temp_file(path)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _new_temp_file(path: Path) -> Path:
    """Create an empty, uniquely named `.<name>.<random>.tmp` beside `path` (O_EXCL, mode 0o666 & ~umask)."""
    for _ in range(100):
        candidate = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o666))
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"no free temporary name beside {path}")


_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write bytes atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text (UTF-8) atomically; undecodable file-name bytes in it are written escaped (\\xNN)."""
    return atomic_write_bytes(path, text.encode("utf-8", errors="backslashreplace"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON (indented, keys in insertion order) atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """torch.save atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def read_json(path: str | Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint or weights file safely: safetensors, or torch.load with weights_only=True.

    A file that needs full unpickling (it could run code) is refused with a WeightsError; there is no
    fallback. Returns the loaded mapping (a state_dict, or a Lightning checkpoint dict).
    """
    import torch  # here, not at the top: the report and status commands write files without torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise WeightsError(
            f"refused to load {path}: it is not a weights-only checkpoint ({_first_sentence(error)}); "
            "cnnlab loads only safetensors and plain state_dict/Lightning checkpoints"
        ) from None
    except (OSError, RuntimeError, AttributeError, TypeError, EOFError, ValueError, KeyError) as error:
        raise WeightsError(
            f"cannot read {path}: the file is truncated, corrupt or not a checkpoint "
            f"({type(error).__name__}: {_first_sentence(error)}); write it again"
        ) from None
    if not isinstance(loaded, dict):
        raise WeightsError(f"{path} holds a {type(loaded).__name__}, not a state_dict or checkpoint mapping")
    return loaded


def _first_sentence(error: BaseException, limit: int = 160) -> str:
    """The first sentence of an exception's message, on one line: never cut mid-word without saying so."""
    text = " ".join(str(error).split()) or type(error).__name__
    sentence = text.split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= limit else sentence[:limit].rsplit(" ", 1)[0] + " ..."


def _load_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightsError(f"cannot read safetensors file {path}: {_first_sentence(error)}") from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
