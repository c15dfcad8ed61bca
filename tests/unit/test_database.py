"""Schema migrations on sqlite and PostgreSQL: fresh, older, current, newer; transactions shared by batched calls; one node per sqlite database."""

import os
import socket
import sqlite3
import subprocess
import sys

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from serialproxy.database import Batched, Cursor, claim_sqlite, connect, current_version, migrations, parse_url, upgrade
from serialproxy.errors import DatabaseError, DatabaseTooNew, NotFound
from serialproxy.testing import inline_database

from ..support import postgres_url, sqlite_url


class MigrationContract:
    """Each TestCase provides ``make_url()`` for a new, empty database."""

    def tables(self, url):
        dialect = parse_url(url)
        connection = connect(dialect)
        try:
            cursor = Cursor(connection.cursor(), dialect)
            if dialect.name == "sqlite":
                rows = cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
            else:
                rows = cursor.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()").fetchall()
            version = cursor.execute("SELECT version FROM schema_version").fetchone()[0]
            return {r[0] for r in rows}, version
        finally:
            connection.close()

    def set_version(self, url, version):
        dialect = parse_url(url)
        connection = connect(dialect)
        Cursor(connection.cursor(), dialect).execute("UPDATE schema_version SET version = ?", (version,))
        connection.commit()
        connection.close()

    def test_fresh_database(self):
        """A new database gets every table and the current version."""
        url = self.make_url()
        self.assertEqual(upgrade(url), (0, current_version()))
        tables, version = self.tables(url)
        self.assertEqual(version, current_version())
        self.assertTrue({"schema_version", "api_keys", "servers", "serial_ports", "console_tokens", "console_locks"} <= tables)

    def test_upgrade_is_idempotent(self):
        """Upgrading a current database changes nothing."""
        url = self.make_url()
        upgrade(url)
        self.assertEqual(upgrade(url), (current_version(), current_version()))

    def test_older_database_is_upgraded(self):
        """A database at an older version is brought to the current one."""
        url = self.make_url()
        self.assertEqual(upgrade(url, target=0), (0, 0))
        self.assertEqual(self.tables(url)[1], 0)
        self.assertEqual(upgrade(url)[1], current_version())

    def test_newer_database_refused(self):
        """A database newer than the code is refused with a message saying what to do."""
        url = self.make_url()
        upgrade(url)
        self.set_version(url, current_version() + 1)
        error = self.assertRaises(DatabaseTooNew, upgrade, url)
        self.assertIn(f"schema version {current_version() + 1}", str(error))
        self.assertIn("newer serialproxy", str(error))


class SQLiteMigrationTests(MigrationContract, SynchronousTestCase):
    def make_url(self):
        return sqlite_url(self)

    def test_migrations_are_numbered(self):
        """Migration files are numbered 1, 2, ... without gaps."""
        self.assertEqual([v for v, _ in migrations()], list(range(1, len(migrations()) + 1)))

    def test_old_sqlite_refused_with_the_version_needed(self):
        """An SQLite without UPDATE ... FROM is refused by name and version, before anything is opened."""
        self.patch(sqlite3, "sqlite_version_info", (3, 31, 1))
        self.patch(sqlite3, "sqlite_version", "3.31.1")
        message = str(self.assertRaises(DatabaseError, parse_url, "sqlite:///x.sqlite"))
        self.assertIn("SQLite 3.31.1 is too old", message)
        self.assertIn("3.33 or newer", message)

    def test_bad_url(self):
        """An unknown or malformed URL is a DatabaseError naming it."""
        self.assertIn("mysql://x", str(self.assertRaises(DatabaseError, parse_url, "mysql://x")))
        self.assertRaises(DatabaseError, parse_url, "sqlite://")

    def test_unopenable_file(self):
        """A sqlite path that cannot be created is a DatabaseError, not a traceback."""
        self.assertRaises(DatabaseError, upgrade, "sqlite:////proc/no/such/dir/x.sqlite")


class PostgreSQLMigrationTests(MigrationContract, SynchronousTestCase):
    def make_url(self):
        return postgres_url(self)

    def test_unreachable_server(self):
        """A PostgreSQL URL nobody answers is a DatabaseError with the password hidden."""
        error = self.assertRaises(DatabaseError, upgrade, "postgresql://u:secret@127.0.0.1:1/db?connect_timeout=2")
        self.assertNotIn("secret", str(error))
        self.assertIn("***", str(error))




class _Conflict(Exception):
    """Stands for a driver's IntegrityError."""


class _Transactions:
    integrity_error = _Conflict
    """Database.run's stand-in: each transaction ends when the test says."""

    def __init__(self):
        self.pending = []

    def run(self, fn, *args):
        done = Deferred()
        self.pending.append((fn, args, done))
        return done

    def end_next(self):
        fn, args, done = self.pending.pop(0)
        try:
            result = fn(None, *args)
        except Exception:
            done.errback()
        else:
            done.callback(result)


def _work(cursor, value):
    if value == "gone":
        raise NotFound("gone")
    if value == "boom":
        raise ValueError("boom")
    if value == "taken":
        raise _Conflict("taken")
    return value * 2


class BatchedTests(SynchronousTestCase):
    def setUp(self):
        self.transactions = _Transactions()
        self.batched = Batched(self.transactions, _work, (NotFound,))

    def test_calls_in_flight_wait_and_share_the_next_transaction(self):
        """The first call runs at once; calls made meanwhile go together, in order, each with its own result."""
        first = self.batched(1)
        self.assertEqual(len(self.transactions.pending), 1)
        later = [self.batched(n) for n in (2, 3, 4)]
        self.assertEqual(len(self.transactions.pending), 1)
        self.transactions.end_next()
        self.assertEqual(self.successResultOf(first), 2)
        self.assertEqual(len(self.transactions.pending), 1)
        self.assertEqual(self.transactions.pending[0][1][1], [(2,), (3,), (4,)])
        self.transactions.end_next()
        self.assertEqual([self.successResultOf(d) for d in later], [4, 6, 8])
        self.assertEqual(self.transactions.pending, [])

    def test_an_expected_error_fails_its_call_alone(self):
        """NotFound (raised before writing) fails that call; the others of its transaction succeed."""
        self.batched(0)
        calls = [self.batched(v) for v in (1, "gone", 2)]
        self.transactions.end_next()
        self.transactions.end_next()
        self.assertEqual(self.successResultOf(calls[0]), 2)
        self.failureResultOf(calls[1], NotFound)
        self.assertEqual(self.successResultOf(calls[2]), 4)

    def test_a_broken_constraint_fails_its_call_alone(self):
        """An IntegrityError fails no call yet: each runs again in a transaction of its own."""
        self.batched(0)
        calls = [self.batched(v) for v in (1, "taken", 2)]
        self.transactions.end_next()
        self.transactions.end_next()  # the shared one fails
        self.assertEqual([p[1][1] for p in self.transactions.pending], [[(1,)], [("taken",)], [(2,)]])
        for _ in range(3):
            self.transactions.end_next()
        self.assertEqual(self.successResultOf(calls[0]), 2)
        self.failureResultOf(calls[1], _Conflict)
        self.assertEqual(self.successResultOf(calls[2]), 4)

    def test_any_other_error_fails_the_whole_transaction_and_the_next_runs(self):
        """An unexpected error fails every call of its transaction; calls made meanwhile still get theirs."""
        self.batched(0)
        doomed = [self.batched(v) for v in (1, "boom")]
        self.transactions.end_next()
        after = self.batched(5)
        self.transactions.end_next()
        for d in doomed:
            self.failureResultOf(d, ValueError)
        self.transactions.end_next()
        self.assertEqual(self.successResultOf(after), 10)


class _Held(_Transactions):
    """A real Database whose transactions wait until ``end_next`` (so that calls pile up into one)."""

    def __init__(self, database):
        super().__init__()
        self.database = database
        self.integrity_error = database.integrity_error

    def end_next(self):
        fn, args, done = self.pending.pop(0)
        self.database.run(fn, *args).chainDeferred(done)


def _claim(cursor, key):
    cursor.execute("INSERT INTO claims (k) VALUES (?)", (key,))
    return key


class BatchedDatabaseContract:
    """A broken constraint in a shared transaction, on a real database (PostgreSQL aborts the whole transaction)."""

    def test_a_broken_constraint_fails_its_call_alone(self):
        database = inline_database(self.make_url())
        self.addCleanup(database.close)
        self.successResultOf(database.run(lambda c: c.execute("CREATE TABLE claims (k TEXT PRIMARY KEY)")))
        self.successResultOf(database.run(_claim, "taken"))
        held = _Held(database)
        batched = Batched(held, _claim)
        batched("first")
        calls = [batched(k) for k in ("a", "taken", "b")]
        held.end_next()
        held.end_next()  # "taken" breaks the primary key: nothing of a, taken, b is committed
        while held.pending:
            held.end_next()
        self.assertEqual((self.successResultOf(calls[0]), self.successResultOf(calls[2])), ("a", "b"))
        self.failureResultOf(calls[1], database.integrity_error)
        rows = self.successResultOf(database.run(lambda c: c.execute("SELECT k FROM claims ORDER BY k").fetchall()))
        self.assertEqual([r[0] for r in rows], ["a", "b", "first", "taken"])


class SQLiteBatchedTests(BatchedDatabaseContract, SynchronousTestCase):
    def make_url(self):
        return sqlite_url(self)


class PostgreSQLBatchedTests(BatchedDatabaseContract, SynchronousTestCase):
    def make_url(self):
        return postgres_url(self)


class NodeClaimTests(SynchronousTestCase):
    """An sqlite database serves one node: the claim that makes sure of it."""

    def setUp(self):
        self.dialect = parse_url(sqlite_url(self))

    def test_second_node_refused(self):
        """A second claim on the same sqlite database is refused, naming the holder and what to do instead."""
        first = claim_sqlite(self.dialect)
        with self.assertRaises(DatabaseError) as refused:
            claim_sqlite(self.dialect)
        message = str(refused.exception)
        self.assertIn(f"pid {os.getpid()} on {socket.gethostname()}", message)
        self.assertIn("state_dir", message)
        self.assertIn("PostgreSQL", message)
        first.release()
        claim_sqlite(self.dialect).release()

    def test_fresh_state_directory(self):
        """The first start on a fresh state directory makes it, as opening the database does."""
        dialect = parse_url(f"sqlite:///{os.path.abspath(self.mktemp())}/state/serialproxy.sqlite")
        claim = claim_sqlite(dialect)
        self.addCleanup(claim.release)
        self.assertTrue(os.path.exists(dialect.args[0] + ".node"))

    def test_released_when_the_holder_dies(self):
        """The claim goes with its process, however it ends (here SIGKILL): the next node starts."""
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sys, time; from serialproxy.database import claim_sqlite, parse_url; "
             "claim = claim_sqlite(parse_url(sys.argv[1])); print('held', flush=True); time.sleep(60)", f"sqlite:///{self.dialect.args[0]}"],
            stdout=subprocess.PIPE, text=True)
        self.addCleanup(holder.stdout.close)
        try:
            self.assertEqual(holder.stdout.readline(), "held\n")
            with self.assertRaises(DatabaseError) as refused:
                claim_sqlite(self.dialect)
            self.assertIn(f"pid {holder.pid}", str(refused.exception))
        finally:
            holder.kill()
            holder.wait(10)
        claim_sqlite(self.dialect).release()
