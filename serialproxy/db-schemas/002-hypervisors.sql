-- serialproxy schema version 2: hypervisors, images, servers booted through
-- libvirt, and the persistent port allocator.

CREATE TABLE hypervisors (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    libvirt_uri TEXT NOT NULL,
    proxyclient_address TEXT NOT NULL,
    port_low INTEGER NOT NULL,
    port_high INTEGER NOT NULL,
    virt_type TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL
);

CREATE TABLE images (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kernel TEXT NOT NULL,
    initrd TEXT NOT NULL,
    cmdline TEXT NOT NULL,
    disk TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL
);

-- Servers booted through libvirt know their hypervisor, image and domain;
-- adopted ("serial_ports" given) servers leave these NULL or empty.
ALTER TABLE servers ADD COLUMN hypervisor_id TEXT REFERENCES hypervisors (id);
ALTER TABLE servers ADD COLUMN image_id TEXT;
ALTER TABLE servers ADD COLUMN domain TEXT NOT NULL DEFAULT '';
ALTER TABLE servers ADD COLUMN memory_mb INTEGER NOT NULL DEFAULT 0;

-- One row per (hypervisor, port) ever tested: 'allocated' to a server,
-- 'free' (tested, released, ready) or 'foreign' (found in use by something
-- else). The primary key keeps two nodes from handing out the same port.
CREATE TABLE port_allocations (
    hypervisor_id TEXT NOT NULL REFERENCES hypervisors (id) ON DELETE CASCADE,
    port INTEGER NOT NULL,
    state TEXT NOT NULL,
    server_id TEXT,
    PRIMARY KEY (hypervisor_id, port)
);
CREATE INDEX port_allocations_server ON port_allocations (server_id);
