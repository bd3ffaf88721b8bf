"""Core statements compiled once per dialect and run straight on the session's DBAPI cursor.

The request path runs about twenty small statements per request. SQLAlchemy's execution
path (execution context, parameter construction, result proxy) costs 25-60 µs a statement
on top of the driver's 3-5 µs; `Prepared` keeps SQLAlchemy's compiler, types and
transaction but skips that path:

- the statement is compiled once per dialect (and per set of inserted columns);
- parameters go through each bind's type processor (`Amount`, `UTCDateTime`, enums), as
  SQLAlchemy would do, then straight to `cursor.execute` / `executemany`;
- result rows go through each column's result processor (typed by the cursor's description)
  and come back as named tuples;
- driver errors are raised as SQLAlchemy's `DBAPIError` subclasses (`IntegrityError`,
  `OperationalError` ...), and a disconnect invalidates the connection, as on SQLAlchemy's
  own path.

It runs on the connection of the caller's session, inside the session's transaction (the
connection is begun as usual, so SQLite's `BEGIN IMMEDIATE` still applies). Statements that
need Python-side column defaults, or expanding `IN` parameters, are refused when compiled:
pass every value. Engine events such as `before_cursor_execute` and `echo` do not see these
statements.
"""

from __future__ import annotations

import weakref
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.sql import ClauseElement, Insert
from sqlalchemy.sql.compiler import SQLCompiler

Processor = Callable[[Any], Any] | None
_CONNECTIONS: weakref.WeakKeyDictionary[SessionTransaction, Connection] = (
    weakref.WeakKeyDictionary()
)


def _connection(session: Session) -> Connection:
    """The connection of the session's transaction, begun if need be.

    `Session.connection()` costs about 15 µs a call; a transaction keeps its connection until
    it ends, so it is looked up once per transaction.
    """
    transaction = session.get_transaction()
    if transaction is not None:
        found = _CONNECTIONS.get(transaction)
        if found is not None:
            return found
    connection = session.connection()
    transaction = session.get_transaction()
    if transaction is not None:
        _CONNECTIONS[transaction] = connection
    return connection


Params = Mapping[str, Any]


@dataclass
class _Compiled:
    sql: str
    names: tuple[str, ...]
    """Bind names in the order the SQL takes them (positional paramstyles)."""
    positional: bool
    processors: Mapping[str, Processor]
    columns: tuple[tuple[str, Any], ...]
    """(key, type) of each result column."""
    row_type: Any = None
    results: list[Processor] | None = None
    """Result processors, set from the first cursor description."""


@dataclass
class Result:
    """Rows of one execution: named tuples, already converted to Python values."""

    rows: list[Any] = field(default_factory=list)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)

    def first(self) -> Any:
        """The first row, or None."""
        return self.rows[0] if self.rows else None

    def one(self) -> Any:
        """The only row; raises unless there is exactly one."""
        if len(self.rows) != 1:
            raise LookupError(f"expected one row, got {len(self.rows)}")
        return self.rows[0]

    def scalar_one(self) -> Any:
        """The only row's first column; raises unless there is exactly one row."""
        return self.one()[0]


class Prepared:
    """A Core statement, compiled lazily for each dialect it runs on."""

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._compiled: dict[tuple[str, tuple[str, ...]], _Compiled] = {}

    def __call__(self, session: Session, params: Params | Sequence[Params]) -> Result:
        """Runs on `session`'s connection: one parameter set, or many (executemany)."""
        connection = _connection(session)
        dialect = connection.dialect
        if isinstance(params, Mapping):
            compiled = self._compile(dialect, tuple(params))
            bound: Any = self._bind(compiled, params)
        else:
            compiled = self._compile(dialect, tuple(params[0]))
            bound = [self._bind(compiled, p) for p in params]
        dbapi = connection.connection.dbapi_connection
        assert dbapi is not None
        cursor: Any = dbapi.cursor()
        try:
            if isinstance(params, Mapping):
                cursor.execute(compiled.sql, bound)
            else:
                cursor.executemany(compiled.sql, bound)
            if cursor.description is None:
                return Result()
            return Result(self._rows(dialect, compiled, cursor))
        except dialect.loaded_dbapi.Error as exc:
            raise self._wrapped(connection, compiled.sql, params, exc, cursor) from exc
        finally:
            cursor.close()

    def _compile(self, dialect: Dialect, keys: tuple[str, ...]) -> _Compiled:
        found = self._compiled.get((dialect.name, keys))
        if found is not None:
            return found
        # An INSERT without .values() takes its columns from the parameters' keys.
        column_keys = list(keys) if isinstance(self.statement, Insert) else None
        compiled = cast(
            SQLCompiler, self.statement.compile(dialect=dialect, column_keys=column_keys)
        )
        prefetch = [*compiled.insert_prefetch, *compiled.update_prefetch]
        if prefetch:
            missing = ", ".join(column.name for column in prefetch)
            raise ValueError(f"Prepared needs every value passed; missing: {missing}")
        if any(bind.expanding for bind in compiled.binds.values()):
            raise ValueError("Prepared does not take expanding IN parameters")
        positional = bool(compiled.positional)
        names = tuple(compiled.positiontup or ()) if positional else tuple(compiled.binds)
        processors = {
            name: bind.type.dialect_impl(dialect).bind_processor(dialect)
            for name, bind in compiled.binds.items()
        }
        exported = getattr(self.statement, "exported_columns", ())
        columns = tuple((str(column.key), column.type) for column in exported)
        row_type = namedtuple("Row", [key for key, _ in columns], rename=True)  # type: ignore[misc]
        entry = _Compiled(compiled.string, names, positional, processors, columns, row_type)
        self._compiled[dialect.name, keys] = entry
        return entry

    @staticmethod
    def _bind(compiled: _Compiled, params: Params) -> Any:
        values = {}
        for name, process in compiled.processors.items():
            value = params[name]
            values[name] = value if process is None or value is None else process(value)
        if compiled.positional:
            return tuple(values[name] for name in compiled.names)
        return values

    @staticmethod
    def _rows(dialect: Dialect, compiled: _Compiled, cursor: Any) -> list[Any]:
        if compiled.results is None:
            compiled.results = [
                type_.dialect_impl(dialect).result_processor(dialect, description[1])
                for (_, type_), description in zip(
                    compiled.columns, cursor.description, strict=True
                )
            ]
        processors = compiled.results
        make = compiled.row_type
        return [
            make(
                *(
                    v if p is None or v is None else p(v)
                    for p, v in zip(processors, row, strict=True)
                )
            )
            for row in cursor.fetchall()
        ]

    @staticmethod
    def _wrapped(
        connection: Connection, sql: str, params: Any, exc: Exception, cursor: Any
    ) -> StatementError:
        dialect = connection.dialect
        raw = connection.connection.dbapi_connection
        disconnect = dialect.is_disconnect(cast(Any, exc), raw, cursor)
        if disconnect:
            connection.invalidate(exc)
        return DBAPIError.instance(
            sql,
            params,
            exc,
            dialect.loaded_dbapi.Error,
            connection_invalidated=disconnect,
            dialect=dialect,
        )
