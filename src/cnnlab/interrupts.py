"""SIGINT and SIGTERM as one exception: `cnnlab.errors.Interrupted`, raised in the main thread at once.

Lightning composes its own SIGTERM handler with the one installed here, so a signal during training stops
the run at the next Python instruction; the run records itself as interrupted and the CLI exits 130 / 143.
A second signal while the first is being handled ends the process at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from cnnlab.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


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

    previous = {signum: signal.signal(signum, handler) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
