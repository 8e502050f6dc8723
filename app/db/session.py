"""Engine, sessions, and the locks that keep several replicas on one database safe.

SQLite gets WAL, full sync and foreign keys, and one process (its writes are serialised by a process lock). PostgreSQL
gets transaction-level advisory locks for per-tenant writes and session-level ones for work that must run once
(migrations, retention).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger("reid.db")

# Advisory lock keys: (namespace, key). Namespaces keep them apart from other users of the same database.
LOCK_TENANT_WRITE = 0x5245_4900  # + tenant id: one writer per tenant gallery
LOCK_MIGRATE = (0x5245_4901, 0)
LOCK_RETENTION = (0x5245_4901, 1)
POOL_TIMEOUT_S = 10  # a request waits at most this long for a connection, then gets 503 database_busy (never a long stall)


def is_sqlite(url_or_engine: str | Engine) -> bool:
    url = url_or_engine if isinstance(url_or_engine, str) else str(url_or_engine.url)
    return url.startswith("sqlite")


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    """Create an engine whose pool holds ``pool_size`` connections (one per thread that can use one) and never overflows.

    For SQLite: WAL journal, synchronous=FULL, foreign keys on.
    """
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "hide_parameters": True}  # error traces never carry bound values (refs)
    if is_sqlite(url):
        db_path = url.split("///", 1)[-1]
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    if not url.endswith(":memory:"):
        kwargs.update(pool_size=pool_size, max_overflow=0, pool_timeout=POOL_TIMEOUT_S)
    engine = create_engine(url, **kwargs)
    if is_sqlite(url):

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


class TenantWriteLocks:
    """Serialise writes to one tenant's gallery: a PostgreSQL transaction-level advisory lock (all replicas), and on
    SQLite (one process) a process lock. Held from the start of the write transaction until its commit or rollback."""

    def __init__(self, engine: Engine) -> None:
        self.postgres = not is_sqlite(engine)
        self._locks: dict[int, threading.Lock] = {}
        self._guard = threading.Lock()

    def _process_lock(self, tenant_id: int) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(tenant_id, threading.Lock())

    @contextlib.contextmanager
    def hold(self, session: Session, tenant_id: int) -> Iterator[None]:
        """Take the tenant's write lock inside ``session``'s transaction (PostgreSQL), or the process lock (SQLite)."""
        if self.postgres:
            session.execute(text("SELECT pg_advisory_xact_lock(:ns, :key)"), {"ns": LOCK_TENANT_WRITE, "key": tenant_id % 2**31})
            yield
            return
        with self._process_lock(tenant_id):
            yield


@contextlib.contextmanager
def run_once_lock(engine: Engine, key: tuple[int, int], *, wait: bool) -> Iterator[bool]:
    """A session-level advisory lock on its own connection (PostgreSQL): yields whether it was acquired.

    ``wait=True`` blocks until it is free (migrations: the others wait, then find nothing to do); ``wait=False`` gives up at
    once (retention: another replica is doing it). SQLite (one process) always acquires.
    """
    if is_sqlite(engine):
        yield True
        return
    with engine.connect() as conn:
        acquired = _advisory(conn, key, wait)
        try:
            yield acquired
        finally:
            if acquired:
                conn.execute(text("SELECT pg_advisory_unlock(:ns, :key)"), {"ns": key[0], "key": key[1]})
                conn.commit()


def _advisory(conn: Connection, key: tuple[int, int], wait: bool) -> bool:
    params = {"ns": key[0], "key": key[1]}
    if wait:
        conn.execute(text("SELECT pg_advisory_lock(:ns, :key)"), params)
        acquired = True
    else:
        acquired = bool(conn.execute(text("SELECT pg_try_advisory_lock(:ns, :key)"), params).scalar())
    conn.commit()  # session-level locks outlive the transaction; do not leave one open
    return acquired


def run_migrations(url: str) -> None:
    """``alembic upgrade head`` against ``url`` using the packaged migrations, once however many replicas start together
    (PostgreSQL: under an advisory lock; the others wait and then find the schema at head)."""
    from alembic import command
    from alembic.config import Config

    root = Path(__file__).resolve().parents[2]
    cfg = Config(str(root / "alembic.ini"))
    cfg.set_main_option("script_location", str(root / "migrations"))
    cfg.attributes["database_url"] = url
    cfg.attributes["configure_logger"] = False
    if is_sqlite(url):
        command.upgrade(cfg, "head")
        return
    lock_engine = create_engine(url)
    try:
        with run_once_lock(lock_engine, LOCK_MIGRATE, wait=True):
            command.upgrade(cfg, "head")
    finally:
        lock_engine.dispose()
