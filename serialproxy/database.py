"""The database: URLs, dialects, the adbapi pool and versioned schema migrations.

One database holds all state: sqlite by default, PostgreSQL by URL. Queries
are written once with ``?`` parameters; :class:`Cursor` rewrites them for
the driver. Migrations are the numbered files in ``db-schemas/``; a database
newer than the code is refused.
"""

import fcntl
import importlib
import os
import re
import socket
import sqlite3
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import unquote, urlsplit

from attrs import define, field, frozen
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from .errors import DatabaseError, DatabaseTooNew

__all__ = [
    "NodeClaim",
    "claim_sqlite",
    "Cursor",
    "Database",
    "Dialect",
    "SCHEMA_DIR",
    "current_version",
    "migrations",
    "open_database",
    "parse_url",
    "upgrade",
    "connect",
]

SCHEMA_DIR = Path(__file__).resolve().parent / "db-schemas"
_MIGRATION = re.compile(r"^(\d{3})-[\w-]+\.sql$")
_log = Logger()


@frozen
class Dialect:
    """What differs between sqlite and PostgreSQL, and how to connect."""

    name: str
    module: str
    args: tuple
    kwargs: dict

    @property
    def paramstyle(self) -> str:
        return "qmark" if self.name == "sqlite" else "format"

    def describe(self) -> str:
        """The URL without its password, for logs and errors."""
        if self.name == "sqlite":
            return f"sqlite:///{self.args[0]}"
        return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", self.kwargs.get("dsn", ""))


SQLITE_AT_LEAST = (3, 33)  # UPDATE ... FROM (lease renewal); Debian 12 has 3.40


def parse_url(url: str) -> Dialect:
    """Turn a database URL into a :class:`Dialect`."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        if sqlite3.sqlite_version_info < SQLITE_AT_LEAST:
            raise DatabaseError(f"SQLite {sqlite3.sqlite_version} is too old: serialproxy needs SQLite "
                                f"{'.'.join(map(str, SQLITE_AT_LEAST))} or newer (UPDATE ... FROM), or PostgreSQL")
        path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        if parts.netloc or not path:
            raise DatabaseError(f"bad sqlite URL {url!r}: expected sqlite:///relative/path or sqlite:////absolute/path")
        return Dialect("sqlite", "sqlite3", (path,), {"check_same_thread": False, "timeout": 30})
    if parts.scheme in ("postgresql", "postgres"):
        import psycopg2  # noqa: F401  (fail early, with the driver's name, if missing)

        return Dialect("postgresql", "psycopg2", (), {"dsn": url})
    raise DatabaseError(f"unknown database URL {url!r}: expected sqlite:///... or postgresql://...")


class Cursor:
    """A DB-API cursor that takes ``?`` parameters whatever the driver."""

    __slots__ = ("_cursor", "_qmark", "dialect")

    def __init__(self, cursor, dialect: Dialect):
        self._cursor = cursor
        self._qmark = dialect.paramstyle == "qmark"
        self.dialect = dialect

    def execute(self, sql: str, params: tuple = ()) -> "Cursor":
        self._cursor.execute(sql if self._qmark else sql.replace("?", "%s"), params)
        return self

    def fetchone(self):
        return self._cursor.fetchone()

    def fetchall(self):
        return self._cursor.fetchall()

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount


def _prepare_sqlite(connection) -> None:
    connection.execute("PRAGMA foreign_keys = ON")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")


def _make_parent(path: str) -> None:
    """The directory an sqlite file (or its claim) goes in, made if missing."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)


def connect(dialect: Dialect):
    """A plain DB-API connection (for migrations and serialproxy-manage)."""
    try:
        if dialect.name == "sqlite":
            _make_parent(dialect.args[0])
            connection = sqlite3.connect(*dialect.args, **dialect.kwargs)
            _prepare_sqlite(connection)
            return connection
        import psycopg2

        return psycopg2.connect(**dialect.kwargs)
    except Exception as e:
        raise DatabaseError(f"cannot open database {dialect.describe()}: {str(e).strip()}") from e


def migrations() -> list:
    """``(version, path)`` of every migration, in order."""
    found = []
    for path in sorted(SCHEMA_DIR.iterdir()):
        match = _MIGRATION.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return found


def current_version() -> int:
    return migrations()[-1][0]


def _schema_version(cursor: Cursor) -> Optional[int]:
    """The schema version, or None for a database without our version table."""
    if cursor.dialect.name == "sqlite":
        exists = cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone()
    else:
        exists = cursor.execute("SELECT to_regclass('schema_version')").fetchone()[0]
    if not exists:
        return None
    row = cursor.execute("SELECT version FROM schema_version").fetchone()
    return row[0] if row else 0


def _statements(text: str):
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def _upgrade_txn(cursor: Cursor, target: int) -> tuple:
    if cursor.dialect.name == "postgresql":
        cursor.execute("SELECT pg_advisory_xact_lock(6083)")  # one node migrates at a time
    else:
        cursor.execute("BEGIN IMMEDIATE")
    found = _schema_version(cursor)
    if found is None:
        cursor.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        cursor.execute("INSERT INTO schema_version (version) VALUES (0)")
        found = 0
    if found > target:
        raise DatabaseTooNew(
            f"the database has schema version {found}, newer than this serialproxy "
            f"knows (up to {target}): run a newer serialproxy, or restore a backup"
        )
    for version, path in migrations():
        if found < version <= target:
            for statement in _statements(path.read_text(encoding="utf-8")):
                cursor.execute(statement)
            cursor.execute("UPDATE schema_version SET version = ?", (version,))
    return found, target


def upgrade(url: str, target: Optional[int] = None) -> tuple:
    """Bring the database at ``url`` to schema ``target`` (default: current).

    Returns ``(version before, version after)``; raises :class:`DatabaseTooNew`
    for a database newer than the code. Blocking: for start-up and the CLI.
    """
    dialect = parse_url(url)
    target = current_version() if target is None else target
    connection = connect(dialect)
    try:
        result = _upgrade_txn(Cursor(connection.cursor(), dialect), target)
        connection.commit()
    except BaseException:
        connection.rollback()
        raise
    finally:
        connection.close()
    if result[0] != result[1]:
        _log.info("database {db} upgraded from schema {old} to {new}", db=dialect.describe(), old=result[0], new=result[1])
    return result


@define
class Database:
    """An adbapi pool plus its dialect; runs ``fn(cursor, *args)`` in a transaction."""

    pool: Any
    dialect: Dialect

    def run(self, fn: Callable, *args, **kwargs):
        """Run ``fn(Cursor, *args, **kwargs)`` in one transaction; a Deferred."""
        return self.pool.runInteraction(_with_cursor, self.dialect, fn, *args, **kwargs)

    @property
    def integrity_error(self) -> type:
        """The driver's IntegrityError: a statement broke a constraint."""
        return importlib.import_module(self.dialect.module).IntegrityError

    def batched(self, fn: Callable, expected: tuple = ()) -> "Batched":
        """``fn`` as a callable whose calls share transactions (see :class:`Batched`)."""
        return Batched(self, fn, expected)

    def close(self) -> None:
        self.pool.close()


@define
class Batched:
    """Calls of one transaction function that share transactions (group commit).

    While a transaction of these calls is in flight, later calls wait and then
    all run, in the order they came, in the next one: a busy node pays one
    database round trip (thread hand-off, commit) for many calls. Each call
    gets its own result. An ``expected`` exception fails its call alone, so it
    must be raised before the call writes anything. A broken constraint (the
    driver's IntegrityError: a race with another node, say) fails nothing
    yet: each call of that transaction is run again alone, so only the one
    that broke it fails. Any other failure fails every call of that
    transaction (nothing of it is committed).
    """

    _db: Database
    _fn: Callable
    _expected: tuple = ()
    _waiting: list = field(factory=list)
    _busy: bool = False

    def __call__(self, *args) -> Deferred:
        done = Deferred()
        self._waiting.append((args, done))
        if not self._busy:
            self._next()
        return done

    def _next(self) -> None:
        calls, self._waiting = self._waiting, []
        self._busy = True
        self._run(calls).addBoth(self._finished, calls)

    def _run(self, calls: list) -> Deferred:
        return self._db.run(_batch_txn, self._fn, [args for args, _ in calls], self._expected)

    def _finished(self, results, calls: list) -> None:
        self._busy = False
        if isinstance(results, Failure) and len(calls) > 1 and results.check(self._db.integrity_error):
            for call in calls:
                self._run([call]).addBoth(_deliver, [call])
        else:
            _deliver(results, calls)
        if self._waiting:
            self._next()


def _deliver(results, calls: list) -> None:
    """Each call's result (or the transaction's failure) to its Deferred."""
    for i, (_, done) in enumerate(calls):
        if not isinstance(results, list):  # the transaction failed
            done.errback(results)
        elif results[i][0]:
            done.callback(results[i][1])
        else:
            done.errback(results[i][1])


def _batch_txn(cursor, fn, calls, expected):
    results = []
    for args in calls:
        try:
            results.append((True, fn(cursor, *args)))
        except expected as e:
            results.append((False, e))
    return results


def _with_cursor(transaction, dialect, fn, *args, **kwargs):
    return fn(Cursor(transaction, dialect), *args, **kwargs)


@define
class NodeClaim:
    """This process's claim to be the only serialproxy node on an sqlite database.

    An exclusive ``flock`` on a file beside the database (``<database>.node``),
    held open while the node runs; the kernel drops it when the process ends,
    however it ends. serialproxy-manage takes no claim: it may work beside the
    node (it neither deletes servers nor takes writer locks).
    """

    path: str
    _file: Any

    def release(self) -> None:
        self._file.close()


def claim_sqlite(dialect: Dialect) -> NodeClaim:
    """Claim an sqlite database for this node, or :class:`DatabaseError` naming the node that holds it.

    An sqlite database serves one node: that node may then decide from memory
    what several nodes must ask the database (see serialproxy.sessions).
    """
    path = dialect.args[0] + ".node"
    try:
        _make_parent(path)  # a fresh state directory
        claim = open(path, "a+", encoding="utf-8")
    except OSError as e:
        raise DatabaseError(f"cannot open {path}, the lock file of the database {dialect.describe()}: {e.strerror}") from e
    try:
        fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        claim.seek(0)
        holder = claim.read().strip() or "a process that did not say which"
        claim.close()
        raise DatabaseError(
            f"the sqlite database {dialect.describe()} is in use by another serialproxy node ({holder}); "
            "an sqlite database serves one node: give each node its own state_dir, or let several nodes share "
            "PostgreSQL ([database] connection = postgresql://...)") from None
    claim.seek(0)
    claim.truncate()
    claim.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    claim.flush()
    return NodeClaim(path, claim)


def open_database(url: str, reactor=None, **pool_kwargs) -> Database:
    """Upgrade the schema at ``url`` if needed, then open a pool on it."""
    upgrade(url)
    dialect = parse_url(url)
    if dialect.name == "sqlite":
        # One connection: sqlite has a single writer; WAL keeps readers going.
        options = dict(cp_min=1, cp_max=1, cp_openfun=_prepare_sqlite)
    else:
        options = dict(cp_min=1, cp_max=5, cp_reconnect=True)
    options.update(pool_kwargs)
    if reactor is not None:
        options["cp_reactor"] = reactor
    pool = adbapi.ConnectionPool(dialect.module, *dialect.args, **dialect.kwargs, **options)
    return Database(pool, dialect)
