"""Shared test support: databases for tests (sqlite files, PostgreSQL schemas)."""

import os
import uuid
from urllib.parse import quote

__all__ = ["postgres_url", "sqlite_url", "POSTGRES_ENV"]

POSTGRES_ENV = "SERIALPROXY_TEST_POSTGRES"


def sqlite_url(testcase) -> str:
    """A new sqlite database file in the test's temporary directory."""
    return f"sqlite:///{os.path.abspath(testcase.mktemp())}.sqlite"


def postgres_url(testcase) -> str:
    """A URL for a new, empty PostgreSQL schema, dropped when the test ends.

    The server comes from $SERIALPROXY_TEST_POSTGRES, which scripts/test sets
    to a throwaway cluster. Without it the test fails: it is never skipped.
    """
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        testcase.fail(f"${POSTGRES_ENV} is not set: run the tests with scripts/test, which starts a throwaway PostgreSQL")
    import psycopg2

    schema = "t_" + uuid.uuid4().hex[:16]
    connection = psycopg2.connect(base)
    connection.autocommit = True
    connection.cursor().execute(f"CREATE SCHEMA {schema}")

    def drop():
        connection.cursor().execute(f"DROP SCHEMA {schema} CASCADE")
        connection.close()

    testcase.addCleanup(drop)
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}options={quote(f'-csearch_path={schema}')}"
