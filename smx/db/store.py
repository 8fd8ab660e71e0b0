"""Where results live: a database (SQLite under `store/` by default) and the files beside it.

The store directory holds `smx.db`, `checkpoints/<job key>/`, `logs/<job key>.log` and `locks/`.
A PostgreSQL URL (`postgresql+psycopg://user:password@host/database`) may be given instead of a directory, for a
store shared by the nodes of a cluster; files then go to `SMX_STORE_FILES` (default `store/`), which must be a
directory every node sees at the same path.
"""

from __future__ import annotations

import errno
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

from filelock import FileLock
from sqlalchemy import Engine, NullPool, create_engine, delete, event, insert, inspect, make_url, select, text
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

# resolve_location and the errors are smx.db.location's, importable from here with the rest of opening a store.
from smx.db.location import NoStoreYet, StoreError, check_location, resolve_location  # noqa: F401
from smx.db.models import SCHEMA_VERSION, Base, Meta
from smx.db.views import create_views
from smx.errors import exception_chain

BUSY_TIMEOUT_MS = 60_000
# PostgreSQL advisory lock key under which clients create or upgrade the schema one at a time.
SCHEMA_LOCK_ID = 0x736D78  # "smx"
# OS errors that mean the store's disk refuses writes: full, over quota, read-only or forbidden.
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
STORAGE_ERRNOS = DISK_FULL_ERRNOS | {errno.EROFS, errno.EACCES, errno.EPERM}
# The same in SQLite's primary result codes (the low byte of an extended code).
SQLITE_BUSY = 5
SQLITE_READONLY = 8
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14
SQLITE_IOERR = 10
SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26
SQLITE_STORAGE_CODES = {SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN}
# What SQLite answers about a database file that is not one, or no longer a whole one.
SQLITE_DAMAGED_CODES = {SQLITE_CORRUPT, SQLITE_NOTADB}
# With less free space than this, an I/O error of SQLite's is most likely the full disk.
NEARLY_FULL_BYTES = 1 << 20
# What `smx plot` writes beside an experiment's certified-accuracy plot, one per analysis, by the analysis's kind:
# quickstart.png, quickstart-confidence.png, quickstart-mixing-ratio.png.
ANALYSIS_PLOT_SUFFIXES = {"confidence": "-confidence", "mixing_ratio": "-mixing-ratio"}
DAMAGED_FIX = ("the file is damaged or not an SQLite database: move it away (keep it, it may be recoverable) and "
               "`smx submit` starts a new store, or point --store / SMX_STORE at another store")


class StoreBusy(StoreError):
    """Another connection held the SQLite store's write lock for longer than BUSY_TIMEOUT_MS."""


def storage_error(path: Path | str, reason: str, *, disk_full: bool, then: str = "run the command again") -> StoreError:
    """A write to the store failed: say where, why, and what to do about it."""
    if disk_full:
        fix = f"free some space on the disk that holds {path}, or move the store (--store / SMX_STORE)"
    else:
        fix = f"make {path} writable, or use a store elsewhere (--store / SMX_STORE)"
    return StoreError(f"cannot write to {path}: {reason}.\nFix: {fix}; then {then}.")


def _unwritable_store_error(path: Path, *, store_root: Path, sqlite: bool, needed_for: str = "") -> StoreError:
    """`path`, the store's directory or its database file, refuses writes: say which, why, and what to do."""
    copy = "or copy the store somewhere writable and point --store / SMX_STORE at the copy"
    because = f" ({needed_for})" if needed_for else ""
    if path != store_root:
        return StoreError(f"cannot write to {path}{because}: the file is read-only.\n"
                          f"Fix: make it writable (chmod u+w {path}), {copy}.")
    read_only_disk = os.statvfs(path).f_flag & os.ST_RDONLY
    why = "it is on a read-only file system" if read_only_disk else "this user may not write to it"
    if sqlite:
        wal = ("SQLite keeps smx.db in WAL mode: to write to it, SQLite creates smx.db-shm and smx.db-wal beside it, "
               "and smx keeps its locks and logs there too.\n")
    else:
        wal = "smx keeps checkpoints, logs and locks there.\n"
    fix = "mount it writable" if read_only_disk else f"make it and what it holds writable (chmod -R u+w {path})"
    return StoreError(f"cannot write to the store {path}{because}: {why}.\n{wal}Fix: {fix}, {copy}.")


def file_storage_error(error: OSError, store_root: Path, *, then: str = "run the command again") -> StoreError:
    return storage_error(error.filename or store_root, error.strerror or str(error),
                         disk_full=error.errno in DISK_FULL_ERRNOS, then=then)


@contextmanager
def lock_file_errors_reported(store_root: Path) -> Iterator[None]:
    """A lock file this user may not open or create (another user's, say, in a store it may write) becomes a
    StoreError naming it. Other errors, filelock's Timeout among them, pass unchanged."""
    try:
        yield
    except OSError as error:
        if error.errno not in STORAGE_ERRNOS:
            raise
        raise file_storage_error(error, store_root) from error


def storage_cause(error: BaseException) -> OSError | None:
    """The full disk or unwritable file behind an error, if that is what it was. Libraries may wrap it: torch
    reports a checkpoint write that failed for want of space as a RuntimeError raised while handling the OSError."""
    return next((cause for cause in exception_chain(error)
                 if isinstance(cause, OSError) and cause.errno in STORAGE_ERRNOS), None)


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
        """A full disk, or a store directory or database file this process may not write, becomes a StoreError
        naming it; the transaction that met it has been rolled back, so the database holds all of it or nothing."""
        try:
            yield
        except json.JSONDecodeError as error:
            # SQLite keeps JSON columns as text that nothing checks: only a hand edit or damage makes it invalid.
            raise StoreError(f"the store database {self.display_location} holds a JSON value (a job's config, say) "
                             f"that is not valid JSON: {error}. It was edited by hand, or is damaged.\nFix: put back "
                             "the value it held (`smx query` shows such columns as text: jobs.config, jobs.runtime, "
                             "experiment_jobs.swept, aggregates.hyperparams), or restore the store from a backup."
                             ) from error
        except DatabaseError as error:
            if self.sqlite_path is None:
                raise
            if _damaged(error):
                raise StoreError(f"the store database {self.sqlite_path} is damaged: {error.orig}.\n"
                                 f"Fix: {DAMAGED_FIX}.") from error
            code = getattr(error.orig, "sqlite_errorcode", None)
            # Python 3.10's sqlite3 errors carry no code; SQLite's message for SQLITE_BUSY is this one.
            if isinstance(error, OperationalError) and (code & 0xFF == SQLITE_BUSY if code is not None
                                                        else str(error.orig) == "database is locked"):
                raise StoreBusy(f"the store database {self.sqlite_path} stayed locked for over "
                                f"{BUSY_TIMEOUT_MS // 1000} s: another program holds a write transaction open on it "
                                "(an sqlite3 shell inside BEGIN, say).\nFix: end that transaction (COMMIT, or close "
                                "the program), then run the command again, or `smx retry` a job it stopped.") from error
            if not isinstance(error, OperationalError) or code is None or code & 0xFF not in SQLITE_STORAGE_CODES:
                raise
            unwritable = self.unwritable_error()
            if unwritable is not None and code & 0xFF in (SQLITE_READONLY, SQLITE_CANTOPEN):
                raise unwritable from error
            disk_full = code & 0xFF == SQLITE_FULL or (code & 0xFF == SQLITE_IOERR and _nearly_full(self.root))
            raise storage_error(self.sqlite_path, str(error.orig), disk_full=disk_full) from error

    def unwritable_error(self, needed_for: str = "") -> StoreError | None:
        """The error to give if this process cannot write the store's directory or its database file."""
        for path in (self.root, self.sqlite_path):
            if path is not None and path.exists() and not os.access(path, os.W_OK):
                return _unwritable_store_error(path, store_root=self.root, sqlite=self.is_sqlite, needed_for=needed_for)
        return None

    def prepare_for_writing(self) -> None:
        """Create the directories of the store's files, and refuse before anything is written a store that this
        process cannot write (a read-only copy, mount or share): nothing is left half-written."""
        unwritable = self.unwritable_error()
        if unwritable is not None:
            raise unwritable
        try:
            for sub in ("", "checkpoints", "logs", "locks"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            where = "--store or SMX_STORE" if self.is_sqlite else "SMX_STORE_FILES"
            raise StoreError(f"cannot create the store directory {self.root}: {error.strerror}.\n"
                             f"Fix: choose a writable location with {where}.") from error

    def checkpoint_dir(self, job_key: str) -> Path:
        return self.root / "checkpoints" / job_key

    def log_path(self, job_key: str) -> Path:
        return self.root / "logs" / f"{job_key}.log"

    def located_checkpoint(self, job_key: str, recorded: str) -> Path:
        """The checkpoint file a row records: in this store's own files where it is there (a moved or copied
        store), else where it was written."""
        own = self.checkpoint_dir(job_key) / Path(recorded).name
        return own if own.exists() else Path(recorded)

    def located_log(self, job_key: str, recorded: str | None) -> Path | None:
        """A job's log: this store's own where it is there, else where it was written (None: never started)."""
        own = self.log_path(job_key)
        return own if own.exists() or recorded is None else Path(recorded)

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


def _sqlite_engine(url: str) -> Engine:
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def configure(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        # We issue BEGIN ourselves (below): pysqlite's deferred BEGIN lets two writers deadlock on upgrade.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
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


def read_only_sqlite_uri(database: Path) -> str:
    """An SQLite URI (for sqlite3.connect(uri, uri=True)) that reads `database` without writing anything beside it.

    In WAL mode SQLite creates smx.db-shm and smx.db-wal when the first connection opens the database and removes
    them when the last one closes. While smx.db-wal exists, a writer has the database open (or died with it open),
    and a reader needs both files: mode=ro reads through them. Without it, smx.db alone holds every commit, and
    immutable=1 lets SQLite read it without the two files, which a read-only directory would not let it create.
    A writer that starts while such a connection reads is not seen by that connection; the next one sees it.
    """
    uri = f"file:{quote(str(database))}?mode=ro"
    return uri if Path(f"{database}-wal").exists() else f"{uri}&immutable=1"


def _read_only_sqlite_engine(database: Path) -> Engine:
    """An engine that only reads `database`, for a store that this process cannot write. Every session connects
    anew (no pool): read_only_sqlite_uri chooses how to read at that moment."""
    engine = create_engine(f"sqlite:///{database}", poolclass=NullPool,
                           connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "do_connect")
    def connect_read_only(_dialect, _record, arguments, options) -> None:  # type: ignore[no-untyped-def]
        arguments[0] = read_only_sqlite_uri(database)
        options["uri"] = True

    @event.listens_for(engine, "connect")
    def configure(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, as _sqlite_engine does
        dbapi_connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    @event.listens_for(engine, "begin")
    def begin(connection) -> None:  # type: ignore[no-untyped-def]
        # No write lock to take: a write fails on its own statement, as SQLite refuses it (SQLITE_READONLY).
        connection.exec_driver_sql("BEGIN")

    return engine


def _shown(url: str) -> str:
    """A URL fit to print (resolve_location has parsed it): its password hidden."""
    return make_url(url).render_as_string(hide_password=True)


def _server_engine(url: str) -> Engine:
    """A database server's engine (PostgreSQL: `postgresql+psycopg://user:password@host/database`)."""
    if not url.startswith("postgresql+psycopg://"):
        raise StoreError(f"smx cannot keep a store at {_shown(url)!r}.\n"
                         "Fix: give a directory (SQLite), or a URL like "
                         "postgresql+psycopg://user:password@host/database.")
    try:
        return create_engine(url, pool_pre_ping=True)
    except ArgumentError as error:
        raise StoreError(f"cannot use the store URL {_shown(url)!r}: {error}.\n"
                         "Fix: give a directory, or a URL like postgresql+psycopg://user:password@host/database."
                         ) from error
    except ModuleNotFoundError as error:
        raise StoreError(f"the store URL {_shown(url)!r} needs the Python package {error.name!r}, which is not "
                         "installed.\n"
                         "Fix: pip install 'smx[cluster]' (PostgreSQL through psycopg).") from error


def open_store(location: str | None = None, *, create: bool = True) -> Store:
    """Open (and with `create`, initialise or migrate) the store at a directory or SQLAlchemy URL.

    Without `create`, a directory store that this process cannot write (a read-only copy, mount or share, or a
    read-only smx.db) is opened for reading only: reading commands work, and a write is refused with the reason and
    the fix.
    """
    url, root = check_location(location)
    if url.startswith("sqlite"):
        database = Path(url.removeprefix("sqlite:///"))
        if not create and not database.exists():
            raise NoStoreYet(
                f"no smx store at {root} (expected {database}).\n"
                "Fix: run `smx submit experiments/quickstart.toml` to create one, or point --store / SMX_STORE "
                "at an existing store."
            )
        read_only = not create and not (os.access(root, os.W_OK) and os.access(database, os.W_OK))
        engine = _read_only_sqlite_engine(database) if read_only else _sqlite_engine(url)
    else:
        read_only, engine = False, _server_engine(url)
    store = Store(url=url, root=root, engine=engine)
    try:
        if create:
            if (unwritable := store.unwritable_error()) is not None:
                raise unwritable
            if not store.is_sqlite or store.sqlite_path.exists():
                _refuse_foreign_database(store)  # before the store's directories are made beside it
            store.prepare_for_writing()
        version = stored_version(store) if not create else None
        if not create and version is None:
            _refuse_foreign_database(store)
            where = f"the database {store.sqlite_path}" if store.is_sqlite else store.display_location
            raise NoStoreYet(f"{where} has no smx tables: it is not an smx store, or one still being created.\n"
                             "Fix: point --store / SMX_STORE at an smx store, or wait for `smx submit` to create it "
                             "(a creation that was interrupted is finished by the next `smx submit` or `smx import`).")
        # A store written by an older smx is upgraded on first use, by reading commands too: they need its tables.
        upgrade = version is not None and version < SCHEMA_VERSION
        if upgrade and (unwritable := store.unwritable_error(
                f"it has schema version {version}, which this smx must first upgrade to {SCHEMA_VERSION}")):
            raise unwritable
        if create or upgrade:
            with _schema_lock(store):
                if not read_only:
                    _use_wal(store)
                initialise(store)
        else:
            check_version(store)
            if not read_only:
                _use_wal(store)
    except DatabaseError as error:  # OperationalError, or a file that is not an SQLite database at all
        store.engine.dispose()
        if store.is_sqlite:
            raise _sqlite_open_error(store, error) from error
        raise StoreError(f"cannot open the store database {store.display_location}: {error.orig}.\n"
                         "Fix: check the server's address and that it runs, the user name and password, and the "
                         "database name in the URL.") from error
    except StoreError:
        store.engine.dispose()
        raise
    return store


def _sqlite_open_error(store: Store, error: DatabaseError) -> StoreError:
    """Why SQLite could not open the store's database, with the fix for that reason: only a damaged file is to be
    moved away, never one that is merely unreadable or read-only."""
    code = getattr(error.orig, "sqlite_errorcode", None)  # Python 3.11 and later
    unwritable = store.unwritable_error()
    if unwritable is not None and code is not None and code & 0xFF in (SQLITE_READONLY, SQLITE_CANTOPEN):
        return unwritable
    readable = f"check that this user may read {store.sqlite_path} and its directory"
    if code is not None and code & 0xFF in (SQLITE_IOERR, SQLITE_FULL) and _nearly_full(store.root):
        return storage_error(store.sqlite_path, f"{error.orig}, and the disk is full", disk_full=True)
    if code is None:
        fix = f"{readable}; if it may, {DAMAGED_FIX}"
    else:
        fix = DAMAGED_FIX if code & 0xFF in SQLITE_DAMAGED_CODES else readable
    return StoreError(f"cannot open the store database {store.sqlite_path}: {error.orig}.\nFix: {fix}.")


def _damaged(error: DatabaseError) -> bool:
    """Whether SQLite found the database file damaged (a page of it overwritten, say), not merely unreachable."""
    code = getattr(error.orig, "sqlite_errorcode", None)  # Python 3.11 and later
    if code is None:
        return str(error.orig) in ("database disk image is malformed", "file is not a database")
    return code & 0xFF in SQLITE_DAMAGED_CODES


def _nearly_full(path: Path) -> bool:
    try:
        usage = os.statvfs(path)
    except OSError:
        return False
    return usage.f_bavail * usage.f_frsize < NEARLY_FULL_BYTES


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
    with lock_file_errors_reported(store.root):
        acquired = FileLock(store.locks_dir / "schema.lock", timeout=BUSY_TIMEOUT_MS / 1000).acquire()
    with acquired:
        yield


def _use_wal(store: Store) -> None:
    """Put an SQLite store in WAL mode, where readers never wait for a writer. The mode persists in the file, so
    this switches a new store, or one copied out of WAL mode, once; only a store known to be smx's is switched."""
    if not store.is_sqlite:
        return
    connection = store.engine.raw_connection()
    try:
        cursor = connection.cursor()
        if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()
    finally:
        connection.close()


def _table_names(store: Store) -> set[str]:
    # Through a read-only transaction: opening a store must not wait behind a process that is writing.
    with store.engine.connect().execution_options(smx_read_only=True) as connection:
        return set(inspect(connection).get_table_names())


def stored_version(store: Store) -> int | None:
    if "meta" not in _table_names(store):
        return None
    # A read session: opening a store must not wait behind a scheduler that is writing.
    with store.read_session() as session:
        value = session.scalar(select(Meta.value).where(Meta.key == "schema_version"))
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise StoreError(
            f"the store at {store.display_location} has schema version {value!r}, which no smx writes: its meta "
            "table was edited by hand, or is damaged.\nFix: put back the version number it held, or restore the store "
            "from a backup."
        ) from None


def _refuse_foreign_database(store: Store) -> None:
    """A database that holds another program's tables is not to be filled with smx's (a directory store's smx.db,
    or a server database shared with another application). Tables of smx's own alone are a store that another smx
    process is creating (under the same schema lock) or left half-made; so are other tables beside a store's own."""
    foreign = sorted(_table_names(store) - set(Base.metadata.tables))
    if not foreign or stored_version(store) is not None:
        return
    if store.is_sqlite:
        where, fix = store.sqlite_path, "point --store / SMX_STORE at a new directory, or at an smx store"
    else:
        where, fix = store.display_location, ("give smx a database of its own (`createdb -O USER smx`) and point "
                                               "--store / SMX_STORE at it, or at an smx store")
    raise StoreError(f"the database {where} is not an smx store: it holds other tables "
                     f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}), and smx writes nothing into "
                     f"another program's database.\nFix: {fix}.")


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
        connection.execute(delete(Meta).where(Meta.key == "schema_version"))
        connection.execute(insert(Meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
