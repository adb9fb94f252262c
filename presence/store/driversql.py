"""
SQLAlchemy Core statements compiled once per dialect and run with the
driver's own C{executemany}.

Why: the store's writer runs the same few statements thousands of times a
second (insert a subscription, upsert a publication, delete by key).
Through C{Connection.execute}, SQLAlchemy looks up its compiled cache,
builds an execution context and runs every row's parameters through bind
processors; profiles of the writer thread showed that machinery costing
more than the database itself, and the writer shares the GIL with the
reactor.  The statements stay written in Core (so they follow the schema
and each dialect's quoting); only their execution skips the per-row
Python work.  Parameters must then be what the driver takes as they are:
the store's columns are text, integers, floats, booleans and bytes.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError


class DriverStatement:
    """
    One Core statement, compiled on first use for each dialect it meets.
    """

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self._compiled: Dict[str, Tuple[str, Sequence[str]]] = {}

    def _compile(self, conn: Connection) -> Tuple[str, Sequence[str]]:
        """
        The SQL text for C{conn}'s dialect, and the parameter names in
        positional order (empty for a dialect with named parameters).
        """
        dialect = conn.dialect
        key = dialect.name + ":" + dialect.paramstyle
        found = self._compiled.get(key)
        if found is None:
            compiled = self.statement.compile(dialect=dialect)
            order: Sequence[str] = tuple(compiled.positiontup or ()) if compiled.positional else ()
            found = self._compiled[key] = (compiled.string, order)
        return found

    def executemany(self, conn: Connection, rows: List[Dict[str, Any]]) -> int:
        """
        Run the statement once per row of named parameters.

        @return: the rows affected, as the driver counts them (summed over
            C{rows} by SQLite, psycopg and pg8000).
        """
        text, order = self._compile(conn)
        if order:
            params: Any = [tuple([row[name] for name in order]) for row in rows]
        else:
            params = rows
        dbapiError = conn.dialect.loaded_dbapi.Error
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            if len(params) == 1:
                cursor.execute(text, params[0])
            else:
                cursor.executemany(text, params)
            return int(cursor.rowcount)
        except dbapiError as e:
            # Raise what Connection.execute would have (IntegrityError for
            # a duplicate key, ...), so callers need not know the driver.
            raise DBAPIError.instance(text, params, e, dbapiError, dialect=conn.dialect) from e
        finally:
            cursor.close()
