"""Request-path reads: SQLAlchemy statements run on the driver's cursor over kept connections.

A search reads the catalog twice (the collection's revision, then its hits' rows). Through a pooled
`Connection.execute` each read pays for a pool checkout and reset and for SQLAlchemy's per-execution
machinery (cache key, execution context, result object): about 0.5 ms of Python on a CPU whose caches the
model forward has just flushed, against about 0.15 ms for the driver's own work. So these reads keep a few
connections checked out and run each statement the way SQLAlchemy itself would, minus the machinery: the
statement is compiled once per engine, expanded for its parameters (`construct_expanded_state`, which also
renders `IN` lists), executed on a DBAPI cursor, and every column goes through its type's result processor.

Statements must be plain SELECTs whose bound parameters need no conversion (ints, strings, lists of them).
Each read ends with a rollback, so no transaction or snapshot outlives it. A kept connection that the
server dropped (PostgreSQL restart, idle timeout) is discarded and the read is tried once more.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

CONNECTIONS_KEPT = 4  # the pool's default size is 5: writers keep at least one plus the overflow


class _Compiled:
    """One statement compiled for one engine: its SQL, column names and the result processors it needs."""

    def __init__(self, statement, engine: Engine):
        dialect = engine.dialect
        self.compiled = statement.compile(dialect=dialect)
        self.columns = list(statement.selected_columns.keys())
        processors = [column.type.dialect_impl(dialect).result_processor(dialect, None)
                      for column in statement.selected_columns]
        self.processors: list[tuple[int, Callable]] = [(i, p) for i, p in enumerate(processors) if p is not None]

    def driver_args(self, params: dict) -> tuple[str, Any]:
        state = self.compiled.construct_expanded_state(params)
        return state.statement, state.positional_parameters if self.compiled.positional else state.parameters

    def convert(self, row) -> tuple:
        if not self.processors:
            return tuple(row)
        values = list(row)
        for i, process in self.processors:
            values[i] = process(values[i])
        return tuple(values)


class DriverReads:
    """The request-path reads of one engine. Statements are module-level constants: each is compiled on
    first use and remembered by identity."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._kept: list = []  # pooled DBAPI connections held between reads
        self._compiled: dict[int, tuple[Any, _Compiled]] = {}
        self._lock = threading.Lock()

    def rows(self, statement, params: dict) -> tuple[list[str], list[tuple]]:
        """(column names, rows) of `statement` with `params`."""
        compiled = self._compile(statement)
        sql, args = compiled.driver_args(params)
        try:
            rows = self._execute(sql, args)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            rows = self._execute(sql, args)
        return compiled.columns, [compiled.convert(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            kept, self._kept = self._kept, []
        for conn in kept:
            conn.close()

    def _compile(self, statement) -> _Compiled:
        entry = self._compiled.get(id(statement))
        if entry is None or entry[0] is not statement:  # the statement is kept alive by the entry itself
            entry = self._compiled[id(statement)] = (statement, _Compiled(statement, self.engine))
        return entry[1]

    def _execute(self, sql: str, args) -> list:
        with self._lock:
            conn = self._kept.pop() if self._kept else None
        conn = conn or self.engine.raw_connection()
        try:
            cursor = conn.cursor()
            try:
                cursor.execute(sql, args)
                rows = cursor.fetchall()
            finally:
                cursor.close()
            conn.rollback()
        except self.engine.dialect.loaded_dbapi.Error as exc:
            dropped = self.engine.dialect.is_disconnect(exc, conn.dbapi_connection, None)
            if dropped:
                conn.invalidate(exc)
            conn.close()
            raise DBAPIError.instance(sql, args, exc, self.engine.dialect.loaded_dbapi.Error,
                                      connection_invalidated=dropped, dialect=self.engine.dialect) from None
        except BaseException:
            conn.close()
            raise
        with self._lock:
            if len(self._kept) < CONNECTIONS_KEPT:
                self._kept.append(conn)
                return rows
        conn.close()
        return rows
