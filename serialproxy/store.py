"""The SQL store: :class:`IStore` on a :class:`~serialproxy.database.Database`.

Each query is a module-level ``_txn(cursor, ...)`` function run in one
transaction by the pool. Invariants that must hold across proxy nodes are
the database's: the console lock is a primary key, taken with
``INSERT ... ON CONFLICT DO NOTHING`` (sqlite and PostgreSQL alike).
"""

import json

from attrs import define, field
from zope.interface import implementer

from .database import Database
from .errors import Conflict, NotFound
from .interfaces import ApiKey, ConsoleLock, ConsoleToken, Hypervisor, Image, IStore, SerialPort, Server, SessionRecord

__all__ = ["SQLStore"]

_KEY_COLUMNS = "id, tenant_id, is_admin, description, created"
_TOKEN_COLUMNS = "token_hash, server_id, port_index, host, port, tenant_id, created, expires, key_tenant_id"
_SESSION_COLUMNS = "id, server_id, port_index, mode, peer, tenant_id, node, since, expires, bytes_in, bytes_out, kick_reason, kicked_by"
_LOCK_COLUMNS = "server_id, port_index, session_id, node, peer, tenant_id, since, expires"
_SERVER_COLUMNS = "id, name, tenant_id, status, created, hypervisor_id, image_id, domain, memory_mb"
_HYPERVISOR_COLUMNS = "id, name, libvirt_uri, proxyclient_address, port_low, port_high, created, virt_type"
_IMAGE_COLUMNS = "id, name, kernel, initrd, cmdline, disk, metadata, created"
_ID_CHUNK = 500  # session ids per statement: under every sqlite build's limit on parameters


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
        f"INSERT INTO servers ({_SERVER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (server.id, server.name, server.tenant_id, server.status, server.created,
         server.hypervisor_id, server.image_id, server.domain, server.memory_mb),
    )
    _insert_serial_ports(cursor, server.id, server.serial_ports)


def _insert_serial_ports(cursor, server_id, ports):
    for port in ports:
        cursor.execute(
            "INSERT INTO serial_ports (server_id, port_index, host, port) VALUES (?, ?, ?, ?)",
            (server_id, port.index, port.host, port.port),
        )


def _servers_txn(cursor, where, params):
    rows = cursor.execute(f"SELECT {_SERVER_COLUMNS} FROM servers {where} ORDER BY created, id", params).fetchall()
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
    return [Server(*row[:5], serial_ports=tuple(ports.get(row[0], ())), hypervisor_id=row[5], image_id=row[6],
                   domain=row[7], memory_mb=row[8]) for row in rows]


def _get_server_txn(cursor, server_id):
    found = _servers_txn(cursor, "WHERE id = ?", (server_id,))
    return found[0] if found else None


def _list_servers_txn(cursor, tenant_id):
    if tenant_id is None:
        return _servers_txn(cursor, "", ())
    return _servers_txn(cursor, "WHERE tenant_id = ?", (tenant_id,))


def _set_server_status_txn(cursor, server_id, status):
    return cursor.execute("UPDATE servers SET status = ? WHERE id = ?", (status, server_id)).rowcount > 0


def _set_serial_ports_txn(cursor, server_id, ports):
    cursor.execute("DELETE FROM serial_ports WHERE server_id = ?", (server_id,))
    _insert_serial_ports(cursor, server_id, ports)


def _delete_server_txn(cursor, server_id):
    cursor.execute("UPDATE port_allocations SET state = 'free', server_id = NULL WHERE server_id = ?", (server_id,))
    for table in ("console_sessions", "console_locks", "console_tokens", "serial_ports"):
        cursor.execute(f"DELETE FROM {table} WHERE server_id = ?", (server_id,))
    return cursor.execute("DELETE FROM servers WHERE id = ?", (server_id,)).rowcount > 0


def _add_token_txn(cursor, token):
    cursor.execute(
        f"INSERT INTO console_tokens ({_TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (token.token_hash, token.server_id, token.port_index, token.host, token.port,
         token.tenant_id, token.created, token.expires, token.key_tenant_id),
    )


def _find_token_txn(cursor, token_hash):
    row = cursor.execute(f"SELECT {_TOKEN_COLUMNS} FROM console_tokens WHERE token_hash = ?", (token_hash,)).fetchone()
    return ConsoleToken(*row) if row else None


def _purge_tokens_txn(cursor, now):
    return cursor.execute("DELETE FROM console_tokens WHERE expires < ?", (now,)).rowcount


def _acquire_lock_txn(cursor, lock, now):
    # One statement: a new lock, or one whose lease ran out (its node died) taken over.
    taken = cursor.execute(
        f"INSERT INTO console_locks ({_LOCK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (server_id, port_index) DO UPDATE SET session_id = excluded.session_id, node = excluded.node, "
        "peer = excluded.peer, tenant_id = excluded.tenant_id, since = excluded.since, expires = excluded.expires "
        "WHERE console_locks.expires < ?",
        (lock.server_id, lock.port_index, lock.session_id, lock.node, lock.peer,
         lock.tenant_id, lock.since, lock.expires, now),
    ).rowcount
    if taken == 1:
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


def _hypervisor(row) -> Hypervisor:
    return Hypervisor(row[0], row[1], row[2], row[3], (row[4], row[5]), row[6], row[7])


def _create_hypervisor_txn(cursor, hypervisor):
    _unique_name(cursor, "hypervisors", "hypervisor", hypervisor.name)
    low, high = hypervisor.port_range
    cursor.execute(f"INSERT INTO hypervisors ({_HYPERVISOR_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (hypervisor.id, hypervisor.name, hypervisor.libvirt_uri, hypervisor.proxyclient_address,
                    low, high, hypervisor.created, hypervisor.virt_type))


def _unique_name(cursor, table, kind, name):
    if cursor.execute(f"SELECT id FROM {table} WHERE name = ?", (name,)).fetchone():
        raise Conflict(f"a {kind} named {name!r} exists already")


def _find_named(cursor, table, columns, make, id_or_name):
    """The row of ``table`` with this id or name (the id wins), made into a record; or None."""
    row = cursor.execute(f"SELECT {columns} FROM {table} WHERE id = ? OR name = ? ORDER BY id = ? DESC",
                         (id_or_name, id_or_name, id_or_name)).fetchone()
    return make(row) if row else None


def _list_named(cursor, table, columns, make):
    return [make(row) for row in cursor.execute(f"SELECT {columns} FROM {table} ORDER BY created, id").fetchall()]


def _image(row) -> Image:
    return Image(*row[:6], json.loads(row[6]), row[7])


def _create_image_txn(cursor, image):
    _unique_name(cursor, "images", "image", image.name)
    cursor.execute(f"INSERT INTO images ({_IMAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (image.id, image.name, image.kernel, image.initrd, image.cmdline, image.disk,
                    json.dumps(image.metadata, sort_keys=True), image.created))


def _claim_tested_port_txn(cursor, hypervisor_id, low, high, server_id):
    row = cursor.execute(
        "SELECT MIN(port) FROM port_allocations WHERE hypervisor_id = ? AND state = 'free' AND port BETWEEN ? AND ?",
        (hypervisor_id, low, high)).fetchone()
    if row is None or row[0] is None:
        return None
    claimed = cursor.execute(
        "UPDATE port_allocations SET state = 'allocated', server_id = ? "
        "WHERE hypervisor_id = ? AND port = ? AND state = 'free'", (server_id, hypervisor_id, row[0])).rowcount
    return row[0] if claimed == 1 else _claim_tested_port_txn(cursor, hypervisor_id, low, high, server_id)


def _known_ports_txn(cursor, hypervisor_id):
    return [r[0] for r in cursor.execute("SELECT port FROM port_allocations WHERE hypervisor_id = ?", (hypervisor_id,)).fetchall()]


def _record_port_txn(cursor, hypervisor_id, port, server_id):
    return cursor.execute(
        "INSERT INTO port_allocations (hypervisor_id, port, state, server_id) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (hypervisor_id, port, "allocated" if server_id else "foreign", server_id)).rowcount == 1


def _release_ports_txn(cursor, server_id):
    return cursor.execute("UPDATE port_allocations SET state = 'free', server_id = NULL WHERE server_id = ?",
                          (server_id,)).rowcount


def _count_unavailable_ports_txn(cursor, hypervisor_id, low, high):
    return cursor.execute(
        "SELECT COUNT(*) FROM port_allocations WHERE hypervisor_id = ? AND state <> 'free' AND port BETWEEN ? AND ?",
        (hypervisor_id, low, high)).fetchone()[0]


def _allocations_txn(cursor, hypervisor_id):
    return dict(cursor.execute("SELECT port, server_id FROM port_allocations WHERE hypervisor_id = ? AND state = 'allocated'",
                               (hypervisor_id,)).fetchall())


def _add_session_txn(cursor, session):
    cursor.execute(f"INSERT INTO console_sessions ({_SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (session.id, session.server_id, session.port_index, session.mode, session.peer, session.tenant_id,
                    session.node, session.since, session.expires, session.bytes_in, session.bytes_out,
                    session.kick_reason, session.kicked_by))


def _open_session_txn(cursor, session, lock, now, closed):
    if not cursor.execute("SELECT id FROM servers WHERE id = ?", (session.server_id,)).fetchone():
        raise NotFound(f"server {session.server_id} is gone")
    _close_sessions_txn(cursor, closed)
    if lock is not None:
        holder = _acquire_lock_txn(cursor, lock, now)
        if holder is not None:
            return holder
    _add_session_txn(cursor, session)
    return None


def _id_chunks(session_ids):
    """``session_ids`` in chunks of at most _ID_CHUNK: (the chunk as a tuple, its ``?, ?, …`` placeholders)."""
    session_ids = list(session_ids)
    for start in range(0, len(session_ids), _ID_CHUNK):
        chunk = tuple(session_ids[start:start + _ID_CHUNK])
        yield chunk, ", ".join("?" * len(chunk))


def _close_sessions_txn(cursor, session_ids):
    for chunk, marks in _id_chunks(session_ids):
        cursor.execute(f"DELETE FROM console_locks WHERE session_id IN ({marks})", chunk)
        cursor.execute(f"DELETE FROM console_sessions WHERE id IN ({marks})", chunk)


def _list_sessions_txn(cursor, now, server_id):
    where, params = ("AND server_id = ?", (now, server_id)) if server_id else ("", (now,))
    rows = cursor.execute(f"SELECT {_SESSION_COLUMNS} FROM console_sessions WHERE expires >= ? AND kick_reason IS NULL {where} "
                          "ORDER BY since, id", params).fetchall()
    return [SessionRecord(*row) for row in rows]


_COUNTER_ROWS = 300  # byte counts per statement: 900 parameters, within any sqlite's limit (999)


def _renew_sessions_txn(cursor, node, expires, counters, only=None):
    # One statement extends every lease of the node (its id is unique to a
    # run), and the byte counts go in a few joined updates: one statement
    # per session took 60 ms for 10,000 sessions on sqlite and 2.3 s on
    # PostgreSQL (a round trip each), every 10 s. ``only`` (rare: the node
    # dropped closes it could not write) names the sessions whose leases go on.
    if only is not None:
        _renew_only_txn(cursor, node, expires, only)
    else:
        cursor.execute("UPDATE console_sessions SET expires = ? WHERE node = ?", (expires, node))
        _renew_locks_txn(cursor, node, expires)
    counted = list(counters.items())
    for start in range(0, len(counted), _COUNTER_ROWS):
        chunk = counted[start:start + _COUNTER_ROWS]
        values = ", ".join(["(?, ?, ?)"] * len(chunk))
        params = [value for session_id, counts in chunk for value in (session_id, *counts)]
        cursor.execute(f"UPDATE console_sessions SET bytes_in = v.column2, bytes_out = v.column3 FROM (VALUES {values}) AS v "
                       "WHERE console_sessions.id = v.column1 AND console_sessions.node = ?", (*params, node))
    rows = cursor.execute(f"SELECT {_SESSION_COLUMNS} FROM console_sessions WHERE node = ? AND kick_reason IS NOT NULL",
                          (node,)).fetchall()
    return [SessionRecord(*row) for row in rows]


def _renew_only_txn(cursor, node, expires, session_ids):
    """Extend the leases (sessions and locks) of these sessions of ``node`` only."""
    for chunk, marks in _id_chunks(session_ids):
        cursor.execute(f"UPDATE console_sessions SET expires = ? WHERE node = ? AND id IN ({marks})", (expires, node, *chunk))
        cursor.execute(f"UPDATE console_locks SET expires = ? WHERE node = ? AND session_id IN ({marks})", (expires, node, *chunk))


def _purge_sessions_txn(cursor, now):
    cursor.execute("DELETE FROM console_locks WHERE expires < ?", (now,))
    return cursor.execute("DELETE FROM console_sessions WHERE expires < ?", (now,)).rowcount


def _kick_session_txn(cursor, server_id, session_id, reason, actor, now):
    kicked = cursor.execute("UPDATE console_sessions SET kick_reason = ?, kicked_by = ? "
                            "WHERE id = ? AND server_id = ? AND expires >= ? AND kick_reason IS NULL",
                            (reason, actor, session_id, server_id, now)).rowcount
    if not kicked:
        return None
    cursor.execute("DELETE FROM console_locks WHERE session_id = ?", (session_id,))
    row = cursor.execute(f"SELECT {_SESSION_COLUMNS} FROM console_sessions WHERE id = ?", (session_id,)).fetchone()
    return SessionRecord(*row)


def _mark_ports_foreign_txn(cursor, hypervisor_id, ports):
    for port in ports:
        cursor.execute("INSERT INTO port_allocations (hypervisor_id, port, state, server_id) VALUES (?, ?, 'foreign', NULL) "
                       "ON CONFLICT DO NOTHING", (hypervisor_id, port))
        cursor.execute("UPDATE port_allocations SET state = 'foreign' WHERE hypervisor_id = ? AND port = ? AND state = 'free'",
                       (hypervisor_id, port))


def _adopt_ports_txn(cursor, hypervisor_id, ports, server_id):
    held = []
    for port in ports:
        cursor.execute("INSERT INTO port_allocations (hypervisor_id, port, state, server_id) VALUES (?, ?, 'allocated', ?) "
                       "ON CONFLICT DO NOTHING", (hypervisor_id, port, server_id))
        taken = cursor.execute(
            "UPDATE port_allocations SET state = 'allocated', server_id = ? WHERE hypervisor_id = ? AND port = ? "
            "AND (server_id IS NULL OR server_id = ?)", (server_id, hypervisor_id, port, server_id)).rowcount
        if not taken:
            held.append(port)
    return held


@implementer(IStore)
@define
class SQLStore:
    """:class:`IStore` on sqlite or PostgreSQL."""

    _db: Database
    # Concurrent opens share transactions (group commit): one round trip for a burst of new sessions.
    _opens: object = field(init=False, default=None)

    def __attrs_post_init__(self):
        self._opens = self._db.batched(_open_session_txn, expected=(NotFound,))

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

    def set_server_status(self, server_id, status):
        return self._db.run(_set_server_status_txn, server_id, status)

    def set_serial_ports(self, server_id, ports):
        return self._db.run(_set_serial_ports_txn, server_id, ports)

    def create_hypervisor(self, hypervisor):
        d = self._db.run(_create_hypervisor_txn, hypervisor)
        d.addErrback(self._integrity, f"a hypervisor named {hypervisor.name!r} exists already")
        return d

    def find_hypervisor(self, id_or_name):
        return self._db.run(_find_named, "hypervisors", _HYPERVISOR_COLUMNS, _hypervisor, id_or_name)

    def list_hypervisors(self):
        return self._db.run(_list_named, "hypervisors", _HYPERVISOR_COLUMNS, _hypervisor)

    def create_image(self, image):
        d = self._db.run(_create_image_txn, image)
        d.addErrback(self._integrity, f"an image named {image.name!r} exists already")
        return d

    def find_image(self, id_or_name):
        return self._db.run(_find_named, "images", _IMAGE_COLUMNS, _image, id_or_name)

    def list_images(self):
        return self._db.run(_list_named, "images", _IMAGE_COLUMNS, _image)

    def claim_tested_port(self, hypervisor_id, low, high, server_id):
        return self._db.run(_claim_tested_port_txn, hypervisor_id, low, high, server_id)

    def known_ports(self, hypervisor_id):
        return self._db.run(_known_ports_txn, hypervisor_id)

    def record_port(self, hypervisor_id, port, server_id):
        return self._db.run(_record_port_txn, hypervisor_id, port, server_id)

    def release_ports(self, server_id):
        return self._db.run(_release_ports_txn, server_id)

    def count_unavailable_ports(self, hypervisor_id, low, high):
        return self._db.run(_count_unavailable_ports_txn, hypervisor_id, low, high)

    def allocations(self, hypervisor_id):
        return self._db.run(_allocations_txn, hypervisor_id)

    def mark_ports_foreign(self, hypervisor_id, ports):
        return self._db.run(_mark_ports_foreign_txn, hypervisor_id, ports)

    def open_session(self, session, lock, now, closed=()):
        return self._opens(session, lock, now, closed)

    def close_sessions(self, session_ids):
        return self._db.run(_close_sessions_txn, session_ids)

    def add_session(self, session):
        return self._db.run(_add_session_txn, session)

    def list_sessions(self, now, server_id=None):
        return self._db.run(_list_sessions_txn, now, server_id)

    def renew_sessions(self, node, expires, counters, only=None):
        return self._db.run(_renew_sessions_txn, node, expires, counters, only)

    def purge_sessions(self, now):
        return self._db.run(_purge_sessions_txn, now)

    def kick_session(self, server_id, session_id, reason, actor, now):
        return self._db.run(_kick_session_txn, server_id, session_id, reason, actor, now)

    def adopt_ports(self, hypervisor_id, ports, server_id):
        return self._db.run(_adopt_ports_txn, hypervisor_id, ports, server_id)
