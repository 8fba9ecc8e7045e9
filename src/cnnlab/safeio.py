"""Atomic writes and the one safe loader for every checkpoint and weights file.

Every artefact is written to a temporary file in its own folder and renamed into place, so a reader never
sees a half-written file and concurrent runs under one output root never collide. Every weights load goes
through `load_checkpoint`: safetensors or `torch.load(weights_only=True)`, never full unpickling.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
import re
import secrets
import signal
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from cnnlab.errors import WeightsError, escape_surrogates, not_a_file
from cnnlab.interrupts import held


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on error removed.

    The file gets the mode of a normally created file (0o666 less the umask, or what the folder's default
    ACL says), not mkstemp's private 0o600, so a group sharing a study folder can read what it holds.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _new_temp_file(path)
    mode = tmp_path.stat().st_mode & 0o7777
    try:
        yield tmp_path
        _restore_mode(tmp_path, mode)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _restore_mode(path: Path, mode: int) -> None:
    """Give `path` its creation mode again: a writer that replaced the temporary file (safetensors' save_file
    writes its own temporary file and renames it over ours) leaves its private 0o600 behind."""
    if path.exists() and path.stat().st_mode & 0o7777 != mode:
        os.chmod(path, mode)


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
    return atomic_write_bytes(path, text_bytes(text))


def text_bytes(text: str) -> bytes:
    """UTF-8 of `text`, surrogates escaped (`errors.escape_surrogates`: a file name's undecodable byte as
    `\\xNN`, the byte `ls -b` shows, not Python's `\\udcNN`)."""
    return escape_surrogates(text).encode("utf-8")


def atomic_replace_files(contents: Mapping[Path, bytes], remove: Iterable[Path] = ()) -> list[Path]:
    """Write several files (and remove others) so a reader sees either all the old files or all the new ones.

    Every file is first written to a temporary file beside it (`_new_temp_file`'s name); only when all are
    written are they renamed into place, in order, and `remove` unlinked, with SIGINT and SIGTERM held back
    until that is done (a signal then arrives after it). A failure before (a full disk, an unwritable folder,
    a signal, a path that is a folder) leaves every old file as it was, and no temporary file or folder of
    this call behind. Returns the written paths.
    """
    temps: dict[Path, Path] = {}
    created: list[Path] = []
    try:
        for path, data in contents.items():
            path = Path(path)
            if path.is_dir():
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
            created += _make_parents(path.parent)
            temps[path] = _new_temp_file(path)
            temps[path].write_bytes(data)
        with _signals_held():
            for path, temp in temps.items():
                os.replace(temp, path)
            for path in remove:
                Path(path).unlink(missing_ok=True)
        created = []
    finally:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()
    return list(temps)


def temp_files(path: str | Path) -> list[Path]:
    """The temporary files atomic writes to `path` left behind (a writer killed mid-write); the name of `path`
    may be a glob pattern (`*.png`)."""
    path = Path(path)
    found = path.parent.glob(f".{path.name}.*.tmp")
    return sorted(found_path for found_path in found if TEMP_NAME.fullmatch(found_path.name))


TEMP_NAME = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}\.tmp")  # `_new_temp_file`'s names: .<name>.<hex>.tmp


def _make_parents(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; returns the folders created, outermost first."""
    missing = [parent for parent in (folder, *folder.parents) if not parent.exists()][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait (blocked, not lost) while the body runs; delivered when it ends."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON (indented, keys in insertion order) atomically."""
    return atomic_write_text(path, json_text(obj))


def json_text(obj: Any) -> str:
    """The text `atomic_write_json` writes: indented JSON, keys in insertion order; Paths, tuples, sets and
    numpy/torch scalars and arrays as JSON values."""
    return json.dumps(obj, indent=2, default=_json_default) + "\n"


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """torch.save atomically; a failed write (a full disk) raises its OSError, a signal during the write its
    Interrupted once the write is done (the temporary file is then discarded). torch.save writes through a
    Python file here: given a path, its own writer reports a full disk as a RuntimeError that names no errno
    ('basic_ios::clear: iostream error'), which a run would record as failed instead of resumable."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        try:
            with held():  # a signal lands after the zip writer finished the file (interrupts.held)
                torch.save(obj, handle)
        except RuntimeError as error:
            stopped_by = _write_failure_behind(error)
            if stopped_by is None:
                raise
            raise stopped_by from None
    return Path(path)


def _write_failure_behind(error: BaseException) -> BaseException | None:
    """What stopped torch.save's write to a Python file, which torch re-raises as a RuntimeError ('unexpected
    pos'): the file's OSError (a full disk), or an interrupt (Interrupted, KeyboardInterrupt: a signal's
    handler raises inside the write); None for any other failure."""
    context = error.__context__
    while context is not None and isinstance(context, Exception) and not isinstance(context, OSError):
        context = context.__context__
    return context


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

    What cannot be loaded is told apart in the WeightsError: not a PyTorch file at all, truncated, corrupt
    (every member's CRC-32 is checked first: torch's zip reader checks none, so flipped bytes in a tensor
    would load as changed weights), or a pickle that needs code, which is refused with no fallback to full
    unpickling. The CRC check reads the file once more: on a resnet50 checkpoint (103 MB state_dict, 307 MB
    with Adam's state) it took 0.04 s / 0.11 s on 2 CPU cores with the file in the page cache, about what
    torch.load itself takes. Returns the loaded mapping (a state_dict, or a Lightning checkpoint dict).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(not_a_file(path, "checkpoint", "a weights file"))
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    start = _file_start(path)
    if start.startswith(ZIP_MAGIC):
        _check_torch_zip(path)
    elif not _is_pickle_start(start):
        raise _not_a_checkpoint(path, start)
    loaded = _torch_load(path, legacy=not start.startswith(ZIP_MAGIC))
    if not isinstance(loaded, dict):
        raise WeightsError(f"{path} holds a {type(loaded).__name__}, not a state_dict or checkpoint mapping")
    return loaded


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6: a zip archive holding data.pkl
PICKLE_PROTOCOLS = range(2, 6)  # torch.save's legacy format is a pickle: PROTO opcode 0x80, then 2..5


def _is_pickle_start(start: bytes) -> bool:
    """Does a file start like a pickle (the PROTO opcode and a known protocol), as legacy checkpoints do?"""
    return len(start) >= 2 and start[0] == 0x80 and start[1] in PICKLE_PROTOCOLS


REWRITE_HINT = "write it again (copy it anew, or retrain / re-export the run)"
CHECKPOINT_HINT = "give a checkpoint written by `cnnlab train`, a run folder or an export"


def _file_start(path: Path) -> bytes:
    """The first bytes of a file; an empty file is reported as truncated."""
    with open(path, "rb") as handle:
        start = handle.read(16)
    if not start:
        raise WeightsError(f"cannot read {path}: the file is empty (truncated); {REWRITE_HINT}")
    return start


def _not_a_checkpoint(path: Path, start: bytes) -> WeightsError:
    return WeightsError(
        f"cannot read {path}: it is not a PyTorch checkpoint or safetensors file (it starts with "
        f"{start[:8]!r}); {CHECKPOINT_HINT}"
    )


def _check_torch_zip(path: Path) -> None:
    """A torch.save zip archive, complete (its directory at the end is there), with data.pkl, every member
    matching its CRC-32."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise WeightsError(
            f"cannot read {path}: the file is truncated (its zip directory at the end is missing); "
            f"{REWRITE_HINT}"
        ) from None
    with archive:
        members = archive.infolist()
        if not any(info.filename.rsplit("/", 1)[-1] == "data.pkl" for info in members):
            raise WeightsError(
                f"cannot read {path}: it is a zip archive but not a PyTorch checkpoint (no data.pkl); "
                f"{CHECKPOINT_HINT}"
            )
        for info in members:
            _check_member(archive, info, path)


def _check_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> None:
    """Read one member to its end: zipfile raises on a CRC-32 mismatch or a damaged local header."""
    try:
        with archive.open(info) as member:
            while member.read(1 << 22):
                pass
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as error:
        raise WeightsError(
            f"cannot read {path}: the file is corrupt ({info.filename.split('/', 1)[-1]}: "
            f"{_first_sentence(error)}); {REWRITE_HINT}"
        ) from None


def _torch_load(path: Path, *, legacy: bool) -> Any:
    """torch.load(weights_only=True), its failures told apart: a pickle needing code, truncation, damage."""
    import torch  # here, not at the top: the report and status commands write files without torch

    try:
        with warnings.catch_warnings():  # a pickle of another protocol than torch's: the error says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise WeightsError(
            f"refused to load {path}: it is not a weights-only checkpoint (torch's weights-only reader "
            f"stopped at: {_unpickler_reason(error)}); full unpickling could run code, so cnnlab never tries "
            "it and nothing of the file ran; cnnlab loads only safetensors and plain state_dict/Lightning "
            "checkpoints"
        ) from None
    except EOFError:
        raise _truncated(path) from None
    except RuntimeError as error:
        if legacy and "magic number" in str(error):
            raise WeightsError(
                f"cannot read {path}: it is a Python pickle but not a PyTorch checkpoint; {CHECKPOINT_HINT}"
            ) from None
        if "EOF" in str(error):
            raise _truncated(path) from None
        raise _corrupt(path, error) from None
    except (OSError, AttributeError, TypeError, ValueError, KeyError) as error:
        raise _corrupt(path, error) from None


def _truncated(path: Path) -> WeightsError:
    return WeightsError(f"cannot read {path}: the file is truncated; {REWRITE_HINT}")


def _corrupt(path: Path, error: BaseException) -> WeightsError:
    return WeightsError(
        f"cannot read {path}: the file is corrupt ({type(error).__name__}: {_first_sentence(error)}); "
        f"{REWRITE_HINT}"
    )


def _unpickler_reason(error: BaseException) -> str:
    """What torch's weights-only unpickler stopped at (its message buries it after advice on
    weights_only=False, which cnnlab never takes)."""
    text = " ".join(str(error).split())
    marker = "WeightsUnpickler error:"
    reason = text.split(marker, 1)[1] if marker in text else text
    return _first_sentence(Exception(reason.split(" Check the documentation")[0].strip()), limit=120)


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
