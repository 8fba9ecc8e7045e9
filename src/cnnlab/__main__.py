"""`python -m cnnlab` runs the command-line program."""

from cnnlab.console import run

run()
