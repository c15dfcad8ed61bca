"""The SQL store: :class:`IStore` on a :class:`~serialproxy.database.Database`.

Each query is a module-level ``_txn(cursor, ...)`` function run in one
transaction by the pool. Invariants that must hold across proxy nodes are
the database's: the console lock is a primary key, taken with
``INSERT ... ON CONFLICT DO NOTHING`` (sqlite and PostgreSQL alike).
"""

from attrs import define
from zope.interface import implementer

from .database import Database
from .errors import Conflict
from .interfaces import ApiKey, ConsoleLock, ConsoleToken, IStore, SerialPort, Server

__all__ = ["SQLStore"]

_KEY_COLUMNS = "id, tenant_id, is_admin, description, created"
_TOKEN_COLUMNS = "token_hash, server_id, port_index, host, port, tenant_id, created, expires"
_LOCK_COLUMNS = "server_id, port_index, session_id, node, peer, tenant_id, since, expires"


def _key(row) -> ApiKey:
    return ApiKey(row[0], row[1], bool(row[2]), row[3], row[4])


def _create_key_txn(cursor, key, key_hash):
    cursor.execute(
        f"INSERT INTO api_keys ({_KEY_COLUMNS}, key_hash) VALUES (?, ?, ?, ?, ?, ?)",
        (key.id, key.tenant_id, key.is_admin, key.description, key.created, key_hash),
    )


def _find_key_txn(cursor, key_hash):
    row = cursor.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,)).fetchone()
    return _key(row) if row else None


def _list_keys_txn(cursor):
    return [_key(row) for row in cursor.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created, id").fetchall()]


def _revoke_key_txn(cursor, key_id):
    return cursor.execute("DELETE FROM api_keys WHERE id = ?", (key_id,)).rowcount > 0


def _create_server_txn(cursor, server):
    for port in server.serial_ports:
        taken = cursor.execute(
            "SELECT server_id FROM serial_ports WHERE host = ? AND port = ?", (port.host, port.port)
        ).fetchone()
        if taken:
            raise Conflict(f"serial port {port.host}:{port.port} already belongs to server {taken[0]}")
    cursor.execute(
        "INSERT INTO servers (id, name, tenant_id, status, created) VALUES (?, ?, ?, ?, ?)",
        (server.id, server.name, server.tenant_id, server.status, server.created),
    )
    for port in server.serial_ports:
        cursor.execute(
            "INSERT INTO serial_ports (server_id, port_index, host, port) VALUES (?, ?, ?, ?)",
            (server.id, port.index, port.host, port.port),
        )


def _servers_txn(cursor, where, params):
    rows = cursor.execute(
        f"SELECT id, name, tenant_id, status, created FROM servers {where} ORDER BY created, id", params
    ).fetchall()
    if not rows:
        return []
    ports = {}
    port_rows = cursor.execute(
        f"SELECT server_id, port_index, host, port FROM serial_ports WHERE server_id IN "
        f"(SELECT id FROM servers {where}) ORDER BY server_id, port_index",
        params,
    ).fetchall()
    for server_id, index, host, port in port_rows:
        ports.setdefault(server_id, []).append(SerialPort(index, host, port))
    return [Server(*row, serial_ports=tuple(ports.get(row[0], ()))) for row in rows]


def _get_server_txn(cursor, server_id):
    found = _servers_txn(cursor, "WHERE id = ?", (server_id,))
    return found[0] if found else None


def _list_servers_txn(cursor, tenant_id):
    if tenant_id is None:
        return _servers_txn(cursor, "", ())
    return _servers_txn(cursor, "WHERE tenant_id = ?", (tenant_id,))


def _delete_server_txn(cursor, server_id):
    for table in ("console_locks", "console_tokens", "serial_ports"):
        cursor.execute(f"DELETE FROM {table} WHERE server_id = ?", (server_id,))
    return cursor.execute("DELETE FROM servers WHERE id = ?", (server_id,)).rowcount > 0


def _add_token_txn(cursor, token):
    cursor.execute(
        f"INSERT INTO console_tokens ({_TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (token.token_hash, token.server_id, token.port_index, token.host, token.port,
         token.tenant_id, token.created, token.expires),
    )


def _find_token_txn(cursor, token_hash):
    row = cursor.execute(f"SELECT {_TOKEN_COLUMNS} FROM console_tokens WHERE token_hash = ?", (token_hash,)).fetchone()
    return ConsoleToken(*row) if row else None


def _purge_tokens_txn(cursor, now):
    return cursor.execute("DELETE FROM console_tokens WHERE expires < ?", (now,)).rowcount


def _acquire_lock_txn(cursor, lock, now):
    cursor.execute(
        "DELETE FROM console_locks WHERE server_id = ? AND port_index = ? AND expires < ?",
        (lock.server_id, lock.port_index, now),
    )
    inserted = cursor.execute(
        f"INSERT INTO console_locks ({_LOCK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT DO NOTHING",
        (lock.server_id, lock.port_index, lock.session_id, lock.node, lock.peer,
         lock.tenant_id, lock.since, lock.expires),
    ).rowcount
    if inserted == 1:
        return None
    row = cursor.execute(
        f"SELECT {_LOCK_COLUMNS} FROM console_locks WHERE server_id = ? AND port_index = ?",
        (lock.server_id, lock.port_index),
    ).fetchone()
    return ConsoleLock(*row)


def _release_lock_txn(cursor, session_id):
    cursor.execute("DELETE FROM console_locks WHERE session_id = ?", (session_id,))


def _renew_locks_txn(cursor, node, expires):
    return cursor.execute("UPDATE console_locks SET expires = ? WHERE node = ?", (expires, node)).rowcount


@implementer(IStore)
@define
class SQLStore:
    """:class:`IStore` on sqlite or PostgreSQL."""

    _db: Database

    def create_key(self, key, key_hash):
        return self._db.run(_create_key_txn, key, key_hash)

    def find_key(self, key_hash):
        return self._db.run(_find_key_txn, key_hash)

    def list_keys(self):
        return self._db.run(_list_keys_txn)

    def revoke_key(self, key_id):
        return self._db.run(_revoke_key_txn, key_id)

    def create_server(self, server):
        d = self._db.run(_create_server_txn, server)
        d.addErrback(self._integrity, f"server {server.id} or one of its serial ports exists already (registered at the same moment?)")
        return d

    def _integrity(self, failure, message):
        """A UNIQUE constraint that another node's write broke becomes a Conflict."""
        failure.trap(self._db.pool.dbapi.IntegrityError)
        raise Conflict(message)

    def get_server(self, server_id):
        return self._db.run(_get_server_txn, server_id)

    def list_servers(self, tenant_id=None):
        return self._db.run(_list_servers_txn, tenant_id)

    def delete_server(self, server_id):
        return self._db.run(_delete_server_txn, server_id)

    def add_token(self, token):
        return self._db.run(_add_token_txn, token)

    def find_token(self, token_hash):
        return self._db.run(_find_token_txn, token_hash)

    def purge_tokens(self, now):
        return self._db.run(_purge_tokens_txn, now)

    def acquire_lock(self, lock, now):
        return self._db.run(_acquire_lock_txn, lock, now)

    def release_lock(self, session_id):
        return self._db.run(_release_lock_txn, session_id)

    def renew_locks(self, node, expires):
        return self._db.run(_renew_locks_txn, node, expires)
