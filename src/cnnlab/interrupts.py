"""SIGINT and SIGTERM as one exception: `cnnlab.errors.Interrupted`, raised in the main thread at once.

Lightning composes its own SIGTERM handler with the one installed here, so a signal during training stops
the run at the next Python instruction; the run records itself as interrupted and the CLI exits 130 / 143.
A second signal while the first is being handled ends the process at once. A signal that lands while Python
runs a finalizer or weakref callback (where exceptions are dropped) is sent again, so it is never lost. A
signal the parent set to be ignored (SIG_IGN, as a shell does for a background job's SIGINT) stays ignored.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from cnnlab.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
REDELIVER_S = 0.01  # a signal whose exception Python dropped is sent again after this long
_held: list[int] = []  # signals that arrived inside `held()`, raised when it ends
_holding = [0]  # depth of nested `held()` blocks


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """While the body runs, SIGINT and SIGTERM raise Interrupted (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if received:
            os._exit(128 + received[0])  # a second signal: the user insists
        received.append(signum)
        if _holding[0]:
            _held.append(signum)  # raised when the held block ends
            return
        raise Interrupted(signum)

    def dropped(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, Interrupted) and received:
            _deliver_again(received.pop())
        else:
            previous_hook(unraisable)

    previous = {signum: signal.signal(signum, handler) for signum in _signals_not_ignored()}
    previous_hook, sys.unraisablehook = sys.unraisablehook, dropped
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """A block a signal must not stop halfway: SIGINT/SIGTERM arriving inside it raise Interrupted when it
    ends (in place of an error of its own; a second signal still ends the process at once). torch.save is
    one: stopped between its last record and its zip writer's end of file, the writer finished that file
    when Python destroyed it at exit, into a file already closed, and the process aborted (SIGABRT), not
    exit 143."""
    _holding[0] += 1
    try:
        yield
    finally:
        _holding[0] -= 1
        if not _holding[0] and _held:
            raise Interrupted(_held.pop())


def _signals_not_ignored() -> list[int]:
    """SIGINT and SIGTERM, less any the parent set to be ignored: a command started with `&` from a script
    (SIGINT ignored, so the script's Ctrl-C spares it) or under `trap '' TERM` keeps ignoring it, as any
    Unix program and Python itself do."""
    return [signum for signum in SIGNALS if signal.getsignal(signum) is not signal.SIG_IGN]


def _deliver_again(signum: int) -> None:
    """Send the signal again shortly, from another thread: its Interrupted was raised while Python ran a
    finalizer or a weakref callback (the garbage collector, between any two instructions), where an exception
    is printed as "Exception ignored" and dropped, so the command would have gone on to the end and exit 0."""
    timer = threading.Timer(REDELIVER_S, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()
