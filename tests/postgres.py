"""A throwaway PostgreSQL server for tests: Debian's ``postgresql`` binaries, a temp data directory, a loopback
port, password authentication (scram-sha-256, as a real server has it), stopped afterwards. Skips (with the reason)
where PostgreSQL is not installed. URLs are the plain ``postgresql://`` form users write (the psycopg 3 driver)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def missing_reason() -> str | None:
    """Why a PostgreSQL server cannot be started here, or None."""
    if not (_binary("initdb") and _binary("pg_ctl")):
        return "PostgreSQL is not installed (no initdb/pg_ctl): apt-get install postgresql"
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "running as root without runuser: PostgreSQL refuses to run as root"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg (3) is not installed: pip install 'psycopg[binary]'"
    return None


PASSWORD = "s3cret-pw"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A running test server: its admin URL, and stop/start to take it away and bring it back on the same port."""

    def __init__(self, url: str, ctl: list[str], options: str, run: dict[str, Any]) -> None:
        self.url, self._ctl, self._options, self._run = url, ctl, options, run

    def stop(self) -> None:
        subprocess.run([*self._ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)

    def start(self) -> None:
        subprocess.run([*self._ctl, "-o", self._options, "start"], **self._run)


@contextmanager
def postgres_control() -> Iterator[Server]:
    """Start a server (database ``postgres``, user ``nas`` with `PASSWORD`, on loopback); stop it afterwards."""
    root = Path(tempfile.mkdtemp(prefix="nas-pg-"))  # /tmp itself: the postgres user must reach it
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse root: run them as Debian's postgres user
        prefix = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", _free_port()
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if prefix:
        shutil.chown(pwfile, "postgres", "postgres")
    run: dict[str, Any] = {"check": True, "capture_output": True, "text": True, "timeout": 120}
    init = [_binary("initdb"), "-D", str(data), "-A", "scram-sha-256", f"--pwfile={pwfile}", "-U", "nas", "--no-sync"]
    subprocess.run([*prefix, *init], **run)
    options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=200"
    ctl = [*prefix, _binary("pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w"]
    server = Server(f"postgresql://nas:{PASSWORD}@127.0.0.1:{port}/postgres", ctl, options, run)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server; yield its admin URL."""
    with postgres_control() as server:
        yield server.url


def create_database(admin_url: str, name: str) -> str:
    """A new empty database on the server; its URL."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}"
