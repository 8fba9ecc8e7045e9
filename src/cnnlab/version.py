"""The package version, in one place: pyproject.toml (setuptools dynamic), reports and run records read it."""

__version__ = "0.1.0"
