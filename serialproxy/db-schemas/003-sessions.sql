-- serialproxy schema version 3: console sessions, visible from every node.
-- Each websocket (or telnet) connection to a console is a row, renewed by
-- its node like the writer lock; a kick from any node sets kick_reason and
-- the holding node closes the session.

CREATE TABLE console_sessions (
    id TEXT PRIMARY KEY,
    server_id TEXT NOT NULL REFERENCES servers (id) ON DELETE CASCADE,
    port_index INTEGER NOT NULL,
    mode TEXT NOT NULL,
    peer TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    node TEXT NOT NULL,
    since DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION NOT NULL,
    bytes_in BIGINT NOT NULL,
    bytes_out BIGINT NOT NULL,
    kick_reason TEXT,
    kicked_by TEXT
);
CREATE INDEX console_sessions_server ON console_sessions (server_id);
CREATE INDEX console_sessions_node ON console_sessions (node);

-- Who minted a token: the key's tenant is the session's.
ALTER TABLE console_tokens ADD COLUMN key_tenant_id TEXT NOT NULL DEFAULT '';
