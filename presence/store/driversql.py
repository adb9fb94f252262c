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
instead: C{INSERT ... SELECT * FROM unnest(one array per column)} for an
insert, C{key = ANY(array)} for a delete by key, each array one
parameter in PostgreSQL's array text form (L{arrayLiteral}).  Unlike a
multi-row C{VALUES} list, the C{unnest} text is short and the same for
any number of rows: pg8000 rescans the whole text in Python on every
execute to rewrite its placeholders, and PostgreSQL parses and plans a
few hundred C{VALUES} rows slower than it reads the arrays.  Measured on
PyPy against a local server, per batch of 368 publications: 2.7 ms of
client CPU and 8.9 ms wall with C{VALUES}, 1.1 ms and 5.3 ms with
C{unnest}; of 368 subscriptions, 5.8 ms and 17.6 ms against 1.0 ms and
4.0 ms.  (psycopg pipelines its C{executemany}; SQLite runs in-process.)
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import Insert

#: Drivers whose executemany is one round trip per row.
ROW_AT_A_TIME = frozenset(["pg8000"])


def _arrayElement(value: Any) -> str:
    """
    One element of an array in PostgreSQL's text form: strings quoted
    (so that C{""}, C{"NULL"}, braces, commas and spaces stay strings),
    bytes in C{bytea}'s hex form, C{None} as C{NULL}, and numbers and
    booleans as Python writes them, which PostgreSQL's input functions
    read for a column of the same type.  Unlike a bound parameter, no
    cast is made: a float or a bool given for an integer column fails the
    batch (the store's records hold ints, floats, bools and bytes exactly
    where their columns do).
    """
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bytes):
        return '"\\\\x' + value.hex() + '"'
    return str(value)


def arrayLiteral(values: Sequence[Any]) -> str:
    """
    A one-dimensional array in PostgreSQL's text form, for a parameter
    whose array type the statement implies (a cast, or C{column = ANY}).

    Why not hand pg8000 a list: it escapes every string of an array
    character by character in Python, twenty times slower on PyPy (230
    against 10 microseconds for 368 keys).
    """
    return "{" + ",".join([_arrayElement(value) for value in values]) + "}"


def _unnestInsert(statement: Insert) -> Insert:
    """
    C{statement} (an insert of whole rows of its table, perhaps with an
    C{ON CONFLICT} clause) taking its rows from one array per column
    instead of a C{VALUES} list: C{INSERT ... SELECT * FROM
    unnest(CAST(:name AS type[]), ...)}, with one bind parameter per
    column named after it.
    """
    columns = list(statement.table.columns)  # type: ignore[attr-defined]
    arrays = [sa.cast(sa.bindparam(c.name), sa.ARRAY(c.type)) for c in columns]
    rows = sa.select(sa.literal_column("*")).select_from(sa.func.unnest(*arrays))
    return statement.from_select([c.name for c in columns], rows)


class DriverStatement:
    """
    One Core statement, compiled on first use for each dialect it meets.
    """

    def __init__(self, statement: Any, byKeys: Any = None, upsertKey: str = "") -> None:
        """
        @param statement: the statement, with named bind parameters; an
            insert must insert whole rows of its table (all its columns).
        @param byKeys: for a delete by key (bind parameter C{p_key}), the
            same delete for a list of keys (bind parameter C{p_keys},
            compared with C{= ANY}, which tells PostgreSQL the type of
            the array literal bound to it), used for drivers in
            L{ROW_AT_A_TIME}.  An insert needs no such companion: for
            those drivers its rows go through L{_unnestInsert}.
        @param upsertKey: for an insert that replaces the row with the
            same key (C{ON CONFLICT ... DO UPDATE}), that key's column.
            Run row by row, a later row with a key replaces an earlier
            one; PostgreSQL refuses one statement that updates a row
            twice, so L{_unnestInsert} gets only the last row of each key.
        """
        self.statement = statement
        self.byKeys = byKeys
        self.upsertKey = upsertKey
        self.byColumns = _unnestInsert(statement) if isinstance(statement, Insert) else None
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
                return self._run(conn, text, [(arrayLiteral([row["p_key"] for row in rows]),)])
            if self.byColumns is not None:
                if self.upsertKey:
                    rows = list({row[self.upsertKey]: row for row in rows}.values())
                text, order = self._compile(conn, self.byColumns)
                arrays = [arrayLiteral([row[name] for row in rows]) for name in order]
                return self._run(conn, text, [tuple(arrays)])
        text, order = self._compile(conn, self.statement)
        if order:
            params: Any = [tuple([row[name] for name in order]) for row in rows]
        else:
            params = rows
        return self._run(conn, text, params)

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
