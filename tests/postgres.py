"""A throwaway PostgreSQL server for tests: Debian's ``postgresql`` binaries, a temp data directory, a loopback
port, stopped afterwards. Skips (with the reason) where PostgreSQL is not installed."""

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
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server; yield its admin URL (database ``postgres``, user ``nas``, trust auth on loopback)."""
    root = Path(tempfile.mkdtemp(prefix="nas-pg-"))  # /tmp itself: the postgres user must reach it
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse root: run them as Debian's postgres user
        prefix = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", _free_port()
    run = {"check": True, "capture_output": True, "text": True, "timeout": 120}
    subprocess.run([*prefix, _binary("initdb"), "-D", str(data), "-A", "trust", "-U", "nas", "--no-sync"], **run)
    options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=200"
    ctl = [*prefix, _binary("pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w"]
    subprocess.run([*ctl, "-o", options, "start"], **run)
    try:
        yield f"postgresql+psycopg2://nas@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def create_database(admin_url: str, name: str) -> str:
    """A new empty database on the server; its URL."""
    import psycopg2

    dsn = admin_url.replace("postgresql+psycopg2://", "postgresql://")
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"
