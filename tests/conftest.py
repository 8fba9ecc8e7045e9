"""Shared test settings: CPU only, one thread per process, quiet Lightning."""

import os

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("CNNLAB_QUIET", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on 127.0.0.1 for the whole session (tests/postgres_server.py); stopped after.

    Skips, saying why, only where no server can be started (no binaries: install the dev extra)."""
    from tests.postgres_server import Unavailable, running_server

    server = running_server()
    try:
        started = server.__enter__()
    except Unavailable as reason:
        pytest.skip(f"no PostgreSQL server could be started: {reason}")
    try:
        yield started
    finally:
        server.__exit__(None, None, None)


TINY_RUN = {"model.name": "lenet5", "data.name": "digits", "data.subset": 100, "train.epochs": 1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished tiny run (TINY_RUN) per test module; the tests that damage it work on a copy."""
    from cnnlab.config import from_dict
    from cnnlab.train import fit

    out = tmp_path_factory.mktemp("trained") / "run"
    fit(from_dict(TINY_RUN), out)
    return out


def pytest_collection_modifyitems(items):
    """Modules with slow end-to-end tests run first, each module kept together (its module fixtures are made
    once): with `--dist worksteal` (Makefile) the two workers then end together on short tests, instead of
    one idling while the other finishes a minute-long test it started last."""
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in slow_modules)
