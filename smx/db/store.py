"""Where results live: a database (SQLite under `store/` by default) and the files beside it.

The store directory holds `smx.db`, `checkpoints/<job key>/`, `logs/<job key>.log` and `locks/`.
A PostgreSQL URL (`postgresql+psycopg://user:password@host/database`) may be given instead of a directory, for a
store shared by the nodes of a cluster; files then go to `SMX_STORE_FILES` (default `store/`), which must be a
directory every node sees at the same path.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from filelock import FileLock
from sqlalchemy import Engine, create_engine, event, inspect, make_url, select, text
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from smx.db.models import SCHEMA_VERSION, Base, Meta
from smx.db.views import create_views
from smx.errors import UserError
from smx.paths import expand_home

DEFAULT_STORE = "store"
BUSY_TIMEOUT_MS = 60_000
# PostgreSQL advisory lock key under which clients create or upgrade the schema one at a time.
SCHEMA_LOCK_ID = 0x736D78  # "smx"
# OS errors that mean the store's disk refuses writes: full, over quota, read-only or forbidden.
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
STORAGE_ERRNOS = DISK_FULL_ERRNOS | {errno.EROFS, errno.EACCES, errno.EPERM}
# The same in SQLite's primary result codes (the low byte of an extended code).
SQLITE_FULL = 13
SQLITE_STORAGE_CODES = {8, 10, SQLITE_FULL, 14}  # READONLY, IOERR, FULL, CANTOPEN


class StoreError(UserError):
    pass


class NoStoreYet(StoreError):
    """Nothing at the location has smx's tables: `smx submit` would create the store there."""


def storage_error(path: Path | str, reason: str, *, disk_full: bool, then: str = "run the command again") -> StoreError:
    """A write to the store failed: say where, why, and what to do about it."""
    if disk_full:
        fix = f"free some space on the disk that holds {path}, or move the store (--store / SMX_STORE)"
    else:
        fix = f"make {path} writable, or use a store elsewhere (--store / SMX_STORE)"
    return StoreError(f"cannot write to {path}: {reason}.\nFix: {fix}; then {then}.")


def file_storage_error(error: OSError, store_root: Path, *, then: str = "run the command again") -> StoreError:
    return storage_error(error.filename or store_root, error.strerror or str(error),
                         disk_full=error.errno in DISK_FULL_ERRNOS, then=then)


def storage_cause(error: BaseException) -> OSError | None:
    """The full disk or unwritable file behind an error, if that is what it was. Libraries may wrap it: torch
    reports a checkpoint write that failed for want of space as a RuntimeError raised while handling the OSError."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in STORAGE_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


@dataclass
class Store:
    url: str
    root: Path
    engine: Engine = field(repr=False)

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @property
    def sqlite_path(self) -> Path | None:
        database = self.engine.url.database
        return Path(database) if self.is_sqlite and database else None

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on any error."""
        with self._storage_failures_reported(), sessionmaker(self.engine, expire_on_commit=False).begin() as session:
            yield session

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for reading only: it takes no write lock, so it never delays a running scheduler."""
        engine = self.engine.execution_options(smx_read_only=True)
        with self._storage_failures_reported(), sessionmaker(engine, expire_on_commit=False).begin() as session:
            yield session

    @contextmanager
    def _storage_failures_reported(self) -> Iterator[None]:
        """A full disk or a read-only database file becomes a StoreError naming the file; the transaction that
        met it has been rolled back, so the database holds all of it or nothing."""
        try:
            yield
        except OperationalError as error:
            code = getattr(error.orig, "sqlite_errorcode", None)
            if self.sqlite_path is None or code is None or code & 0xFF not in SQLITE_STORAGE_CODES:
                raise
            raise storage_error(self.sqlite_path, str(error.orig), disk_full=code & 0xFF == SQLITE_FULL) from error

    def checkpoint_dir(self, job_key: str) -> Path:
        return self.root / "checkpoints" / job_key

    def log_path(self, job_key: str) -> Path:
        return self.root / "logs" / f"{job_key}.log"

    @property
    def locks_dir(self) -> Path:
        return self.root / "locks"

    @property
    def display_location(self) -> str:
        """The location to show people: a server URL's password is hidden."""
        return self.location if self.is_sqlite else self.engine.url.render_as_string(hide_password=True)

    @property
    def location(self) -> str:
        """What to pass as --store / SMX_STORE to reach this store from another process."""
        return str(self.root) if self.is_sqlite and self.sqlite_path == self.root / "smx.db" else self.url


def resolve_location(location: str | None) -> tuple[str, Path]:
    """Turn --store / SMX_STORE into (database URL, files root)."""
    location = location or os.environ.get("SMX_STORE") or DEFAULT_STORE
    if "://" in location:
        # PostgreSQL's own URL forms mean psycopg (version 3) to smx, the driver it installs.
        for scheme in ("postgresql://", "postgres://"):
            if location.startswith(scheme):
                location = "postgresql+psycopg://" + location.removeprefix(scheme)
        return location, Path(os.environ.get("SMX_STORE_FILES", DEFAULT_STORE)).resolve()
    root = expand_home(location, "--store / SMX_STORE").resolve()
    return f"sqlite:///{root / 'smx.db'}", root


def _sqlite_engine(url: str) -> Engine:
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def configure(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # We issue BEGIN ourselves (below): pysqlite's deferred BEGIN lets two writers deadlock on upgrade.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # Switching to WAL needs an exclusive lock, and WAL persists in the file: switch only a new database.
        if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def begin_immediate(connection) -> None:  # type: ignore[no-untyped-def]
        # Take the write lock up front so concurrent claims queue on busy_timeout instead of failing.
        read_only = connection.get_execution_options().get("smx_read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _shown(url: str) -> str:
    """A URL fit to print: its password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _server_engine(url: str) -> Engine:
    """A database server's engine (PostgreSQL: `postgresql+psycopg://user:password@host/database`)."""
    if not url.startswith("postgresql+psycopg://"):
        raise StoreError(f"smx cannot keep a store at {_shown(url)!r}.\n"
                         "Fix: give a directory (SQLite), or a URL like postgresql+psycopg://user:password@host/database.")
    try:
        return create_engine(url, pool_pre_ping=True)
    except ArgumentError as error:
        raise StoreError(f"cannot use the store URL {_shown(url)!r}: {error}.\n"
                         "Fix: give a directory, or a URL like postgresql+psycopg://user:password@host/database.") from error
    except ModuleNotFoundError as error:
        raise StoreError(f"the store URL {_shown(url)!r} needs the Python package {error.name!r}, which is not installed.\n"
                         "Fix: pip install 'smx[cluster]' (PostgreSQL through psycopg).") from error


def open_store(location: str | None = None, *, create: bool = True) -> Store:
    """Open (and with `create`, initialise or migrate) the store at a directory or SQLAlchemy URL."""
    url, root = resolve_location(location)
    if url.startswith("sqlite"):
        database = Path(url.removeprefix("sqlite:///"))
        if root.is_file():
            raise StoreError(f"{root} is a file; a store is the directory that holds smx.db and its checkpoints.\n"
                             f"Fix: pass the directory, --store {root.parent if root.name == 'smx.db' else '<dir>'}.")
        if not create and not database.exists():
            raise NoStoreYet(
                f"no smx store at {root} (expected {database}).\n"
                "Fix: run `smx submit experiments/quickstart.toml` to create one, or point --store / SMX_STORE "
                "at an existing store."
            )
    if create:
        try:
            for sub in ("", "checkpoints", "logs", "locks"):
                (root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            where = "--store or SMX_STORE" if url.startswith("sqlite") else "SMX_STORE_FILES"
            raise StoreError(f"cannot create the store directory {root}: {error.strerror}.\n"
                             f"Fix: choose a writable location with {where}.") from error
    engine = _sqlite_engine(url) if url.startswith("sqlite") else _server_engine(url)
    store = Store(url=url, root=root, engine=engine)
    try:
        version = stored_version(store) if not create else None
        if not create and version is None:
            store.engine.dispose()
            where = f"the database {store.sqlite_path}" if store.is_sqlite else store.display_location
            raise NoStoreYet(f"{where} has no smx tables: it is not an smx store, or one still being created.\n"
                             "Fix: point --store / SMX_STORE at an smx store, or wait for `smx submit` to create it.")
        # A store written by an older smx is upgraded on first use, by reading commands too: they need its tables.
        if create or (version is not None and version < SCHEMA_VERSION):
            with _schema_lock(store):
                initialise(store)
        else:
            check_version(store)
    except DatabaseError as error:  # OperationalError, or a file that is not an SQLite database at all
        store.engine.dispose()
        if store.is_sqlite:
            raise StoreError(f"cannot open the store database {store.sqlite_path}: {error.orig}.\n"
                             "Fix: check the path and its permissions; a damaged database file can be moved away, "
                             "and `smx submit` starts a new store.") from error
        raise StoreError(f"cannot open the store database {store.display_location}: {error.orig}.\n"
                         "Fix: check the server's address and that it runs, the user name and password, and the "
                         "database name in the URL.") from error
    return store


@contextmanager
def _schema_lock(store: Store) -> Iterator[None]:
    """One process at a time creates or upgrades a store's schema.

    Two `smx submit` started together both create the database; SQLite may answer the second "database is locked"
    at once (without waiting) while the first switches a new file to WAL, so they take turns instead.
    """
    if not store.is_sqlite:
        # A server store's clients may be on several hosts: they take turns through the server's own lock.
        with store.engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": SCHEMA_LOCK_ID})
            connection.commit()
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": SCHEMA_LOCK_ID})
                connection.commit()
        return
    with FileLock(store.locks_dir / "schema.lock", timeout=BUSY_TIMEOUT_MS / 1000):
        yield


def stored_version(store: Store) -> int | None:
    if not inspect(store.engine).has_table("meta"):
        return None
    # A read session: opening a store must not wait behind a scheduler that is writing.
    with store.read_session() as session:
        value = session.scalar(select(Meta.value).where(Meta.key == "schema_version"))
    return int(value) if value is not None else None


def check_version(store: Store) -> None:
    version = stored_version(store)
    if version is not None and version > SCHEMA_VERSION:
        raise StoreError(
            f"the store at {store.display_location} has schema version {version}, newer than this smx "
            f"understands ({SCHEMA_VERSION}).\nFix: upgrade smx."
        )


def initialise(store: Store) -> None:
    """Create missing tables and views, and upgrade an older schema in place."""
    from smx.db.migrations import migrate

    check_version(store)
    version = stored_version(store)
    Base.metadata.create_all(store.engine)
    with store.engine.begin() as connection:
        if version is not None and version < SCHEMA_VERSION:
            migrate(connection, version)
        create_views(connection)
        connection.execute(
            text("DELETE FROM meta WHERE key = 'schema_version'"),
        )
        connection.execute(
            text("INSERT INTO meta (key, value) VALUES ('schema_version', :version)"),
            {"version": str(SCHEMA_VERSION)},
        )
