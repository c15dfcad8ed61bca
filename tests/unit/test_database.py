"""Schema migrations on sqlite and PostgreSQL: fresh, older, current, newer."""


from twisted.trial.unittest import SynchronousTestCase

from serialproxy.database import Cursor, connect, current_version, migrations, parse_url, upgrade
from serialproxy.errors import DatabaseError, DatabaseTooNew

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


