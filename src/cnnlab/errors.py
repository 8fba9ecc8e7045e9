"""Errors a user can cause, and the exit codes the CLI maps them to."""

from __future__ import annotations

import difflib
import errno
import signal
from collections.abc import Iterable
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1  # a run failed (its error.log holds the traceback), or a study has failed runs
EXIT_USAGE = 2  # invalid usage, configuration, data or missing file
EXIT_DIVERGED = 3  # the run stopped on a non-finite loss (status "diverged")
EXIT_SIGINT = 130  # interrupted by SIGINT (Ctrl-C): 128 + 2, the shell's convention
EXIT_SIGTERM = 143  # interrupted by SIGTERM: 128 + 15


class CnnlabError(Exception):
    """A problem the user can fix; the CLI prints its message on one line and exits with `exit_code`."""

    exit_code = EXIT_USAGE


class ConfigError(CnnlabError):
    """A configuration key, value or combination is invalid."""


class DataError(CnnlabError):
    """A dataset is missing, unreadable or malformed."""


class WeightsError(CnnlabError):
    """A checkpoint or weights file cannot be loaded safely."""


OS_ERROR_HINTS = {
    errno.ENOSPC: "no space left on the device; free some space and run again (finished work is kept)",
    errno.EDQUOT: "disk quota exceeded; free some space and run the command again",
    errno.EROFS: "the file system is read-only; give an output folder on a writable disk",
    errno.EACCES: "permission denied; give a folder you can write to",
    errno.EPERM: "operation not permitted; give a folder you can write to",
    errno.ENAMETOOLONG: "the file name is too long; use a shorter path",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "the path is a folder; give a file path",
    errno.EEXIST: "the path already exists",
    errno.ENOENT: "no such file or folder",
}


def not_a_file(path: Path, kind: str, expected: str, shown: str | None = None) -> str:
    """Why `path`, given as the `kind` file to read, is not one: not found, a folder, or a device, pipe or
    socket (reading one of those could wait for a writer or never end, so it is never opened)."""
    shown = shown or str(path)
    if path.is_dir():
        return f"{kind} is a folder, not {expected}: {shown}"
    if path.exists():
        return f"{kind} is a device, pipe or socket, not {expected}: {shown}"
    return f"{kind} not found: {shown}"


def describe_os_error(error: OSError) -> str:
    """One line for an operating-system error a user can fix: what happened, to which file, what to do."""
    hint = OS_ERROR_HINTS.get(error.errno or -1, error.strerror or type(error).__name__)
    name = error.filename if error.filename is not None else ""
    where = f" ({_escaped(str(name))})" if name else ""
    return f"{hint}{where}"


def _escaped(text: str, limit: int = 160) -> str:
    text = repr(text)
    return text if len(text) <= limit else f"{text[:70]}...{text[-70:]}"


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), or its type name when empty."""
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def escape_surrogates(text: str) -> str:
    """Text that encodes as UTF-8 (and that fonts can draw): a file name's undecodable bytes (Python's
    surrogate escapes, as os.listdir gives them) as `\\xNN`, the byte `ls -b` shows; any other lone
    surrogate (a JSON string's `\\ud800`) as `\\ud800`."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join(_escaped_surrogate(char) if "\ud800" <= char <= "\udfff" else char for char in text)


def _escaped_surrogate(char: str) -> str:
    code = ord(char)
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def printable(text: str) -> str:
    """Text as one line that can be printed, written and drawn: undecodable bytes (surrogate escapes) as
    `\\xNN`, newlines, tabs and other control characters (terminal escape codes) escaped (`\\n`, `\\x1b`)."""
    text = escape_surrogates(text)
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def one_line(message: str, limit: int = 2000) -> str:
    """A message on one line (`printable`), very long text shortened."""
    text = printable(message)
    return text if len(text) <= limit else text[: limit - 40] + f" ... ({len(text)} characters)"


class DiskFull(CnnlabError):
    """The disk filled during a run: nothing is recorded as failed; free space and rerun to resume."""


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(error: BaseException) -> OSError | None:
    """The full-disk OSError (ENOSPC, EDQUOT) behind an exception, None when the disk is not why. The chain
    of causes is followed: libraries report a failed write as their own error raised while handling it
    (torch.save a RuntimeError, Lightning's TensorBoard logger a ValueError)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def close_matches(word: str, choices: Iterable[str], n: int = 3) -> str:
    """' (did you mean a, b?)' for near misses, else ''; for error messages that name alternatives."""
    by_folded = {choice.casefold(): choice for choice in choices}  # DIGITS is a near miss of digits
    folded = difflib.get_close_matches(str(word).casefold(), list(by_folded), n=n, cutoff=0.6)
    matches = [by_folded[match] for match in folded]
    return f" (did you mean {', '.join(matches)}?)" if matches else ""


def unknown_choice(kind: str, value: object, choices: Iterable[str]) -> ConfigError:
    """The standard error for a name that is not among the allowed ones."""
    choices = sorted(choices)
    hint = close_matches(str(value), choices)
    listed = ", ".join(choices) if len(choices) <= 12 else ", ".join(choices[:12]) + ", ..."
    return ConfigError(f"unknown {kind} {_escaped(str(value), 80)}{hint}; allowed: {listed}")


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived. Not an Exception, so no `except Exception` records it as a failure: the run
    in progress is recorded as interrupted (checkpoint kept) and the process exits 128 + the signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 128 + signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name
