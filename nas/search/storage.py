"""Where a study lives: a journal file in the run directory by default, any Optuna storage URL otherwise.

A URL is checked before any trial starts (`open_rdb`): it must parse, name a database SQLAlchemy knows, have its
driver installed, connect, and take a write; each failure is one line naming the URL without its password. During a
search every storage call that loses its connection is retried with exponential back-off for ``patience`` seconds
(`ResilientRDBStorage`), then fails loudly with `StorageLostError`; what was committed before stays in the study.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import optuna
import optuna.storages.journal

from nas.search.recovery import RedoCallback, heartbeat_quiet
from nas_ground.errors import UserInputError

log = logging.getLogger(__name__)

STUDY_NAME = "nas"
GRACE_BEATS = 6  # a trial whose heartbeat has been silent this many intervals has lost its owner
PATIENCE_S = 60.0  # how long a search waits for a storage that dropped mid-search before it gives up
CONNECT_TIMEOUT_S = 10  # a host that does not answer (dropped packets) fails within this, not the OS's minutes

# The driver each SQLAlchemy dialect imports by default, and the package that provides each driver module.
DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "pg8000": "pg8000",
    "mysqldb": "mysqlclient",
    "pymysql": "pymysql",
    "mysqlconnector": "mysql-connector-python",
    "pysqlite": "(part of Python: sqlite3)",
}

F = TypeVar("F", bound=Callable[..., Any])


class StorageLostError(UserInputError):
    """The storage stopped answering mid-search and did not come back within the patience."""


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (the URL as given when it does not parse)."""
    import sqlalchemy.engine

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:  # not a URL at all: it holds no password we can find
        return url
    return url if parsed.password is None else parsed.render_as_string(hide_password=True)


def _first_line(exc: BaseException, url: str) -> str:
    """The driver's own reason, one line, without the password even if the driver echoes it."""
    import sqlalchemy.engine
    import sqlalchemy.exc

    root: BaseException = exc
    while isinstance(root, optuna.exceptions.StorageInternalError) and root.__cause__ is not None:
        root = root.__cause__
    if isinstance(root, sqlalchemy.exc.DBAPIError) and root.orig is not None:
        root = root.orig
    lines = [ln.strip() for ln in str(root).splitlines() if ln.strip()]
    text = lines[0] if lines else type(root).__name__
    password = sqlalchemy.engine.make_url(url).password
    return text.replace(str(password), "***") if password else text


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a lost or refused connection: worth retrying."""
    import sqlalchemy.exc

    # what a server going away mid-commit can also leave behind: a driver error of no connection class (an
    # InternalError while the server shuts down), a session that must be rolled back, a closed result or cursor
    lost = (
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.InterfaceError,
        sqlalchemy.exc.InternalError,
        sqlalchemy.exc.DisconnectionError,
        sqlalchemy.exc.PendingRollbackError,
        sqlalchemy.exc.ResourceClosedError,
    )
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, lost) or (isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def backoff(patience: float, first: float = 0.5) -> Iterator[float]:
    """Waits of 0.5, 1, 2, 4 ... seconds (at most 16 each) whose sum stays within ``patience``."""
    total, wait = 0.0, first
    while total + wait <= patience:
        yield wait
        total += wait
        wait = min(wait * 2, 16.0)
    if patience - total > 0.05:
        yield patience - total


def _retrying(name: str, method: F) -> F:
    @functools.wraps(method)
    def call(self: ResilientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        waits = backoff(self.patience)
        attempt = 0
        start = time.monotonic()
        while True:
            try:
                return method(self, *args, **kwargs)
            except optuna.exceptions.UpdateFinishedTrialError:
                if attempt and name == "set_trial_state_values":  # the attempt that lost its answer had landed
                    return True
                raise
            except Exception as exc:
                if not transient(exc):
                    raise
                wait = next(waits, None)
                if wait is None:
                    raise StorageLostError(
                        f"storage {redact(self.url)} stopped answering mid-search ({_first_line(exc, self.url)}); "
                        f"gave up after {attempt + 1} tries over {time.monotonic() - start:.0f} s; what finished is "
                        "kept in the study: the same command resumes"
                    ) from exc
                attempt += 1
                log.warning("storage %s: %s; retry %d in %.1f s", redact(self.url), _first_line(exc, self.url),
                            attempt, wait)  # fmt: skip
                time.sleep(wait)

    return call  # type: ignore[return-value]


# Every call that reaches the database (BaseStorage's and BaseHeartbeat's API, and what _CachedStorage calls).
RETRIED = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
    "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
    "get_all_studies", "create_new_trial", "set_trial_param", "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id", "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "get_trial", "get_all_trials", "get_best_trial", "_get_trials",
    "get_n_trials", "record_heartbeat", "_get_stale_trial_ids", "get_trial_system_attrs", "get_trial_user_attrs",
)  # fmt: skip


class ResilientRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose calls survive a dropped connection for ``patience`` seconds (exponential
    back-off), then raise `StorageLostError`. A call whose commit landed but whose answer was lost may run twice:
    harmless for reads and attributes; a doubled ``create_new_trial`` leaves one RUNNING trial without an owner,
    which the heartbeat check fails and redoes (never counted)."""

    patience: float = PATIENCE_S


for _name in RETRIED:
    if hasattr(optuna.storages.RDBStorage, _name):
        setattr(ResilientRDBStorage, _name, _retrying(_name, getattr(optuna.storages.RDBStorage, _name)))


def _driver_error(url: str, backend: str, driver: str) -> UserInputError:
    package = DRIVER_PACKAGES.get(driver, driver)
    hint = f"pip install '{package}'"
    if backend == "mysql" and driver == "mysqldb":
        hint += ", or write mysql+pymysql://... with pip install pymysql"
    return UserInputError(f"storage {redact(url)} needs the {driver} driver for {backend}, not installed: {hint}")


def _sqlite_check(url: str, database: str | None) -> None:
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        raise UserInputError(
            f"storage {url}: an in-memory SQLite database keeps nothing after the search; write "
            "sqlite:///path/to/study.db (three slashes for a relative path, four for an absolute one)"
        )
    path = database.removeprefix("file:").split("?", 1)[0]
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise UserInputError(f"storage {url}: the folder {parent} of the SQLite file does not exist")


def open_rdb(url: str, heartbeat: float = 10.0, patience: float = PATIENCE_S) -> ResilientRDBStorage:
    """The RDB storage at ``url``, checked: it parses, its dialect and driver load, it connects and takes a write.
    Each failure is a `UserInputError` of one line naming the URL without its password."""
    import sqlalchemy.engine
    import sqlalchemy.exc

    shown = redact(url)
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UserInputError(
            f"storage {url!r} is not a database URL (e.g. postgresql://user@host:5432/db, sqlite:///study.db)"
        ) from None
    backend, driver = parsed.get_backend_name(), None
    try:
        dialect = parsed.get_dialect()
        driver = dialect.driver
        dialect.import_dbapi()
    except sqlalchemy.exc.NoSuchModuleError:
        hint = " (write postgresql://)" if backend == "postgres" else ""
        raise UserInputError(
            f"storage {shown}: unknown database kind {parsed.drivername!r}{hint}; "
            "e.g. postgresql://, mysql+pymysql://, sqlite:///"
        ) from None
    except ImportError:
        raise _driver_error(url, backend, driver or parsed.get_driver_name()) from None
    if dialect.is_async:
        raise UserInputError(f"storage {shown}: {driver} is an asyncio driver, Optuna needs a synchronous one (e.g. "
                             f"{backend}://)")  # fmt: skip
    if backend == "sqlite":
        _sqlite_check(url, parsed.database)
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}  # a connection the server dropped is replaced
    if backend in ("postgresql", "mysql"):
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    interval = max(1, math.ceil(heartbeat))  # Optuna counts whole seconds
    try:
        with heartbeat_quiet():
            storage = ResilientRDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=interval,
                grace_period=GRACE_BEATS * interval,
                heartbeat_stale_trial_callback=RedoCallback(),
            )
        # The schema may already be there (a resumed study): make sure this connection may also write.
        with storage.engine.connect() as conn, conn.begin() as tx:
            conn.exec_driver_sql("UPDATE version_info SET schema_version = schema_version")
            tx.rollback()
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        raise UserInputError(f"storage {shown} cannot be used: {_first_line(exc, url)}") from None
    storage.patience = patience
    return storage


def describe_driver(storage: optuna.storages.BaseStorage) -> dict[str, Any] | None:
    """What ``env.json`` records of an RDB storage: the URL without password, dialect, driver and its version."""
    if not isinstance(storage, optuna.storages.RDBStorage):
        return None
    dialect = storage.engine.dialect
    module = getattr(dialect, "dbapi", None) or getattr(dialect, "loaded_dbapi", None)
    name = getattr(module, "__name__", str(dialect.driver)).split(".")[0]
    version: str | None
    try:
        version = importlib.metadata.version({"psycopg2": "psycopg2-binary"}.get(name, name))
    except importlib.metadata.PackageNotFoundError:
        version = getattr(module, "__version__", None) or getattr(module, "sqlite_version", None)
    return {"url": redact(storage.url), "dialect": dialect.name, "driver": dialect.driver, "driver_version": version}


def make_storage(
    url: str | None, run_dir: Path, heartbeat: float = 10.0, patience: float = PATIENCE_S
) -> optuna.storages.BaseStorage:
    """The journal file ``run_dir/study.journal``, or the checked RDB storage at ``url`` (`open_rdb`) with Optuna's
    heartbeat (every ``heartbeat`` seconds; stale after `GRACE_BEATS` of them) and a redo of each stale trial."""
    if url is None:
        backend = optuna.storages.journal.JournalFileBackend(str(run_dir / "study.journal"))
        return optuna.storages.journal.JournalStorage(backend)
    return open_rdb(url, heartbeat, patience)
