"""A real, throwaway PostgreSQL server for tests: started on 127.0.0.1 (loopback only), stopped afterwards.

The binaries come from the `pgserver` wheel (a self-contained PostgreSQL in the `dev` extra), else from
the system (`pg_ctl` on PATH, `pg_config --bindir`, Debian's /usr/lib/postgresql/*/bin). PostgreSQL refuses
to run as root, so under root the cluster belongs to `nobody` and its commands run as that user. Nothing is
installed or changed outside one temporary folder. `start()` raises `Unavailable` (a reason to skip) only
when no binaries are found or the server does not come up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

USER = "cnnlab"  # the database superuser the tests connect as (trust authentication, loopback only)
HOST = "127.0.0.1"


class Unavailable(RuntimeError):
    """No PostgreSQL server could be started here (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Server:
    bindir: Path
    datadir: Path
    port: int
    source: str  # where the binaries came from: "pgserver wheel" or "system"

    def url(self, database: str = "postgres", *, driver: str = "") -> str:
        """An SQLAlchemy URL: `postgresql://` as users type it, or `postgresql+<driver>://`."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{USER}@{HOST}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A fresh, empty database; returns its plain `postgresql://` URL."""
        import psycopg

        with psycopg.connect(
            host=HOST, port=self.port, user=USER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def find_bindir() -> tuple[Path, str] | None:
    """A folder holding initdb, pg_ctl and postgres, and where it came from."""
    candidates: list[tuple[Path, str]] = []
    wheel = importlib.util.find_spec("pgserver")  # located, not imported (its import sets up more)
    if wheel is not None and wheel.submodule_search_locations:
        folder = Path(list(wheel.submodule_search_locations)[0]) / "pginstall" / "bin"
        candidates.append((folder, "pgserver wheel"))
    if shutil.which("pg_ctl"):
        candidates.append((Path(shutil.which("pg_ctl")).resolve().parent, "system"))
    if shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10).stdout
            candidates.append((Path(out.strip()), "system"))
    candidates += [(Path(p), "system") for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for folder, source in candidates:
        if all(os.access(folder / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return folder, source
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _as_owner() -> tuple[dict, int | None, int | None]:
    """subprocess arguments that run a command as the cluster's owner (nobody, when we are root)."""
    if os.geteuid() != 0:
        return {}, None, None
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}, nobody.pw_uid, nobody.pw_gid


def _run(command: list[str], *, timeout: float, env: dict[str, str]) -> subprocess.CompletedProcess:
    owner, _, _ = _as_owner()
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env, cwd="/", check=False, **owner
    )


@contextlib.contextmanager
def running_server(timeout_s: float = 60.0) -> Iterator[Server]:
    """Start a fresh cluster on a free loopback port; stop it and delete its folder afterwards."""
    found = find_bindir()
    if found is None:
        raise Unavailable(
            "no PostgreSQL binaries: install the dev extra (pgserver wheel) or the system's postgresql"
        )
    bindir, source = found
    _, uid, gid = _as_owner()
    root = Path(tempfile.mkdtemp(prefix="cnnlab-pg-"))  # directly under /tmp, so `nobody` can reach it
    datadir, log = root / "data", root / "server.log"
    if uid is not None:
        os.chown(root, uid, gid)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
    started = False
    try:
        init = _run(
            [
                str(bindir / "initdb"),
                "-D",
                str(datadir),
                "-U",
                USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            timeout=timeout_s,
            env=env,
        )
        if init.returncode != 0:
            raise Unavailable(
                f"initdb ({source}, {bindir}) failed: {(init.stderr or init.stdout).strip()[-400:]}"
            )
        port = _free_port()
        options = (
            f"-h {HOST} -p {port} -k {root} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        start = _run(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(datadir),
                "-l",
                str(log),
                "-w",
                "-t",
                str(int(timeout_s)),
                "-o",
                options,
                "start",
            ],
            timeout=timeout_s + 10,
            env=env,
        )
        started = True
        if start.returncode != 0:
            tail = log.read_text()[-400:] if log.is_file() else start.stderr
            raise Unavailable(f"pg_ctl start ({source}, {bindir}) failed: {tail.strip()}")
        _wait_for_port(port, timeout_s)
        yield Server(bindir, datadir, port, source)
    finally:
        if started:
            _run(
                [str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "-w", "stop"],
                timeout=60,
                env=env,
            )
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        time.sleep(0.1)
    raise Unavailable(f"PostgreSQL did not accept connections on {HOST}:{port} within {timeout_s:.0f} s")
