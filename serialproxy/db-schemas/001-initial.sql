-- serialproxy schema version 1: API keys, servers with their serial ports,
-- console tokens and the one-writer-per-console locks.
-- Portable SQL: the same text runs on sqlite and PostgreSQL.
-- Times are seconds since the epoch (DOUBLE PRECISION).

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL,
    is_admin BOOLEAN NOT NULL,
    description TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL
);

CREATE TABLE servers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    status TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL
);
CREATE INDEX servers_tenant ON servers (tenant_id);

CREATE TABLE serial_ports (
    server_id TEXT NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    port_index INTEGER NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    PRIMARY KEY (server_id, port_index),
    UNIQUE (host, port)
);

-- A console token is stored only as its SHA-256; it is bound to one serial
-- port of one server, with the host:port resolved when it was minted.
CREATE TABLE console_tokens (
    token_hash TEXT PRIMARY KEY,
    server_id TEXT NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    port_index INTEGER NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    tenant_id TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION NOT NULL
);
CREATE INDEX console_tokens_expires ON console_tokens (expires);

-- One writer per console, across every proxy node: the primary key is the
-- console; a lock is a lease that its node renews, so a dead node's locks
-- expire.
CREATE TABLE console_locks (
    server_id TEXT NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    port_index INTEGER NOT NULL,
    session_id TEXT NOT NULL UNIQUE,
    node TEXT NOT NULL,
    peer TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    since DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (server_id, port_index)
);
CREATE INDEX console_locks_node ON console_locks (node);
