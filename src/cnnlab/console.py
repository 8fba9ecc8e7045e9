"""The `cnnlab` console script and `python -m cnnlab`: `cli.run_program`, imported and run under a guard.

Python loads the command line (cnnlab.cli, PyYAML, the config schema) for about a tenth of a second, and
`cli.main` builds its parser, before cnnlab's own SIGINT handling starts; a Ctrl-C then ends in the same one
line and exit code 130 as later, not in a traceback of the import machinery.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing before the guard
if TYPE_CHECKING:
    from typing import NoReturn


def run() -> NoReturn:
    """Import the command line, then run it (`cli.run_program` exits with its code)."""
    try:
        from cnnlab.cli import run_program

        run_program()
    except KeyboardInterrupt:
        from cnnlab.errors import EXIT_SIGINT

        print("cnnlab: interrupted by SIGINT", file=sys.stderr)
        sys.exit(EXIT_SIGINT)
