"""PostgreSQL through SQLAlchemy 2 on pg8000: one engine per process, a session per request.

Driver errors are translated here, once: a lost or refused connection becomes
``Unavailable``; integrity violations are left to the caller's ``conflict_on``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, make_url

from shared.errors import Conflict, Unavailable
from shared.settings import Settings

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")


class Database:
    """Two pools on one server: transactions for writes, autocommit for single-statement reads.

    A read through ``read()`` costs the pre-ping and the statement, without the
    BEGIN / COMMIT / reset round trips of a transaction (pg8000 is pure Python, so each
    round trip counts on the hot path).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = _engine(settings)
        self.read_engine = _engine(settings, isolation_level="AUTOCOMMIT", pool_reset_on_return=None)

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection in a transaction, committed on success; driver failures become KinferErrors."""
        with self._translated(), self.engine.connect() as conn, _discard_on_error(conn):
            transaction = conn.begin()
            yield conn
            transaction.commit()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """An autocommit connection for reads that need no transaction."""
        with self._translated(), self.read_engine.connect() as conn, _discard_on_error(conn):
            yield conn

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as exc:
            if (
                isinstance(exc, sa_exc.DBAPIError)
                and not exc.connection_invalidated
                and _is_query_error(exc)
                and not _server_unavailable(exc)
            ):
                raise
            log.warning("database unavailable: %s", type(exc.orig if hasattr(exc, "orig") else exc).__name__)
            raise Unavailable("the database is unavailable; retry shortly", retry_after=1) from exc
        except OSError as exc:  # pg8000 lets a socket error escape while it connects (server going down)
            log.warning("database unavailable: %s", type(exc).__name__)
            raise Unavailable("the database is unavailable; retry shortly", retry_after=1) from exc
        except sa_exc.DBAPIError as exc:  # pg8000 reports a server that is starting or stopping this way
            if not _server_unavailable(exc):
                raise
            log.warning("database unavailable: SQLSTATE %s", _sqlstate(exc))
            raise Unavailable("the database is unavailable; retry shortly", retry_after=1) from exc

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return True
        except sa_exc.SQLAlchemyError:
            return False

    def close(self) -> None:
        self.engine.dispose()
        self.read_engine.dispose()


@contextmanager
def _discard_on_error(conn: Connection) -> Iterator[None]:
    """Never return a connection to the pool after an exception inside its block.

    pg8000 can fail halfway through sending a statement (a string it cannot encode):
    the server then still owes a reply, and a pooled connection would answer the next
    query with the previous one's result. Invalidating costs one reconnect, and the
    rollback that follows goes nowhere near the broken socket.
    """
    try:
        yield
    except BaseException:
        conn.invalidate()
        raise


def contains(column: sa.ColumnElement[str], part: str) -> sa.ColumnElement[bool]:
    """``column`` contains ``part``, any case: ILIKE with the pattern's wildcards escaped, a bound parameter."""
    escaped = part.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.ilike(f"%{escaped}%", escape="\\")


def _engine(settings: Settings, **options: Any) -> sa.Engine:
    return sa.create_engine(
        settings.database_url,
        pool_pre_ping=True,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_timeout=5,
        pool_recycle=1800,
        connect_args={"timeout": 5},
        **options,
    )


def _is_query_error(exc: sa_exc.DBAPIError) -> bool:
    """pg8000 reports some statement errors as OperationalError; those carry a server error dict."""
    orig = getattr(exc, "orig", None)
    args: tuple[Any, ...] = tuple(getattr(orig, "args", ()))
    return bool(args) and isinstance(args[0], dict) and "C" in args[0]


# SQLSTATE classes of a server that cannot serve now: 08 connection exception, 53 insufficient resources
# (too many connections), 57 operator intervention (shutting down, starting up: 57P01-57P03).
_UNAVAILABLE_CLASSES = ("08", "53", "57")


def _sqlstate(exc: sa_exc.DBAPIError) -> str:
    args: tuple[Any, ...] = tuple(getattr(getattr(exc, "orig", None), "args", ()))
    return str(args[0].get("C", "")) if args and isinstance(args[0], dict) else ""


def _server_unavailable(exc: sa_exc.DBAPIError) -> bool:
    return _sqlstate(exc).startswith(_UNAVAILABLE_CLASSES)


@contextmanager
def conflict_on(message: str, field: str | None = None) -> Iterator[None]:
    """Turn a unique-constraint violation inside the block into Conflict (409)."""
    try:
        yield
    except sa_exc.IntegrityError as exc:
        raise Conflict(message, field=field) from exc


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Apply the Alembic migrations to the configured database."""
    from alembic import command

    command.upgrade(alembic_config(settings), revision)


def alembic_config(settings: Settings) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["database_url"] = settings.database_url
    return cfg


def ensure_database(settings: Settings) -> bool:
    """Create the configured database if the server lacks it; True when it was created."""
    url = make_url(settings.database_url)
    name = url.database or "kinfer"
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
            if exists:
                return False
            quoted = admin.dialect.identifier_preparer.quote(name)
            conn.execute(sa.text(f"CREATE DATABASE {quoted}"))
            return True
    finally:
        admin.dispose()
