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

A driver whose C{executemany} costs one round trip to the server per row
(pg8000, the PostgreSQL driver on PyPy) gets one statement for many rows
instead: a multi-row C{VALUES} list for an insert, C{key = ANY(array)}
for a delete by key.  (psycopg pipelines its C{executemany}; SQLite runs
in-process.)
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import Insert

#: Drivers whose executemany is one round trip per row.
ROW_AT_A_TIME = frozenset(["pg8000"])

#: Most bind parameters in one statement (PostgreSQL takes 65535).
MAX_PARAMETERS = 30000


class DriverStatement:
    """
    One Core statement, compiled on first use for each dialect it meets.
    """

    def __init__(self, statement: Any, byKeys: Any = None) -> None:
        """
        @param statement: the statement, with named bind parameters.
        @param byKeys: for a delete by key (bind parameter C{p_key}), the
            same delete for a list of keys (bind parameter C{p_keys},
            compared with C{= ANY}), used for drivers in
            L{ROW_AT_A_TIME}.
        """
        self.statement = statement
        self.byKeys = byKeys
        self._compiled: Dict[Tuple[int, str, str], Tuple[str, Sequence[str]]] = {}

    def _compile(self, conn: Connection, statement: Any) -> Tuple[str, Sequence[str]]:
        """
        The SQL text of C{statement} for C{conn}'s dialect, and the
        parameter names in positional order (empty for a dialect with
        named parameters).
        """
        dialect = conn.dialect
        key = (id(statement), dialect.name, dialect.paramstyle)
        found = self._compiled.get(key)
        if found is None:
            compiled = statement.compile(dialect=dialect)
            order: Sequence[str] = tuple(compiled.positiontup or ()) if compiled.positional else ()
            found = self._compiled[key] = (compiled.string, order)
        return found

    def executemany(self, conn: Connection, rows: List[Dict[str, Any]]) -> int:
        """
        Run the statement once per row of named parameters.

        @return: the rows affected, as the driver counts them (summed over
            C{rows} by SQLite, psycopg and pg8000).
        """
        if len(rows) > 1 and conn.dialect.driver in ROW_AT_A_TIME:
            if self.byKeys is not None:
                text, _ = self._compile(conn, self.byKeys)
                return self._run(conn, text, [([row["p_key"] for row in rows],)])
            if isinstance(self.statement, Insert):
                return self._insertMany(conn, rows)
        text, order = self._compile(conn, self.statement)
        if order:
            params: Any = [tuple([row[name] for name in order]) for row in rows]
        else:
            params = rows
        return self._run(conn, text, params)

    def _insertMany(self, conn: Connection, rows: List[Dict[str, Any]]) -> int:
        """
        Insert C{rows} with as few statements as the parameter limit
        allows: the C{VALUES} group repeated once per row.
        """
        text, order = self._compile(conn, self.statement)
        start = text.index(" VALUES (") + len(" VALUES ")
        end = text.index(")", start) + 1
        group = text[start:end]
        perStatement = max(1, MAX_PARAMETERS // max(1, len(order)))
        count = 0
        for first in range(0, len(rows), perStatement):
            chunk = rows[first : first + perStatement]
            values: List[Any] = []
            for row in chunk:
                values.extend([row[name] for name in order])
            many = text[:start] + ", ".join([group] * len(chunk)) + text[end:]
            count += self._run(conn, many, [tuple(values)])
        return count

    def _run(self, conn: Connection, text: str, params: List[Any]) -> int:
        """
        Execute C{text} once per parameter set on the driver's cursor.
        """
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
