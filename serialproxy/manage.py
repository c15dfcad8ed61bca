"""``serialproxy-manage``: the operator's command line (keys, hypervisors, servers, sessions, database).

Every command first brings the database to the current schema, so it works
on a fresh install before the daemon ever ran. Secrets go to standard
output alone on their line, everything else to standard error, so that
``KEY=$(serialproxy-manage create-key --tenant t)`` works.
"""

import os
import sys

from twisted.internet import defer, task
from twisted.python import usage

from . import __version__
from .config import load_config
from .database import current_version, open_database, parse_url, upgrade
from .errors import ConfigError, DatabaseError, NotFound, SerialProxyError
from .interfaces import Hypervisor
from .libvirt_driver import LibvirtDriver
from .ports import PortAllocator, PortProbe
from .servers import Servers
from .store import SQLStore
from .tokens import KeyService, new_id
from . import validate

__all__ = ["main", "ManageOptions"]


class _CreateKey(usage.Options):
    synopsis = "--tenant TENANT [--admin] [--description TEXT]"
    optFlags = [["admin", None, "the key acts for every tenant and may register servers"]]
    optParameters = [["tenant", "t", None, "the tenant the key acts for"],
                     ["description", "d", "", "a note to tell keys apart"]]

    def postOptions(self):
        if not self["tenant"]:
            raise usage.UsageError("--tenant is required")
        validate.tenant_id(self["tenant"], "--tenant")


class _RevokeKey(usage.Options):
    synopsis = "KEY_ID"

    def parseArgs(self, key_id):
        self["key_id"] = key_id


class _Db(usage.Options):
    synopsis = "upgrade | version"

    def parseArgs(self, action):
        if action not in ("upgrade", "version"):
            raise usage.UsageError(f"unknown db action {action!r}: expected upgrade or version")
        self["action"] = action


class _HypervisorAdd(usage.Options):
    synopsis = "--name NAME --uri LIBVIRT_URI [--proxyclient-address ADDR] [--port-range LOW:HIGH] [--virt-type qemu|kvm]"
    optParameters = [["name", None, None, "the hypervisor's name"],
                     ["uri", None, None, "libvirt URI: qemu:///system, qemu+ssh://root@host/system, test:///default"],
                     ["proxyclient-address", None, None, "address its VM serial sockets bind to (default: [serial_console] proxyclient_address, else 127.0.0.1)"],
                     ["port-range", None, None, "its serial port range (default: [serial_console] port_range)"],
                     ["virt-type", None, "qemu", "qemu (TCG, works everywhere) or kvm"]]


class _Group(usage.Options):
    """A command with actions of its own (``hypervisor add``): one of them is needed."""

    def postOptions(self):
        if self.subCommand is None:
            raise usage.UsageError("an action is needed: " + " or ".join(c[0] for c in self.subCommands))


class _Hypervisor(_Group):
    synopsis = "add [options] | list"
    subCommands = [["add", None, _HypervisorAdd, "register a hypervisor"],
                   ["list", None, usage.Options, "list hypervisors"]]


class _ServerAdopt(usage.Options):
    synopsis = "--hypervisor NAME --domain DOMAIN --tenant TENANT [--name NAME]"
    optParameters = [["hypervisor", None, None, "the hypervisor (name or id) the domain runs on"],
                     ["domain", None, None, "the libvirt domain, with <serial type='tcp'> devices"],
                     ["tenant", "t", None, "the tenant that gets it"],
                     ["name", None, None, "the server's name (default: the domain's)"]]

    def postOptions(self):
        for option in ("hypervisor", "domain", "tenant"):
            if not self[option]:
                raise usage.UsageError(f"--{option} is required")
        validate.tenant_id(self["tenant"], "--tenant")


class _Server(_Group):
    synopsis = "adopt [options] | list"
    subCommands = [["adopt", None, _ServerAdopt, "take an existing domain with TCP serial ports into a tenant"],
                   ["list", None, usage.Options, "list servers"]]


class _SessionKick(usage.Options):
    synopsis = "SERVER_ID SESSION_ID [--reason TEXT]"
    optParameters = [["reason", "r", "disconnected by an operator", "what the kicked client is told"]]

    def parseArgs(self, server_id, session_id):
        self["server_id"], self["session_id"] = server_id, session_id


class _SessionList(usage.Options):
    optParameters = [["server", None, None, "only this server's sessions"]]


class _Session(_Group):
    synopsis = "list [--server ID] | kick SERVER_ID SESSION_ID [--reason TEXT]"
    subCommands = [["list", None, _SessionList, "list live console sessions on every node"],
                   ["kick", None, _SessionKick, "disconnect a session (close code 4010) and free its console"]]


class ManageOptions(usage.Options):
    synopsis = "[--config FILE] [--database URL] COMMAND [options]"
    optParameters = [["config", "c", None, "serialproxy INI configuration file"],
                     ["database", None, None, "database URL (overrides [database] connection)"]]
    subCommands = [
        ["create-key", None, _CreateKey, "make an API key and print it once"],
        ["list-keys", None, usage.Options, "list API keys (never their secrets)"],
        ["revoke-key", None, _RevokeKey, "delete an API key"],
        ["db", None, _Db, "db upgrade: bring the schema up to date; db version: show it"],
        ["hypervisor", None, _Hypervisor, "hypervisor add|list"],
        ["server", None, _Server, "server adopt|list"],
        ["session", None, _Session, "session list|kick"],
    ]

    def opt_version(self):
        print(f"serialproxy-manage {__version__}")
        sys.exit(0)

    def postOptions(self):
        if self.subCommand is None:
            raise usage.UsageError("a command is needed: " + ", ".join(c[0] for c in self.subCommands))
        self.config = load_config(self["config"], {"database": self["database"]})


async def _keys_command(reactor, options) -> int:
    database = open_database(options.config.database_url, reactor=reactor)
    try:
        store = SQLStore(database)
        sub = options.subOptions
        if options.subCommand == "create-key":
            key, secret = await KeyService(store, reactor).create(sub["tenant"], bool(sub["admin"]), sub["description"])
            print(secret)
            print(f"created {'admin' if key.is_admin else 'member'} key {key.id} for tenant {key.tenant_id}; "
                  "the key above is shown only this once", file=sys.stderr)
        elif options.subCommand == "list-keys":
            for key in await store.list_keys():
                print(f"{key.id}  tenant={key.tenant_id}  {'admin' if key.is_admin else 'member'}  {key.description}")
        elif options.subCommand == "session":
            return await _session_command(reactor, options, store)
        elif options.subCommand in ("hypervisor", "server"):
            return await _libvirt_command(reactor, options, store)
        elif options.subCommand == "revoke-key":
            if not await store.revoke_key(sub["key_id"]):
                print(f"serialproxy-manage: no API key with id {sub['key_id']!r}", file=sys.stderr)
                return 1
            print(f"revoked key {sub['key_id']}", file=sys.stderr)
        return 0
    finally:
        database.close()


async def _libvirt_command(reactor, options, store) -> int:
    """hypervisor add|list, server adopt|list."""
    sub = options.subOptions
    action, args = sub.subCommand, sub.subOptions
    if options.subCommand == "hypervisor" and action == "list":
        for h in await store.list_hypervisors():
            print(f"{h.id}  {h.name}  {h.libvirt_uri}  {h.proxyclient_address}  {h.port_range[0]}:{h.port_range[1]}  {h.virt_type}")
        return 0
    if options.subCommand == "server" and action == "list":
        for s in await store.list_servers():
            ports = " ".join(f"{p.index}={p.host}:{p.port}" for p in s.serial_ports)
            print(f"{s.id}  {s.name}  tenant={s.tenant_id}  {s.status}  {ports}")
        return 0
    driver = LibvirtDriver(reactor)
    driver.startService()
    try:
        servers = Servers(store, driver, PortAllocator(store, PortProbe(reactor)), reactor, os.urandom)
        if options.subCommand == "hypervisor":
            body = {"name": args["name"], "libvirt_uri": args["uri"], "virt_type": args["virt-type"]}
            body.update({k: args[o] for k, o in (("proxyclient_address", "proxyclient-address"), ("port_range", "port-range")) if args[o]})
            spec = validate.hypervisor_body({"hypervisor": body}, options.config.port_range, options.config.proxyclient_address)
            hypervisor = Hypervisor(new_id(os.urandom), spec["name"], spec["libvirt_uri"], spec["proxyclient_address"],
                                    spec["port_range"], reactor.seconds(), spec["virt_type"])
            await servers.check_hypervisor(hypervisor)
            await store.create_hypervisor(hypervisor)
            print(hypervisor.id)
            print(f"registered hypervisor {hypervisor.name} ({hypervisor.libvirt_uri})", file=sys.stderr)
        else:
            hypervisor = await store.find_hypervisor(args["hypervisor"])
            if hypervisor is None:
                raise NotFound(f"no hypervisor {args['hypervisor']!r} (serialproxy-manage hypervisor list)")
            server = await servers.adopt(hypervisor, args["domain"], args["tenant"], args["name"])
            print(server.id)
            print(f"adopted domain {args['domain']} as server {server.id} of tenant {server.tenant_id} with serial ports "
                  + ", ".join(f"{p.index}={p.host}:{p.port}" for p in server.serial_ports), file=sys.stderr)
        return 0
    finally:
        driver.stopService()


async def _session_command(reactor, options, store) -> int:
    """session list|kick, straight on the database: the holding node closes a kicked session
    when it next renews its leases (within a third of a lease); the console is free at once."""
    sub = options.subOptions
    args = sub.subOptions
    if sub.subCommand == "list":
        for r in await store.list_sessions(reactor.seconds(), args["server"]):
            print(f"{r.id}  server={r.server_id}  port={r.port_index}  {r.mode}  peer={r.peer}  tenant={r.tenant_id}  "
                  f"node={r.node}  in={r.bytes_in}  out={r.bytes_out}")
        return 0
    reason = validate.kick_body({"reason": args["reason"]})
    record = await store.kick_session(args["server_id"], args["session_id"], reason, "an operator (serialproxy-manage)",
                                      reactor.seconds())
    if record is None:
        raise NotFound(f"no live session {args['session_id']!r} on server {args['server_id']!r}")
    print(f"kicked session {record.id} ({record.peer}, {record.mode}) on node {record.node}", file=sys.stderr)
    return 0


def _db_command(options) -> int:
    url = options.config.database_url
    if options.subOptions["action"] == "upgrade":
        before, after = upgrade(url)
        print(f"database {parse_url(url).describe()}: schema {before} -> {after}" if before != after
              else f"database {parse_url(url).describe()}: schema {after} is current", file=sys.stderr)
    else:
        before, after = upgrade(url)
        print(after)
        print(f"(this serialproxy knows schema up to {current_version()})", file=sys.stderr)
    return 0


def main(argv=None) -> None:
    options = ManageOptions()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except (usage.UsageError, ConfigError) as e:
        sys.exit(f"serialproxy-manage: {e}\n(serialproxy-manage --help lists the commands)")
    try:
        if options.subCommand == "db":
            sys.exit(_db_command(options))
        task.react(lambda reactor: defer.Deferred.fromCoroutine(_run(reactor, options)))
    except (DatabaseError, SerialProxyError) as e:
        sys.exit(f"serialproxy-manage: {e}")


async def _run(reactor, options):
    try:
        code = await _keys_command(reactor, options)
    except (DatabaseError, SerialProxyError) as e:
        print(f"serialproxy-manage: {e}", file=sys.stderr)
        code = 1
    if code:
        raise SystemExit(code)
