"""Read-only SQL for users. The connection itself refuses writes; we do not parse SQL to guess."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from smx.db.store import Store
from smx.errors import UserError

# What a read-only statement may do: read tables, call functions, run WITH RECURSIVE.
_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
# Pragmas that only report; any pragma given a value is refused.
_READ_PRAGMAS = {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "foreign_key_list"}


class QueryError(UserError):
    pass


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]


def _authorize(action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None) -> int:
    if action in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and arg1 in _READ_PRAGMAS and arg2 is None:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _sqlite_query(store: Store, sql: str, params: dict[str, Any]) -> QueryResult:
    path = store.sqlite_path
    assert path is not None
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        connection.execute("PRAGMA query_only = ON")
        connection.set_authorizer(_authorize)
        # sqlite3's execute() refuses several statements in one string, so "SELECT 1; DROP TABLE jobs" fails.
        cursor = connection.execute(sql, params)
        columns = [description[0] for description in cursor.description or []]
        return QueryResult(columns, cursor.fetchall())
    except (sqlite3.Error, sqlite3.Warning) as error:
        raise QueryError(_explain(sql, str(error))) from error
    finally:
        connection.close()


def _server_query(store: Store, sql: str, params: dict[str, Any]) -> QueryResult:
    with store.engine.connect() as connection:
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")
        try:
            result = connection.execute(text(sql), params)
            return QueryResult(list(result.keys()), [tuple(row) for row in result])
        except DBAPIError as error:
            raise QueryError(_explain(sql, str(error.orig))) from error
        finally:
            connection.rollback()


def _explain(sql: str, reason: str) -> str:
    if "not authorized" in reason or "readonly" in reason or "read-only" in reason:
        reason += " (smx query is read-only: only SELECT statements are allowed)"
    return f"query failed: {reason}\n  query: {sql.strip()}\nFix: write a single read-only SELECT; `smx query --tables` lists tables and views."


def run_query(store: Store, sql: str, params: dict[str, Any] | None = None) -> QueryResult:
    if not sql.strip():
        raise QueryError("empty query.\nFix: pass a SELECT statement, e.g. smx query \"SELECT * FROM results\".")
    params = params or {}
    return _sqlite_query(store, sql, params) if store.is_sqlite else _server_query(store, sql, params)
