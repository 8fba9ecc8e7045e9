"""SIGINT and SIGTERM as one exception: `cnnlab.errors.Interrupted`, raised in the main thread at once.

Lightning composes its own SIGTERM handler with the one installed here, so a signal during training stops
the run at the next Python instruction; the run records itself as interrupted and the CLI exits 130 / 143.
A second signal while the first is being handled ends the process at once. A signal that lands while Python
runs a finalizer or weakref callback (where exceptions are dropped) is sent again, so it is never lost.
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
        raise Interrupted(signum)

    def dropped(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, Interrupted) and received:
            _deliver_again(received.pop())
        else:
            previous_hook(unraisable)

    previous = {signum: signal.signal(signum, handler) for signum in SIGNALS}
    previous_hook, sys.unraisablehook = sys.unraisablehook, dropped
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for signum, old in previous.items():
            signal.signal(signum, old)


def _deliver_again(signum: int) -> None:
    """Send the signal again shortly, from another thread: its Interrupted was raised while Python ran a
    finalizer or a weakref callback (the garbage collector, between any two instructions), where an exception
    is printed as "Exception ignored" and dropped, so the command would have gone on to the end and exit 0."""
    timer = threading.Timer(REDELIVER_S, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()
