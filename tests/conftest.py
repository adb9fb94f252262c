"""
Shared test fixtures and helpers.

Tests that need PostgreSQL or a Debian tool skip with a reason on a machine
without it, so the README's test command passes anywhere; CI sets
C{PRESENCE_REQUIRE_ALL=1}, which turns those skips into failures.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import uuid
from typing import Iterator, Optional

import pytest
from hypothesis import HealthCheck, settings

# Speed lives in benchmarks, not in unit tests: hypothesis's per-example
# deadline (200 ms) and its too-slow check only measure how busy the machine
# is, and fail a correct test on a loaded CI host.
settings.register_profile("presence", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("presence")

REQUIRE_ALL = os.environ.get("PRESENCE_REQUIRE_ALL") == "1"
# The PostgreSQL driver of the deployment: psycopg on CPython, pg8000 on
# PyPy, where psycopg does not load (README, "Running on PyPy").
_PG_DRIVER = "pg8000" if platform.python_implementation() == "PyPy" else "psycopg"
POSTGRES_URL = os.environ.get(
    "PRESENCE_TEST_PG_URL", "postgresql+%s://postgres@127.0.0.1:5432/test" % (_PG_DRIVER,)
)


def skipOrFail(reason: str) -> None:
    """
    Skip the current test, or fail it when CI demands every test run.
    """
    if REQUIRE_ALL:
        pytest.fail("PRESENCE_REQUIRE_ALL=1 but " + reason, pytrace=False)
    pytest.skip(reason)


def requireTool(name: str) -> str:
    """
    The path of the command C{name}, or skip (fail in CI) without it.
    """
    path = shutil.which(name)
    if path is None:
        skipOrFail("%s is not installed (Debian package: %s)" % (name, _PACKAGES.get(name, name)))
    return path  # type: ignore[return-value]


def requireNodeModules(directory: str, *modules: str) -> str:
    """
    The path of C{node}, or skip (fail in CI) without it or without the
    npm C{modules} installed under C{directory} (by C{npm ci} there, as
    C{.ci/run} does).
    """
    node = requireTool("node")
    missing = [m for m in modules if not os.path.isdir(os.path.join(directory, "node_modules", m))]
    if missing:
        skipOrFail(
            "npm modules %s are not installed (npm ci in %s)" % (", ".join(missing), directory)
        )
    return node


_PACKAGES = {"sipp": "sip-tester", "sipsak": "sipsak", "baresip": "baresip-core", "linphonec": "linphone-cli", "pypy3": "pypy3", "systemd-analyze": "systemd", "kamailio": "kamailio", "node": "nodejs"}

_postgresChecked: Optional[str] = None


def requirePostgres() -> str:
    """
    The SQLAlchemy URL of the test PostgreSQL server, or skip (fail in CI)
    when it cannot be reached.
    """
    global _postgresChecked
    if _postgresChecked is None:
        try:
            import sqlalchemy

            engine = sqlalchemy.create_engine(POSTGRES_URL)
            try:
                with engine.connect() as conn:
                    conn.execute(sqlalchemy.text("SELECT 1"))
            finally:
                engine.dispose()
            _postgresChecked = ""
        except Exception as e:
            _postgresChecked = "PostgreSQL is not reachable at %s: %s" % (
                POSTGRES_URL,
                str(e).splitlines()[0] if str(e) else type(e).__name__,
            )
    if _postgresChecked:
        skipOrFail(_postgresChecked)
    return POSTGRES_URL


@contextlib.contextmanager
def postgresSchema(prefix: str) -> Iterator[str]:
    """
    A fresh PostgreSQL schema, dropped afterwards: yields the URL of the
    test server whose search_path is that schema (skips, or fails in CI,
    without PostgreSQL).
    """
    import sqlalchemy

    base = requirePostgres()
    name = "%s_%s" % (prefix, uuid.uuid4().hex[:12])

    def execute(statement: str) -> None:
        engine = sqlalchemy.create_engine(base, poolclass=sqlalchemy.pool.NullPool, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(statement)
        finally:
            engine.dispose()

    execute('CREATE SCHEMA "%s"' % (name,))
    try:
        yield "%s%soptions=-csearch_path%%3D%s" % (base, "&" if "?" in base else "?", name)
    finally:
        execute('DROP SCHEMA "%s" CASCADE' % (name,))


@pytest.fixture(autouse=True)
def cleanReactor(request: pytest.FixtureRequest):
    """
    Fail a test that leaves delayed calls, listening ports or connections
    behind on the global reactor: pytest-twisted has no such check, and
    leftovers make later tests flaky.
    """
    from twisted.internet import reactor

    before = set(reactor.getDelayedCalls())
    readers = set(reactor.getReaders())
    writers = set(reactor.getWriters())
    yield
    leftCalls = [c for c in reactor.getDelayedCalls() if c not in before and c.active()]
    internal = getattr(reactor, "_internalReaders", set())
    leftReaders = [r for r in reactor.getReaders() if r not in readers and r not in internal]
    leftWriters = [w for w in reactor.getWriters() if w not in writers]
    for call in leftCalls:
        call.cancel()
    for selectable in leftReaders + leftWriters:
        try:
            selectable.connectionLost(Exception("left behind by a test"))
        except Exception:
            pass
    if leftCalls or leftReaders or leftWriters:
        pytest.fail(
            "test left the reactor dirty: delayed calls %r, readers %r, writers %r"
            % (leftCalls, leftReaders, leftWriters),
            pytrace=False,
        )


@pytest.fixture
def logEvents():
    """
    Every C{twisted.logger} event published during the test, in order.
    """
    from twisted.logger import globalLogPublisher

    seen: list = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)
