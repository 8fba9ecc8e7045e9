"""`python -m cnnlab` runs the command-line program."""

from cnnlab.cli import run_program

run_program()
