"""``serialproxy-manage``: the operator's command line (keys, database).

Every command first brings the database to the current schema, so it works
on a fresh install before the daemon ever ran. Secrets go to standard
output alone on their line, everything else to standard error, so that
``KEY=$(serialproxy-manage create-key --tenant t)`` works.
"""

import sys

from twisted.internet import defer, task
from twisted.python import usage

from . import __version__
from .config import load_config
from .database import current_version, open_database, parse_url, upgrade
from .errors import ConfigError, DatabaseError, SerialProxyError
from .store import SQLStore
from .tokens import KeyService
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


class ManageOptions(usage.Options):
    synopsis = "[--config FILE] [--database URL] COMMAND [options]"
    optParameters = [["config", "c", None, "serialproxy INI configuration file"],
                     ["database", None, None, "database URL (overrides [database] connection)"]]
    subCommands = [
        ["create-key", None, _CreateKey, "make an API key and print it once"],
        ["list-keys", None, usage.Options, "list API keys (never their secrets)"],
        ["revoke-key", None, _RevokeKey, "delete an API key"],
        ["db", None, _Db, "db upgrade: bring the schema up to date; db version: show it"],
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
        elif options.subCommand == "revoke-key":
            if not await store.revoke_key(sub["key_id"]):
                print(f"serialproxy-manage: no API key with id {sub['key_id']!r}", file=sys.stderr)
                return 1
            print(f"revoked key {sub['key_id']}", file=sys.stderr)
        return 0
    finally:
        database.close()


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
