"""`python -m cnnlab` runs the command-line program."""

from cnnlab.cli import main

raise SystemExit(main())
