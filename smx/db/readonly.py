"""Read-only SQL for users. The connection itself refuses writes; we do not parse SQL to guess."""

from __future__ import annotations

import contextlib
import datetime
import decimal
import json
import signal
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from sqlalchemy import text

from smx.db.store import Store, read_only_sqlite_uri
from smx.errors import UserError

# What a read-only statement may do: read tables, call functions, run WITH RECURSIVE.
_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
# Pragmas that only report, whatever their argument (a table or index name, as in pragma_table_info(name));
# every other pragma is refused.
_READ_PRAGMAS = {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "foreign_key_list"}


class QueryError(UserError):
    pass


EMPTY_QUERY = ("empty query: it holds no statement that returns rows.\n"
               "Fix: pass a SELECT statement, e.g. smx query \"SELECT * FROM results\".")


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]


def _authorize(action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None) -> int:
    if action in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and arg1 in _READ_PRAGMAS:
        return sqlite3.SQLITE_OK
    # SQLite asks this when it first sets up a pragma table-valued function such as pragma_table_info(name) on a
    # connection; nothing is written (the connection is read-only and query_only).
    if action == sqlite3.SQLITE_UPDATE and arg1 == "sqlite_master":
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _sqlite_query(store: Store, sql: str, params: dict[str, Any]) -> QueryResult:
    path = store.sqlite_path
    assert path is not None
    # A store this process may not write gets a connection that needs no -shm or -wal file beside smx.db.
    uri = read_only_sqlite_uri(path) if store.unwritable_error() else f"file:{quote(str(path))}?mode=ro"
    connection = sqlite3.connect(uri, uri=True, timeout=30)
    try:
        connection.execute("PRAGMA query_only = ON")
        connection.set_authorizer(_authorize)
        with _interrupted_by_sigint(connection):
            # sqlite3's execute() refuses several statements in one string, so "SELECT 1; DROP TABLE jobs" fails.
            cursor = connection.execute(sql, params)
            columns = [description[0] for description in cursor.description or []]
            return QueryResult(columns, cursor.fetchall())
    except sqlite3.ProgrammingError as error:
        # sqlite3 names a placeholder (?, :name) without a value in each of its messages about bindings.
        if not params and "binding" in str(error).lower():
            raise QueryError(_no_parameters(sql)) from error
        raise QueryError(_explain(sql, str(error))) from error
    except (sqlite3.Error, sqlite3.Warning) as error:
        raise QueryError(_explain(sql, str(error))) from error
    finally:
        connection.close()


# SQLite virtual-machine instructions between two looks for Ctrl-C: a few milliseconds.
PROGRESS_STEPS = 100_000


@contextlib.contextmanager
def _interrupted_by_sigint(connection: sqlite3.Connection) -> Iterator[None]:
    """Ctrl-C stops a running statement, which then raises KeyboardInterrupt.

    Python runs a signal handler only between bytecodes, and a long statement runs in SQLite without returning to
    them; so SQLite calls back into Python every PROGRESS_STEPS of its instructions, which lets the handler run,
    and the callback's answer stops the statement. Nothing changes outside the main thread (the TUI's reads), where
    signals cannot be handled, nor where SIGINT is ignored (a job started in the background by a script) or
    handled by code outside Python."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, None)):
        yield
        return
    interrupted = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        interrupted.set()

    previous = signal.signal(signal.SIGINT, stop)
    connection.set_progress_handler(lambda: interrupted.is_set(), PROGRESS_STEPS)
    try:
        yield
    except sqlite3.OperationalError:
        if interrupted.is_set():
            raise KeyboardInterrupt from None
        raise
    finally:
        connection.set_progress_handler(None, 0)
        signal.signal(signal.SIGINT, previous)
    if interrupted.is_set():  # between two steps of the statement, or after its last
        raise KeyboardInterrupt


def _server_query(store: Store, sql: str, params: dict[str, Any]) -> QueryResult:
    """On a database server: a read-only transaction, and the statement sent as a prepared statement, which the
    server refuses to hold more than one command (so "COMMIT; DELETE ..." cannot leave the read-only transaction).
    The connection is closed afterwards rather than returned to the pool, whatever the statement changed in it."""
    if params:
        compiled = text(sql).bindparams(**params).compile(dialect=store.engine.dialect)
        statement, arguments = str(compiled), compiled.params
    else:
        statement, arguments = sql, None
    connection = store.engine.raw_connection()
    try:
        driver = connection.driver_connection
        driver.rollback()
        driver.read_only = True
        with driver.cursor() as cursor:
            cursor.execute(statement, arguments, prepare=True)
            columns = [column.name for column in cursor.description or []]
            rows = cursor.fetchall() if cursor.description else []
            return QueryResult(columns, [tuple(_as_sqlite_gives(value) for value in row) for row in rows])
    except store.engine.dialect.dbapi.Error as error:
        # A placeholder ($1) is sent to the server, which then says that no value was bound to it (protocol
        # violation); ? and :name are no PostgreSQL syntax, and fail as syntax errors.
        if not params and getattr(error, "sqlstate", None) == "08P01":
            raise QueryError(_no_parameters(sql)) from error
        raise QueryError(_explain(sql, str(error).strip())) from error
    finally:
        connection.invalidate()


def _as_sqlite_gives(value: Any) -> Any:
    """A server's value as SQLite would give it, so that exports read the same from either store: JSON as text,
    times as ISO text, exact decimals as floats."""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, datetime.datetime):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value


def _explain(sql: str, reason: str) -> str:
    if "not authorized" in reason or "readonly" in reason or "read-only" in reason:
        reason += " (smx query is read-only: only SELECT statements are allowed)"
    return (f"query failed: {reason}\n  query: {sql.strip()}\n"
            "Fix: write a single read-only SELECT; `smx query --tables` lists tables and views.")


def _no_parameters(sql: str) -> str:
    return (f"query parameters (?, :name, $1) are not supported: smx query runs the statement as written.\n"
            f"  query: {sql.strip()}\nFix: write the value into the SQL, e.g. WHERE experiment = 'quickstart'.")


def tables_sql(store: Store) -> str:
    """A query listing the store's tables and views with their columns, in the store's own dialect."""
    if store.is_sqlite:
        return ("SELECT m.name AS name, m.type AS type, group_concat(p.name, ', ') AS columns "
                "FROM sqlite_master m, pragma_table_info(m.name) p "
                "WHERE m.type IN ('table', 'view') GROUP BY m.name ORDER BY m.type, m.name")
    return ("SELECT c.table_name AS name, CASE t.table_type WHEN 'VIEW' THEN 'view' ELSE 'table' END AS type, "
            "string_agg(c.column_name, ', ' ORDER BY c.ordinal_position) AS columns "
            "FROM information_schema.columns c JOIN information_schema.tables t "
            "ON t.table_schema = c.table_schema AND t.table_name = c.table_name "
            "WHERE c.table_schema = current_schema() GROUP BY c.table_name, t.table_type ORDER BY 2, 1")


def run_query(store: Store, sql: str, params: dict[str, Any] | None = None) -> QueryResult:
    if not sql.strip():
        raise QueryError(EMPTY_QUERY)
    params = params or {}
    result = _sqlite_query(store, sql, params) if store.is_sqlite else _server_query(store, sql, params)
    # Only a string of semicolons or comments runs without giving columns: every statement allowed here reads.
    if not result.columns:
        raise QueryError(EMPTY_QUERY)
    return result
