"""docs/openapi.yaml against the Klein routes and the answers of the real API.

The spec is checked three ways: its operations are exactly the routes of
:class:`serialproxy.api.API`; it is structurally sound (every operation
answers something, every ``$ref`` resolves, every path parameter is
declared); and the real API, driven in memory over an sqlite file, answers
only statuses the spec lists, with bodies that validate against its schemas.
"""

import datetime
import os
import re
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from serialproxy.api import API
from serialproxy.bridge import IConsoleClient
from serialproxy.config import load_config
from serialproxy.errors import CloseCode
from serialproxy.interfaces import Hypervisor, Image, SerialPort, Server
from serialproxy.libvirt_driver import HypervisorError
from serialproxy.sessions import SessionManager
from serialproxy.store import SQLStore
from serialproxy.ports import PortAllocator
from serialproxy.servers import Servers
from serialproxy.testing import FakeHypervisorDriver, FakeProbe, inline_database

from ..support import sqlite_url
from serialproxy.tokens import KeyService, TokenService

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
_HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
_IMPLICIT_METHODS = {"HEAD", "OPTIONS"}
_SCHEMA_KEYWORDS = {
    "$ref", "type", "properties", "required", "items", "enum", "additionalProperties",
    "minimum", "maximum", "minItems", "maxItems", "minLength", "maxLength", "pattern", "format",
    "oneOf", "nullable", "maxProperties",
}
_ANNOTATIONS = {"description", "default", "example", "title"}
_FORMATS = {"uuid", "date-time", "uri"}
_BASE = "http://proxy.test"
_URI = "test:///default"
_DOWN_URI = "qemu+tcp://192.0.2.99/system"


def load_spec() -> dict:
    with open(SPEC_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


def operations(spec: dict):
    """``(path, METHOD, operation)`` of every operation in the spec."""
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method in _HTTP_METHODS:
                yield path, method.upper(), operation


def klein_routes() -> set:
    """``(path, METHOD)`` of every route of the API, in OpenAPI's path syntax."""
    found = set()
    for rule in API.app.url_map.iter_rules():
        path = re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule)
        found |= {(path, method) for method in rule.methods - _IMPLICIT_METHODS}
    return found


def resolve(spec: dict, node):
    """Follow ``$ref`` until ``node`` is not a reference."""
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            raise KeyError(f"not a local reference: {ref}")
        node = spec
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def refs(node):
    """Every ``$ref`` value anywhere under ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def schemas(spec: dict):
    """``(where, schema)`` of every schema object in the spec, nested ones included."""
    def walk(where, schema):
        yield where, schema
        for name, sub in schema.get("properties", {}).items():
            yield from walk(f"{where}.properties.{name}", sub)
        if isinstance(schema.get("items"), dict):
            yield from walk(f"{where}.items", schema["items"])
        if isinstance(schema.get("additionalProperties"), dict):
            yield from walk(f"{where}.additionalProperties", schema["additionalProperties"])
        for i, sub in enumerate(schema.get("oneOf", ())):
            yield from walk(f"{where}.oneOf[{i}]", sub)

    def tops(where, node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "schema" and isinstance(value, dict):
                    yield f"{where}.schema", value
                else:
                    yield from tops(f"{where}.{key}", value)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from tops(f"{where}[{i}]", value)

    for name, schema in spec["components"]["schemas"].items():
        yield from walk(f"components.schemas.{name}", schema)
    for where, schema in tops("paths", spec["paths"]):
        yield from walk(where, schema)
    for where, schema in tops("components", {k: v for k, v in spec["components"].items() if k != "schemas"}):
        yield from walk(where, schema)


def _type_ok(kind: str, value) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"object": dict, "array": list, "string": str, "boolean": bool}[kind])


def _format_ok(kind: str, value: str) -> bool:
    try:
        if kind == "uuid":
            return str(uuid.UUID(value)) == value
        if kind == "date-time":
            return value.endswith("Z") and datetime.datetime.fromisoformat(value[:-1] + "+00:00") is not None
    except ValueError:
        return False
    parts = urlsplit(value)
    return bool(parts.scheme and parts.netloc)


def validate(spec: dict, schema: dict, value, where: str = "$") -> list:
    """Where ``value`` breaks ``schema`` (the subset in ``_SCHEMA_KEYWORDS``); empty if nowhere."""
    schema = resolve(spec, schema)
    if value is None and schema.get("nullable") is True:
        return []
    if "type" in schema and not _type_ok(schema["type"], value):
        return [f"{where}: expected {schema['type']}, got {value!r}"]
    errors = []
    if "oneOf" in schema:
        failures = [validate(spec, sub, value, where) for sub in schema["oneOf"]]
        if [f for f in failures if not f] != [[]]:
            errors.append(f"{where}: {value!r} matches {failures.count([])} of the oneOf schemas, not exactly one: {failures}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not one of {schema['enum']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            errors.append(f"{where}: {value!r} outside [{schema.get('minimum')}, {schema.get('maximum')}]")
    if isinstance(value, str):
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            errors.append(f"{where}: length of {value!r} out of bounds")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
        if "format" in schema and not _format_ok(schema["format"], value):
            errors.append(f"{where}: {value!r} is not a {schema['format']}")
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            errors.append(f"{where}: {len(value)} items out of bounds")
        for i, item in enumerate(value):
            errors += validate(spec, schema.get("items", {}), item, f"{where}[{i}]")
    if isinstance(value, dict):
        if len(value) > schema.get("maxProperties", len(value)):
            errors.append(f"{where}: {len(value)} properties, more than {schema['maxProperties']}")
        properties = schema.get("properties", {})
        errors += [f"{where}: missing {name!r}" for name in schema.get("required", ()) if name not in value]
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                errors += validate(spec, properties[name], item, f"{where}.{name}")
            elif extra is False:
                errors.append(f"{where}: unexpected property {name!r}")
            elif isinstance(extra, dict):
                errors += validate(spec, extra, item, f"{where}.{name}")
    return errors


class _BrokenStore:
    """A store whose server list fails, for the 500 answer."""

    def __init__(self, store):
        self._store = store

    def __getattr__(self, name):
        return getattr(self._store, name)

    def list_servers(self, tenant_id=None):
        return fail(RuntimeError("the disk is on fire"))


class _NoHypervisors:
    """A store that has forgotten every hypervisor, for the 409 of a server whose hypervisor is gone."""

    def __init__(self, store):
        self._store = store

    def __getattr__(self, name):
        return getattr(self._store, name)

    def find_hypervisor(self, id_or_name):
        return succeed(None)


class _Unreachable:
    """A hypervisor driver on which every call to a URI in ``down`` fails as libvirt does when it cannot connect."""

    def __init__(self, driver):
        self._driver = driver
        self.down = {_DOWN_URI}

    def __getattr__(self, name):
        method = getattr(self._driver, name)

        def call(uri, *args):
            if uri in self.down:
                return fail(HypervisorError(f"libvirt at {uri}: unable to connect to server: Connection refused"))
            return method(uri, *args)

        return call


@implementer(IConsoleClient)
class _Client:
    """A console client (websocket or telnet) that remembers what it was sent and how it was closed."""

    def __init__(self):
        self.transport = StringTransport()
        self.received = b""
        self.closed = []

    def send(self, data, eager=False):
        self.received += data

    def close(self, code, reason):
        self.closed.append((code, reason))


def provokes(*cases):
    """Mark a test as provoking these ``(METHOD, path, status)`` answers."""
    def mark(test):
        test.provokes = frozenset(cases)
        return test

    return mark


class SchemaValidatorTests(SynchronousTestCase):
    """The little JSON Schema validator these tests rely on."""

    def setUp(self):
        self.spec = load_spec()

    def test_accepts_error(self):
        """A well-formed error body passes the Error schema."""
        body = {"error": {"code": 404, "message": "no server"}}
        self.assertEqual(validate(self.spec, {"$ref": "#/components/schemas/Error"}, body), [])

    def test_rejects_missing_and_extra(self):
        """A missing required property and an unexpected one are both reported."""
        body = {"error": {"code": 404}, "detail": "x"}
        errors = validate(self.spec, {"$ref": "#/components/schemas/Error"}, body)
        self.assertEqual(len(errors), 2, errors)

    def test_rejects_boolean_as_integer(self):
        """``true`` is not an integer, though Python says it is an int."""
        self.assertNotEqual(validate(self.spec, {"type": "integer"}, True), [])

    def test_rejects_bad_formats(self):
        """Strings that are not a UUID, a UTC date-time or a URI fail their format."""
        for kind, value in [("uuid", "not-a-uuid"), ("date-time", "2024-01-01"), ("uri", "token")]:
            self.assertNotEqual(validate(self.spec, {"type": "string", "format": kind}, value), [], kind)

    def test_one_of_needs_exactly_one(self):
        """``oneOf`` passes a value matching one branch, and fails one matching none or two."""
        schema = {"oneOf": [{"type": "integer", "maximum": 5}, {"type": "integer", "minimum": 3}]}
        self.assertEqual(validate(self.spec, schema, 1), [])
        self.assertEqual(validate(self.spec, schema, 9), [])
        self.assertEqual(len(validate(self.spec, schema, 4)), 1)
        self.assertEqual(len(validate(self.spec, schema, "x")), 1)

    def test_null_only_where_nullable(self):
        """``null`` passes a ``nullable`` schema and fails any other typed one."""
        self.assertEqual(validate(self.spec, {"type": "string", "nullable": True}, None), [])
        self.assertNotEqual(validate(self.spec, {"type": "string"}, None), [])

    def test_max_properties(self):
        """An object with more properties than ``maxProperties`` fails."""
        self.assertEqual(validate(self.spec, {"type": "object", "maxProperties": 1}, {"a": 1}), [])
        self.assertNotEqual(validate(self.spec, {"type": "object", "maxProperties": 1}, {"a": 1, "b": 2}), [])

    def test_checks_items_and_bounds(self):
        """Array items are checked, and so are minimum and maxItems."""
        schema = {"type": "array", "maxItems": 2, "items": {"type": "integer", "minimum": 0}}
        self.assertEqual(validate(self.spec, schema, [0, 1]), [])
        self.assertEqual(len(validate(self.spec, schema, [0, 1, -1])), 2)


class SpecRoutesTests(SynchronousTestCase):
    """The spec describes exactly the routes of the API."""

    def setUp(self):
        self.spec = load_spec()

    def test_operations_match_klein_routes(self):
        """Every Klein route is in the spec, and the spec has no other operation."""
        documented = {(path, method) for path, method, _ in operations(self.spec)}
        self.assertEqual(documented, klein_routes())

    def test_path_parameters_declared(self):
        """Every ``{name}`` in a path is a required path parameter, and no other is declared."""
        for path, method, operation in operations(self.spec):
            declared = [resolve(self.spec, p) for p in self.spec["paths"][path].get("parameters", [])]
            declared += [resolve(self.spec, p) for p in operation.get("parameters", [])]
            in_path = {p["name"] for p in declared if p["in"] == "path"}
            self.assertEqual(in_path, set(re.findall(r"{([^{}]+)}", path)), (method, path))
            for parameter in declared:
                if parameter["in"] == "path":
                    self.assertIs(parameter.get("required"), True, (method, path, parameter["name"]))


class SpecStructureTests(SynchronousTestCase):
    """The spec is sound OpenAPI 3.0 as far as plain Python can tell."""

    def setUp(self):
        self.spec = load_spec()

    def test_header(self):
        """The document is OpenAPI 3.0.3 with a title, a version and paths."""
        self.assertEqual(self.spec["openapi"], "3.0.3")
        self.assertTrue(self.spec["info"]["title"] and self.spec["info"]["version"])
        self.assertTrue(all(path.startswith("/") for path in self.spec["paths"]))

    def test_every_operation_answers(self):
        """Every operation has a unique operationId and described, well-named responses."""
        ids = [operation["operationId"] for _, _, operation in operations(self.spec)]
        self.assertEqual(len(ids), len(set(ids)))
        for path, method, operation in operations(self.spec):
            self.assertTrue(operation.get("responses"), (method, path))
            for status, response in operation["responses"].items():
                self.assertRegex(str(status), r"^[1-5][0-9][0-9]$", (method, path))
                self.assertTrue(resolve(self.spec, response).get("description"), (method, path, status))

    def test_refs_resolve(self):
        """Every ``$ref`` points at something in this document."""
        for ref in refs(self.spec):
            self.assertIsInstance(resolve(self.spec, {"$ref": ref}), dict, ref)

    def test_schemas_use_known_keywords(self):
        """Schemas use only keywords the validator here understands, so none is silently skipped."""
        for where, schema in schemas(self.spec):
            unknown = set(schema) - _SCHEMA_KEYWORDS - _ANNOTATIONS
            self.assertEqual(unknown, set(), where)
            if "format" in schema:
                self.assertIn(schema["format"], _FORMATS, where)
            if "type" in schema:
                self.assertIn(schema["type"], {"object", "array", "string", "integer", "number", "boolean"}, where)
            if "oneOf" in schema:
                self.assertIsInstance(schema["oneOf"], list, where)
                self.assertGreater(len(schema["oneOf"]), 1, where)

    def test_errors_use_error_schema(self):
        """Every 4xx and 5xx answer is the shared ``Error`` schema."""
        for path, method, operation in operations(self.spec):
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    content = resolve(self.spec, response)["content"]["application/json"]
                    self.assertEqual(content["schema"], {"$ref": "#/components/schemas/Error"}, (method, path, status))

    def test_security_is_the_api_key_header(self):
        """Every operation but console-info (whose console token is the credential) needs the X-Auth-Token key."""
        scheme = self.spec["components"]["securitySchemes"]["ApiKey"]
        self.assertEqual((scheme["type"], scheme["in"], scheme["name"]), ("apiKey", "header", "X-Auth-Token"))
        self.assertEqual(self.spec["security"], [{"ApiKey": []}])
        for path, method, operation in operations(self.spec):
            if path == "/v3/console-info":
                self.assertEqual(operation["security"], [])
            else:
                self.assertNotIn("security", operation, (method, path))
            self.assertIn(401, {int(s) for s in operation["responses"]}, (method, path))

    def test_examples_validate(self):
        """Every request example, single or named, validates against its own schema."""
        for where, node in [("paths", self.spec["paths"]), ("requestBodies", self.spec["components"]["requestBodies"])]:
            for media in _media_types(node):
                examples = [media["example"]] if "example" in media else []
                examples += [example["value"] for example in media.get("examples", {}).values()]
                for example in examples:
                    self.assertEqual(validate(self.spec, media["schema"], example), [], (where, example))

    def test_close_codes_described(self):
        """Every application close code (4000-4999) is named in the description."""
        description = self.spec["info"]["description"]
        for code in CloseCode:
            if 4000 <= code <= 4999:
                self.assertIn(str(int(code)), description, code.name)


def _media_types(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "application/json":
                yield value
            else:
                yield from _media_types(value)


class APIConformanceTests(SynchronousTestCase):
    """The real API answers only what the spec lists, in the documented shapes."""

    def setUp(self):
        self.spec = load_spec()
        self.clock = MemoryReactorClock()  # the sessions' reactor too: VM connections stay in memory
        self.clock.advance(1_700_000_000)
        self.db = inline_database(sqlite_url(self))
        self.addCleanup(self.db.close)
        self.store = SQLStore(self.db)
        self.fake = FakeHypervisorDriver()
        self.libvirt = _Unreachable(self.fake)
        self.admin = self._key("ops", True)
        self.member = self._key("acme", False)
        self.other = self._key("globex", False)
        self.tokens = TokenService(self.store, self.clock, 600)
        self.sessions = SessionManager(self.store, self.tokens, self.clock, "node")
        self.vms = {}
        self.stub = self._stub(self.store, enabled=True, sessions=self.sessions)

    def _key(self, tenant: str, admin: bool) -> str:
        keys = KeyService(self.store, self.clock)
        return self.successResultOf(Deferred.fromCoroutine(keys.create(tenant, admin)))[1]

    def _stub(self, store, enabled: bool, sessions=None) -> StubTreq:
        config = load_config(None, {"enabled": "true" if enabled else "false"})
        tokens = TokenService(store, self.clock, 600)
        sessions = sessions or SessionManager(store, tokens, self.clock, "node")
        servers = self._servers(store)
        api = API(config, store, KeyService(store, self.clock), tokens, sessions, self.clock,
                  lambda: "ws://127.0.0.1:6083/", os.urandom, servers)
        return StubTreq(api.app.resource())

    def _servers(self, store) -> Servers:
        return Servers(store, self.libvirt, PortAllocator(store, FakeProbe()), self.clock, os.urandom)

    def _hypervisor(self, name: str = "hv1", port_range: tuple = (20000, 20099)) -> Hypervisor:
        hypervisor = Hypervisor(str(uuid.uuid4()), name, _URI, "192.0.2.20", port_range, self.clock.seconds())
        self.successResultOf(self.store.create_hypervisor(hypervisor))
        return hypervisor

    def _image(self, name: str = "cirros", serial_ports: str = "2") -> Image:
        image = Image(str(uuid.uuid4()), name, "/images/vmlinuz", "/images/initrd.img", "console=ttyS0", "",
                      {"serial_ports": serial_ports}, self.clock.seconds())
        self.successResultOf(self.store.create_image(image))
        return image

    def _booted(self, tenant: str = "acme") -> Server:
        """A server booted on hypervisor hv1 from image cirros (both made if missing), through the domain logic."""
        hypervisor = self.successResultOf(self.store.find_hypervisor("hv1")) or self._hypervisor()
        image = self.successResultOf(self.store.find_image("cirros")) or self._image()
        boot = self._servers(self.store).boot("vm", tenant, image, hypervisor, 128)
        return self.successResultOf(Deferred.fromCoroutine(boot))

    def _domains(self) -> dict:
        """The fake hypervisor's domains at ``test:///default``: ``{name: [xml, state]}``."""
        return self.fake.hypervisors.setdefault(_URI, {})

    def _server(self, tenant: str = "acme", status: str = "active", ports: int = 2) -> str:
        first = 10000 + 100 * len(self.successResultOf(self.store.list_servers()))
        server = Server(str(uuid.uuid4()), "vm", tenant, status, self.clock.seconds(),
                        tuple(SerialPort(i, "192.0.2.10", first + i) for i in range(ports)))
        self.successResultOf(self.store.create_server(server))
        return server.id

    def _attach(self, server_id: str, mode: str = "write", index: int = 0, tenant: str = "acme",
                peer: str = "127.0.0.1:5000"):
        """A live session on a serial port, through the API's session manager; ``(session, client)``.

        The first session on a port completes its VM connection in memory;
        ``self.vms[(server_id, index)]`` is then the VM's end (its protocol).
        """
        server = self.successResultOf(self.store.get_server(server_id))
        secret = self.successResultOf(Deferred.fromCoroutine(self.tokens.mint(server, server.serial_ports[index], tenant)))
        client, connects = _Client(), len(self.clock.tcpClients)
        d = Deferred.fromCoroutine(self.sessions.attach(client, secret, peer, mode))
        if len(self.clock.tcpClients) > connects:
            host, port, factory, timeout, bind = self.clock.tcpClients[-1]
            self.assertEqual((host, port), (server.serial_ports[index].host, server.serial_ports[index].port))
            protocol = factory.buildProtocol(None)
            protocol.makeConnection(StringTransport())
            self.vms[(server_id, index)] = protocol
        return self.successResultOf(d), client

    def call(self, method: str, template: str, status: int, key=None, body=None, raw=None,
             stub=None, query=None, **params):
        """Send one request; check its status is the expected one and documented; the parsed body."""
        stub = stub or self.stub
        kwargs = {"headers": {"X-Auth-Token": key}} if key is not None else {}
        if body is not None:
            kwargs["json"] = body
        elif raw is not None:
            kwargs["data"] = raw
        url = _BASE + template.format(**params) + (f"?{query}" if query else "")
        d = stub.request(method, url, **kwargs)
        stub.flush()
        response = self.successResultOf(d)
        d = stub.content(response)
        stub.flush()
        content = self.successResultOf(d)
        self.assertEqual(response.code, status, content)
        self.assertIn((method, template, status), getattr(self, self._testMethodName).provokes)
        if status < 300 and body is not None:
            self.assertEqual(validate(self.spec, self._request_schema(method, template), body), [], body)
        return self._check(method, template, response, content)

    def _request_schema(self, method: str, template: str) -> dict:
        request = resolve(self.spec, self.spec["paths"][template][method.lower()]["requestBody"])
        return request["content"]["application/json"]["schema"]

    def refuse(self, method: str, template: str, status: int, key, body, **params) -> str:
        """Send a body the documented request schema rejects too; the error message."""
        self.assertNotEqual(validate(self.spec, self._request_schema(method, template), body), [], body)
        return self.call(method, template, status, key=key, body=body, **params)["error"]["message"]

    def _check(self, method, template, response, content):
        documented = self.spec["paths"][template][method.lower()]["responses"]
        self.assertIn(str(response.code), {str(s) for s in documented}, (method, template))
        answer = resolve(self.spec, documented.get(response.code, documented.get(str(response.code))))
        if "content" not in answer:
            self.assertEqual(content, b"")
            return None
        self.assertEqual(response.headers.getRawHeaders("Content-Type"), ["application/json"])
        body = yaml.safe_load(content)  # JSON is YAML; keeps the imports short
        errors = validate(self.spec, answer["content"]["application/json"]["schema"], body)
        self.assertEqual(errors, [], (method, template, response.code, body))
        return body

    # POST /v3/servers

    @provokes(("POST", "/v3/servers", 201))
    def test_create_server(self):
        """An admin registers a server: 201, the documented server body with addresses."""
        body = {"server": {"name": "web-1", "tenant_id": "acme", "serial_ports": [{"host": "192.0.2.1", "port": 10000}]}}
        server = self.call("POST", "/v3/servers", 201, key=self.admin, body=body)["server"]
        self.assertEqual(server["serial_ports"], [{"index": 0, "host": "192.0.2.1", "port": 10000}])

    @provokes(("POST", "/v3/servers", 400))
    def test_create_server_bad_bodies(self):
        """Missing, non-JSON, wrongly shaped and boot-style bodies answer 400."""
        self.call("POST", "/v3/servers", 400, key=self.admin)
        self.call("POST", "/v3/servers", 400, key=self.admin, raw=b"{not json")
        self.call("POST", "/v3/servers", 400, key=self.admin, body={"server": {"name": "x", "tenant_id": "acme"}})
        self.call("POST", "/v3/servers", 400, key=self.admin,
                  body={"server": {"name": "x", "tenant_id": "acme", "image": "cirros", "hypervisor": "hv1"}})

    @provokes(("POST", "/v3/servers", 401), ("POST", "/v3/servers", 403))
    def test_create_server_needs_admin(self):
        """No key or an unknown key is 401; a member key is 403."""
        body = {"server": {"name": "x", "tenant_id": "acme", "serial_ports": [{"host": "192.0.2.1", "port": 1}]}}
        self.call("POST", "/v3/servers", 401, body=body)
        self.call("POST", "/v3/servers", 401, key="spk_nope", body=body)
        self.call("POST", "/v3/servers", 403, key=self.member, body=body)

    @provokes(("POST", "/v3/servers", 409))
    def test_create_server_port_taken(self):
        """A host and port that already belong to a server answer 409."""
        self._server()
        body = {"server": {"name": "x", "tenant_id": "acme", "serial_ports": [{"host": "192.0.2.10", "port": 10000}]}}
        self.call("POST", "/v3/servers", 409, key=self.admin, body=body)

    # GET /v3/servers

    @provokes(("GET", "/v3/servers", 200))
    def test_list_servers(self):
        """A member sees its tenant's servers without addresses; an admin sees all with them."""
        self._server("acme")
        self._server("globex")
        mine = self.call("GET", "/v3/servers", 200, key=self.member)["servers"]
        self.assertEqual([s["tenant_id"] for s in mine], ["acme"])
        self.assertEqual(mine[0]["serial_ports"], [{"index": 0}, {"index": 1}])
        every = self.call("GET", "/v3/servers", 200, key=self.admin)["servers"]
        self.assertEqual(sorted(s["tenant_id"] for s in every), ["acme", "globex"])
        self.assertIn("host", every[0]["serial_ports"][0])

    @provokes(("GET", "/v3/servers", 401))
    def test_list_servers_unauthenticated(self):
        """Listing without a valid key answers 401."""
        self.call("GET", "/v3/servers", 401)
        self.call("GET", "/v3/servers", 401, key="spk_nope")

    @provokes(("GET", "/v3/servers", 500))
    def test_list_servers_store_fails(self):
        """A failing store answers a documented 500 with the Error body, and is logged."""
        stub = self._stub(_BrokenStore(self.store), enabled=True)
        self.call("GET", "/v3/servers", 500, key=self.member, stub=stub)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    # GET and DELETE /v3/servers/{server_id}

    @provokes(("GET", "/v3/servers/{server_id}", 200))
    def test_show_server(self):
        """The owner and an admin see the server."""
        server_id = self._server()
        for key in (self.member, self.admin):
            body = self.call("GET", "/v3/servers/{server_id}", 200, key=key, server_id=server_id)
            self.assertEqual(body["server"]["id"], server_id)

    @provokes(("GET", "/v3/servers/{server_id}", 401), ("GET", "/v3/servers/{server_id}", 404))
    def test_show_server_refused(self):
        """No key is 401; another tenant's, unknown and malformed ids are all 404."""
        server_id = self._server()
        self.call("GET", "/v3/servers/{server_id}", 401, server_id=server_id)
        self.call("GET", "/v3/servers/{server_id}", 404, key=self.other, server_id=server_id)
        self.call("GET", "/v3/servers/{server_id}", 404, key=self.member, server_id=str(uuid.uuid4()))
        self.call("GET", "/v3/servers/{server_id}", 404, key=self.member, server_id="not-an-id")

    @provokes(("DELETE", "/v3/servers/{server_id}", 204), ("DELETE", "/v3/servers/{server_id}", 404))
    def test_delete_server(self):
        """The owner deletes its server (204, no body); then it is 404."""
        server_id = self._server()
        self.call("DELETE", "/v3/servers/{server_id}", 204, key=self.member, server_id=server_id)
        self.call("DELETE", "/v3/servers/{server_id}", 404, key=self.member, server_id=server_id)

    @provokes(("DELETE", "/v3/servers/{server_id}", 401), ("DELETE", "/v3/servers/{server_id}", 404))
    def test_delete_server_refused(self):
        """No key is 401; another tenant's server is 404 and stays."""
        server_id = self._server()
        self.call("DELETE", "/v3/servers/{server_id}", 401, server_id=server_id)
        self.call("DELETE", "/v3/servers/{server_id}", 404, key=self.other, server_id=server_id)
        self.assertIsNotNone(self.successResultOf(self.store.get_server(server_id)))

    # POST /v2/{tenant_id}/servers/{server_id}/get-serial-console

    V2 = "/v2/{tenant_id}/servers/{server_id}/get-serial-console"

    @provokes(("POST", V2, 200))
    def test_v2_console(self):
        """No body, the body and its alias all mint a URL: 200, the documented body."""
        server_id = self._server()
        for body in (None, {"get_serial_console": {"type": "serial", "port": 1}}, {"os-getSerialConsole": {"port": 1}}):
            console = self.call("POST", self.V2, 200, key=self.member, body=body,
                                tenant_id="acme", server_id=server_id)["serial_console"]
            self.assertEqual(console["port"], 0 if body is None else 1)
            self.assertRegex(console["url"], r"^ws://127\.0\.0\.1:6083/\?token=[A-Za-z0-9_-]{43}$")
        self.call("POST", self.V2, 200, key=self.admin, tenant_id="acme", server_id=server_id)

    @provokes(("POST", V2, 400))
    def test_v2_console_bad_request(self):
        """A bad type, a port out of range, a port the server lacks, bad JSON: 400."""
        server_id = self._server(ports=2)
        for body in ({"get_serial_console": {"type": "vnc"}}, {"get_serial_console": {"port": 99}},
                     {"get_serial_console": {"port": 2}}, {"get_serial_console": "serial"}):
            self.call("POST", self.V2, 400, key=self.member, body=body, tenant_id="acme", server_id=server_id)
        self.call("POST", self.V2, 400, key=self.member, raw=b"[]", tenant_id="acme", server_id=server_id)

    @provokes(("POST", V2, 400))
    def test_v2_console_disabled(self):
        """With enabled=false the console call answers 400."""
        stub = self._stub(self.store, enabled=False)
        self.call("POST", self.V2, 400, key=self.member, stub=stub, tenant_id="acme", server_id=self._server())

    @provokes(("POST", V2, 401), ("POST", V2, 403), ("POST", V2, 404))
    def test_v2_console_refused(self):
        """No key 401; a member naming another tenant 403; a server not of that tenant 404."""
        server_id = self._server("acme")
        self.call("POST", self.V2, 401, tenant_id="acme", server_id=server_id)
        self.call("POST", self.V2, 403, key=self.other, tenant_id="acme", server_id=server_id)
        self.call("POST", self.V2, 404, key=self.other, tenant_id="globex", server_id=server_id)
        self.call("POST", self.V2, 404, key=self.admin, tenant_id="globex", server_id=server_id)
        self.call("POST", self.V2, 404, key=self.member, tenant_id="acme", server_id=str(uuid.uuid4()))

    @provokes(("POST", V2, 409))
    def test_v2_console_not_active(self):
        """A server that is not active answers 409."""
        server_id = self._server(status="shutoff")
        self.call("POST", self.V2, 409, key=self.member, tenant_id="acme", server_id=server_id)

    # GET /v3/console-info

    @provokes(("GET", "/v3/console-info", 200), ("GET", "/v3/console-info", 401))
    def test_console_info(self):
        """A console token tells its server's name and port, with no API key; a bad or expired token is 401."""
        server_id = self._server(ports=2)
        server = self.successResultOf(self.store.get_server(server_id))
        secret = self.successResultOf(Deferred.fromCoroutine(self.tokens.mint(server, server.serial_ports[1], "acme")))
        info = self.call("GET", "/v3/console-info", 200, query=f"token={secret}")["console"]
        self.assertEqual((info["server_id"], info["server_name"], info["port"]), (server_id, server.name, 1))
        self.call("GET", "/v3/console-info", 401, query="token=nope")
        self.call("GET", "/v3/console-info", 401)
        self.clock.advance(601)
        self.call("GET", "/v3/console-info", 401, query=f"token={secret}")

    # POST /v3/servers/{server_id}/get-serial-console

    V3 = "/v3/servers/{server_id}/get-serial-console"

    @provokes(("POST", V3, 202))
    def test_v3_console(self):
        """The owner and an admin get a URL: 202, the same body as v2."""
        server_id = self._server()
        for key in (self.member, self.admin):
            console = self.call("POST", self.V3, 202, key=key, body={"get_serial_console": {"type": "serial", "port": 0}},
                                server_id=server_id)["serial_console"]
            self.assertEqual((console["type"], console["port"]), ("serial", 0))

    @provokes(("POST", V3, 400))
    def test_v3_console_bad_request(self):
        """A bad body, a missing port and a disabled proxy all answer 400."""
        server_id = self._server(ports=1)
        self.call("POST", self.V3, 400, key=self.member, body={"get_serial_console": {"port": "0"}}, server_id=server_id)
        self.call("POST", self.V3, 400, key=self.member, body={"get_serial_console": {"port": 1}}, server_id=server_id)
        stub = self._stub(self.store, enabled=False)
        self.call("POST", self.V3, 400, key=self.member, stub=stub, server_id=server_id)

    @provokes(("POST", V3, 401), ("POST", V3, 404))
    def test_v3_console_refused(self):
        """No key 401; another tenant's or an unknown server 404."""
        server_id = self._server("acme")
        self.call("POST", self.V3, 401, key="spk_nope", server_id=server_id)
        self.call("POST", self.V3, 404, key=self.other, server_id=server_id)
        self.call("POST", self.V3, 404, key=self.member, server_id=str(uuid.uuid4()))

    @provokes(("POST", V3, 409))
    def test_v3_console_not_active(self):
        """A server that is not active answers 409."""
        self.call("POST", self.V3, 409, key=self.admin, server_id=self._server(status="error"))

    # POST /v3/servers, boot form

    @provokes(("POST", "/v3/servers", 202))
    def test_boot_server(self):
        """An admin boots a server: 202, active, the image's serial ports from the range, and its domain."""
        hypervisor, image = self._hypervisor(), self._image(serial_ports="2")
        body = {"server": {"name": "web-2", "tenant_id": "acme", "image": "cirros", "hypervisor": "hv1", "memory_mb": 128}}
        server = self.call("POST", "/v3/servers", 202, key=self.admin, body=body)["server"]
        self.assertEqual((server["status"], server["hypervisor_id"], server["image_id"], server["memory_mb"]),
                         ("active", hypervisor.id, image.id, 128))
        self.assertEqual(server["serial_ports"], [{"index": 0, "host": "192.0.2.20", "port": 20000},
                                                  {"index": 1, "host": "192.0.2.20", "port": 20001}])
        self.assertEqual(self._domains()[server["domain"]][1], "active")
        by_id = {"server": {"name": "web-3", "tenant_id": "acme", "image": image.id, "hypervisor": hypervisor.id}}
        self.assertEqual(self.call("POST", "/v3/servers", 202, key=self.admin, body=by_id)["server"]["memory_mb"], 256)

    @provokes(("POST", "/v3/servers", 400))
    def test_boot_server_bad_bodies(self):
        """An unknown image or hypervisor, memory out of range, or both forms at once answer 400."""
        self._hypervisor()
        self._image()
        boot = {"name": "x", "tenant_id": "acme", "image": "cirros", "hypervisor": "hv1"}
        for name in ("image", "hypervisor"):
            message = self.call("POST", "/v3/servers", 400, key=self.admin, body={"server": {**boot, name: "nope"}})["error"]["message"]
            self.assertIn(f"server.{name}: no {name} 'nope'", message)
        self.refuse("POST", "/v3/servers", 400, self.admin, {"server": {**boot, "memory_mb": 32}})
        self.refuse("POST", "/v3/servers", 400, self.admin, {"server": {**boot, "serial_ports": [{"host": "192.0.2.1", "port": 1}]}})
        self.assertEqual(self._domains(), {})

    @provokes(("POST", "/v3/servers", 202), ("POST", "/v3/servers", 409))
    def test_boot_server_ports_exhausted(self):
        """A second VM on a one-port range answers 409 naming the hypervisor and the range."""
        self._hypervisor("tiny", port_range=(20000, 20000))
        self._image(serial_ports="1")
        body = {"server": {"name": "x", "tenant_id": "acme", "image": "cirros", "hypervisor": "tiny"}}
        self.call("POST", "/v3/servers", 202, key=self.admin, body=body)
        message = self.call("POST", "/v3/servers", 409, key=self.admin, body=body)["error"]["message"]
        self.assertIn("'tiny'", message)
        self.assertIn("20000:20000", message)
        self.assertEqual(len(self._domains()), 1)

    @provokes(("POST", "/v3/servers", 502), ("POST", "/v3/servers", 202))
    def test_boot_server_libvirt_fails(self):
        """libvirt failing to boot answers 502 with its reason; no server is left and the port is free again."""
        hypervisor = self._hypervisor("tiny", port_range=(20000, 20000))
        self._image(serial_ports="1")
        body = {"server": {"name": "x", "tenant_id": "acme", "image": "cirros", "hypervisor": "tiny"}}
        self.fake.fail_boot = "internal error: qemu unexpectedly closed the monitor"
        message = self.call("POST", "/v3/servers", 502, key=self.admin, body=body)["error"]["message"]
        self.assertIn("qemu unexpectedly closed the monitor", message)
        self.assertEqual((self.successResultOf(self.store.list_servers()), self.successResultOf(self.store.allocations(hypervisor.id))),
                         ([], {}))
        self.call("POST", "/v3/servers", 202, key=self.admin, body=body)

    # POST /v2/{tenant_id}/servers

    V2_BOOT = "/v2/{tenant_id}/servers"

    @provokes(("POST", V2_BOOT, 202))
    def test_v2_boot(self):
        """A member boots for its tenant (no addresses, no domain); an admin for any tenant (with both)."""
        self._hypervisor()
        self._image()
        body = {"server": {"name": "web", "image": "cirros", "hypervisor": "hv1"}}
        mine = self.call("POST", self.V2_BOOT, 202, key=self.member, body=body, tenant_id="acme")["server"]
        self.assertEqual((mine["tenant_id"], mine["status"], mine["serial_ports"]), ("acme", "active", [{"index": 0}, {"index": 1}]))
        self.assertNotIn("domain", mine)
        theirs = self.call("POST", self.V2_BOOT, 202, key=self.admin, body=body, tenant_id="globex")["server"]
        self.assertEqual((theirs["tenant_id"], theirs["domain"]), ("globex", f"serialproxy-{theirs['id']}"))

    @provokes(("POST", V2_BOOT, 400))
    def test_v2_boot_bad_bodies(self):
        """A tenant in the body, a missing image, an unknown hypervisor or a bad tenant path answer 400."""
        self._image()
        body = {"name": "web", "image": "cirros", "hypervisor": "hv1"}
        self.refuse("POST", self.V2_BOOT, 400, self.member, {"server": {**body, "tenant_id": "acme"}}, tenant_id="acme")
        self.refuse("POST", self.V2_BOOT, 400, self.member, {"server": {"name": "web", "hypervisor": "hv1"}}, tenant_id="acme")
        self.call("POST", self.V2_BOOT, 400, key=self.member, body={"server": body}, tenant_id="acme")
        self.call("POST", self.V2_BOOT, 400, key=self.admin, body={"server": body}, tenant_id="-bad")

    @provokes(("POST", V2_BOOT, 401), ("POST", V2_BOOT, 403))
    def test_v2_boot_refused(self):
        """No key is 401; a member naming another tenant is 403."""
        body = {"server": {"name": "web", "image": "cirros", "hypervisor": "hv1"}}
        self.call("POST", self.V2_BOOT, 401, body=body, tenant_id="acme")
        self.call("POST", self.V2_BOOT, 403, key=self.member, body=body, tenant_id="globex")

    @provokes(("POST", V2_BOOT, 202), ("POST", V2_BOOT, 409), ("POST", V2_BOOT, 502))
    def test_v2_boot_exhausted_and_failed(self):
        """No port left answers 409; libvirt failing answers 502."""
        self._hypervisor("tiny", port_range=(20000, 20000))
        self._image(serial_ports="1")
        body = {"server": {"name": "web", "image": "cirros", "hypervisor": "tiny"}}
        self.fake.fail_boot = "cannot open kernel"
        self.call("POST", self.V2_BOOT, 502, key=self.member, body=body, tenant_id="acme")
        self.call("POST", self.V2_BOOT, 202, key=self.member, body=body, tenant_id="acme")
        message = self.call("POST", self.V2_BOOT, 409, key=self.member, body=body, tenant_id="acme")["error"]["message"]
        self.assertIn("20000:20000", message)

    # GET, DELETE and consoles of booted servers

    @provokes(("GET", "/v3/servers/{server_id}", 200), ("GET", "/v3/servers", 200))
    def test_show_booted_server(self):
        """A booted server shows its domain's state now: active, paused, then error once the domain is gone."""
        server = self._booted()
        body = self.call("GET", "/v3/servers/{server_id}", 200, key=self.member, server_id=server.id)["server"]
        self.assertEqual((body["status"], body["memory_mb"]), ("active", 128))
        self.assertNotIn("domain", body)
        self._domains()[server.domain][1] = "paused"
        body = self.call("GET", "/v3/servers/{server_id}", 200, key=self.admin, server_id=server.id)["server"]
        self.assertEqual((body["status"], body["domain"]), ("paused", server.domain))
        del self._domains()[server.domain]
        self.assertEqual(self.call("GET", "/v3/servers/{server_id}", 200, key=self.admin, server_id=server.id)["server"]["status"], "error")
        listed = self.call("GET", "/v3/servers", 200, key=self.member)["servers"]
        self.assertEqual([(s["id"], s["status"]) for s in listed], [(server.id, "error")])

    @provokes(("GET", "/v3/servers/{server_id}", 200))
    def test_show_rebuilt_server(self):
        """A server rebuilt from its domain at start has no image: ``image_id`` is null, ``memory_mb`` 0."""
        server = self._booted()
        self.successResultOf(self.store.delete_server(server.id))
        hypervisor = self.successResultOf(self.store.find_hypervisor("hv1"))
        self.successResultOf(Deferred.fromCoroutine(self._servers(self.store).reconcile(hypervisor)))
        body = self.call("GET", "/v3/servers/{server_id}", 200, key=self.admin, server_id=server.id)["server"]
        self.assertEqual((body["image_id"], body["memory_mb"], body["domain"]), (None, 0, server.domain))

    @provokes(("GET", "/v3/servers/{server_id}", 502), ("GET", "/v3/servers/{server_id}", 409))
    def test_show_server_hypervisor_trouble(self):
        """An unreachable hypervisor answers 502; one no longer registered answers 409."""
        server = self._booted()
        self.libvirt.down.add(_URI)
        message = self.call("GET", "/v3/servers/{server_id}", 502, key=self.member, server_id=server.id)["error"]["message"]
        self.assertIn(_URI, message)
        self.libvirt.down.discard(_URI)
        stub = self._stub(_NoHypervisors(self.store), enabled=True)
        self.call("GET", "/v3/servers/{server_id}", 409, key=self.member, stub=stub, server_id=server.id)

    @provokes(("DELETE", "/v3/servers/{server_id}", 204), ("DELETE", "/v3/servers/{server_id}", 502))
    def test_delete_booted_server(self):
        """Deleting a booted server needs its hypervisor (502, nothing deleted); then its domain goes and its ports are free."""
        server = self._booted()
        self.libvirt.down.add(_URI)
        self.call("DELETE", "/v3/servers/{server_id}", 502, key=self.member, server_id=server.id)
        self.assertIsNotNone(self.successResultOf(self.store.get_server(server.id)))
        self.libvirt.down.discard(_URI)
        self.call("DELETE", "/v3/servers/{server_id}", 204, key=self.member, server_id=server.id)
        self.assertEqual((self._domains(), self.successResultOf(self.store.allocations(server.hypervisor_id))), ({}, {}))

    @provokes(("POST", V2, 200), ("POST", V3, 202))
    def test_console_of_booted_server(self):
        """A booted server's console URL is minted from its live domain."""
        server = self._booted()
        self.call("POST", self.V2, 200, key=self.member, tenant_id="acme", server_id=server.id)
        self.call("POST", self.V3, 202, key=self.member, body={"get_serial_console": {"port": 1}}, server_id=server.id)

    @provokes(("POST", V2, 409), ("POST", V3, 409))
    def test_console_of_domain_not_active(self):
        """A paused domain, a domain gone and a hypervisor no longer registered all answer 409."""
        server = self._booted()
        self._domains()[server.domain][1] = "paused"
        self.call("POST", self.V2, 409, key=self.member, tenant_id="acme", server_id=server.id)
        del self._domains()[server.domain]
        message = self.call("POST", self.V3, 409, key=self.member, server_id=server.id)["error"]["message"]
        self.assertIn("error", message)
        stub = self._stub(_NoHypervisors(self.store), enabled=True)
        self.call("POST", self.V3, 409, key=self.member, stub=stub, server_id=server.id)

    @provokes(("POST", V2, 502), ("POST", V3, 502))
    def test_console_hypervisor_unreachable(self):
        """An unreachable hypervisor answers 502 on both console calls."""
        server = self._booted()
        self.libvirt.down.add(_URI)
        self.call("POST", self.V2, 502, key=self.member, tenant_id="acme", server_id=server.id)
        self.call("POST", self.V3, 502, key=self.admin, server_id=server.id)

    # /v3/hypervisors

    @provokes(("POST", "/v3/hypervisors", 201))
    def test_create_hypervisor(self):
        """An admin registers a hypervisor: given fields are kept; the others take their defaults."""
        body = {"hypervisor": {"name": "hv1", "libvirt_uri": _URI, "proxyclient_address": "192.0.2.20",
                               "port_range": "20000:20099", "virt_type": "kvm"}}
        hypervisor = self.call("POST", "/v3/hypervisors", 201, key=self.admin, body=body)["hypervisor"]
        self.assertEqual({k: hypervisor[k] for k in body["hypervisor"]}, body["hypervisor"])
        bare = self.call("POST", "/v3/hypervisors", 201, key=self.admin,
                         body={"hypervisor": {"name": "hv2", "libvirt_uri": _URI}})["hypervisor"]
        self.assertEqual((bare["proxyclient_address"], bare["virt_type"]), ("127.0.0.1", "qemu"))
        self.assertEqual(self.successResultOf(self.store.find_hypervisor(bare["id"])).name, "hv2")

    @provokes(("POST", "/v3/hypervisors", 400))
    def test_create_hypervisor_bad_bodies(self):
        """A bad URI, range, type, address or name, an unknown field or no body answer 400 naming the field."""
        good = {"name": "hv1", "libvirt_uri": _URI}
        for field, value in [("libvirt_uri", "http://hv1/"), ("port_range", "20000"), ("port_range", 20000),
                             ("virt_type", "xen"), ("name", ""), ("zone", "a")]:
            message = self.refuse("POST", "/v3/hypervisors", 400, self.admin, {"hypervisor": {**good, field: value}})
            self.assertIn("hypervisor", message)
            self.assertIn(field, message)
        for field, value in [("port_range", "20099:20000"), ("port_range", "0:10"), ("proxyclient_address", "not an address")]:
            message = self.call("POST", "/v3/hypervisors", 400, key=self.admin, body={"hypervisor": {**good, field: value}})
            self.assertIn(f"hypervisor.{field}: {value!r} is not allowed", message["error"]["message"])
        self.call("POST", "/v3/hypervisors", 400, key=self.admin)
        self.assertEqual(self.successResultOf(self.store.list_hypervisors()), [])

    @provokes(("POST", "/v3/hypervisors", 401), ("POST", "/v3/hypervisors", 403))
    def test_create_hypervisor_needs_admin(self):
        """No key is 401; a member key is 403."""
        body = {"hypervisor": {"name": "hv1", "libvirt_uri": _URI}}
        self.call("POST", "/v3/hypervisors", 401, body=body)
        self.call("POST", "/v3/hypervisors", 403, key=self.member, body=body)

    @provokes(("POST", "/v3/hypervisors", 201), ("POST", "/v3/hypervisors", 409))
    def test_create_hypervisor_name_taken(self):
        """A second hypervisor of the same name answers 409."""
        body = {"hypervisor": {"name": "hv1", "libvirt_uri": _URI}}
        self.call("POST", "/v3/hypervisors", 201, key=self.admin, body=body)
        self.call("POST", "/v3/hypervisors", 409, key=self.admin, body=body)

    @provokes(("POST", "/v3/hypervisors", 502))
    def test_create_hypervisor_unreachable(self):
        """A URI libvirt cannot reach answers 502 naming it, and nothing is registered."""
        body = {"hypervisor": {"name": "hv1", "libvirt_uri": _DOWN_URI}}
        message = self.call("POST", "/v3/hypervisors", 502, key=self.admin, body=body)["error"]["message"]
        self.assertIn(_DOWN_URI, message)
        self.assertEqual(self.successResultOf(self.store.list_hypervisors()), [])

    @provokes(("GET", "/v3/hypervisors", 200), ("GET", "/v3/hypervisors", 401), ("GET", "/v3/hypervisors", 403))
    def test_list_hypervisors(self):
        """An admin lists hypervisors; no key is 401, a member key 403."""
        self._hypervisor("hv1")
        self.clock.advance(1)
        self._hypervisor("hv2", port_range=(1, 65535))
        listed = self.call("GET", "/v3/hypervisors", 200, key=self.admin)["hypervisors"]
        self.assertEqual([(h["name"], h["port_range"]) for h in listed], [("hv1", "20000:20099"), ("hv2", "1:65535")])
        self.call("GET", "/v3/hypervisors", 401)
        self.call("GET", "/v3/hypervisors", 403, key=self.member)

    # /v3/images

    @provokes(("POST", "/v3/images", 201))
    def test_create_image(self):
        """An admin registers a kernel image and a disk image; metadata comes back as strings."""
        kernel = {"name": "cirros", "kernel": "/images/vmlinuz", "initrd": "/images/initrd.img", "cmdline": "console=ttyS0",
                  "metadata": {"serial_ports": 2, "os": "linux"}}
        image = self.call("POST", "/v3/images", 201, key=self.admin, body={"image": kernel})["image"]
        self.assertEqual((image["disk"], image["metadata"]), ("", {"serial_ports": "2", "os": "linux"}))
        disk = self.call("POST", "/v3/images", 201, key=self.admin,
                         body={"image": {"name": "debian", "disk": "/images/debian.qcow2"}})["image"]
        self.assertEqual((disk["kernel"], disk["initrd"], disk["cmdline"], disk["metadata"]), ("", "", "", {}))

    @provokes(("POST", "/v3/images", 400))
    def test_create_image_bad_bodies(self):
        """serial_ports outside 1-4 or not a whole number answers 400 naming the value and the range; so do bad shapes."""
        for value in ("0", "5", "two", 5, "-1"):
            message = self.refuse("POST", "/v3/images", 400, self.admin,
                                  {"image": {"name": "x", "disk": "/d.img", "metadata": {"serial_ports": value}}})
            self.assertIn(f"image.metadata.serial_ports: {value!r} is not allowed", message)
            self.assertIn("from 1 to 4", message)
        for image in ({"name": "x", "kernel": "vmlinuz"}, {"name": "x", "disk": "/d.img", "os": "linux"},
                      {"name": "x", "disk": "/d.img", "metadata": ["serial_ports"]},
                      {"name": "x", "disk": "/d.img", "metadata": {"serial_ports": True}}, {"disk": "/d.img"}):
            self.refuse("POST", "/v3/images", 400, self.admin, {"image": image})
        for image in ({"name": "x"}, {"name": "x", "kernel": "/k", "disk": "/d.img"}):
            self.call("POST", "/v3/images", 400, key=self.admin, body={"image": image})
        self.assertEqual(self.successResultOf(self.store.list_images()), [])

    @provokes(("POST", "/v3/images", 401), ("POST", "/v3/images", 403))
    def test_create_image_needs_admin(self):
        """No key is 401; a member key is 403."""
        body = {"image": {"name": "x", "disk": "/d.img"}}
        self.call("POST", "/v3/images", 401, key="spk_nope", body=body)
        self.call("POST", "/v3/images", 403, key=self.member, body=body)

    @provokes(("POST", "/v3/images", 201), ("POST", "/v3/images", 409))
    def test_create_image_name_taken(self):
        """A second image of the same name answers 409."""
        body = {"image": {"name": "x", "disk": "/d.img"}}
        self.call("POST", "/v3/images", 201, key=self.admin, body=body)
        self.call("POST", "/v3/images", 409, key=self.admin, body=body)

    @provokes(("GET", "/v3/images", 200), ("GET", "/v3/images", 401))
    def test_list_images(self):
        """Any key lists the images; no key is 401."""
        self._image("cirros")
        self.clock.advance(1)
        self._image("alpine", serial_ports="4")
        for key in (self.member, self.admin):
            listed = self.call("GET", "/v3/images", 200, key=key)["images"]
            self.assertEqual([i["name"] for i in listed], ["cirros", "alpine"])
        self.call("GET", "/v3/images", 401)

    # console sessions

    SESSIONS = "/v3/servers/{server_id}/serial-sessions"
    KICK = "/v3/servers/{server_id}/serial-sessions/{session_id}"

    @provokes(("GET", SESSIONS, 200))
    def test_list_server_sessions(self):
        """The owner and an admin see a server's writer and spectators, with byte counts as of now and replayed scrollback."""
        server_id, elsewhere = self._server(), self._server()
        self.assertEqual(self.call("GET", self.SESSIONS, 200, key=self.member, server_id=server_id), {"serial_sessions": []})
        writer, _ = self._attach(server_id, "write", peer="192.0.2.50:40000")
        self.vms[(server_id, 0)].dataReceived(b"login: ")
        self.sessions.from_client(writer, b"root\r")
        self.clock.advance(1)
        spectator, watching = self._attach(server_id, "read", tenant="ops", peer="[2001:db8::1]:40001")
        self._attach(elsewhere, "write")
        self.assertEqual(watching.received, b"login: ")
        for key in (self.member, self.admin):
            listed = self.call("GET", self.SESSIONS, 200, key=key, server_id=server_id)["serial_sessions"]
            self.assertEqual(listed, [
                {"id": writer.id, "port": 0, "mode": "write", "peer": "192.0.2.50:40000", "since": "2023-11-14T22:13:20Z",
                 "bytes_in": 5, "bytes_out": 7, "tenant_id": "acme", "node": "node"},
                {"id": spectator.id, "port": 0, "mode": "read", "peer": "[2001:db8::1]:40001", "since": "2023-11-14T22:13:21Z",
                 "bytes_in": 0, "bytes_out": 7, "tenant_id": "ops", "node": "node"}])

    @provokes(("GET", SESSIONS, 200), ("GET", SESSIONS, 401), ("GET", SESSIONS, 404))
    def test_list_server_sessions_refused(self):
        """No key is 401; another tenant's, unknown and malformed server ids are 404; an expired lease drops a session."""
        server_id = self._server()
        self._attach(server_id)
        self.call("GET", self.SESSIONS, 401, server_id=server_id)
        self.call("GET", self.SESSIONS, 401, key="spk_nope", server_id=server_id)
        self.call("GET", self.SESSIONS, 404, key=self.other, server_id=server_id)
        self.call("GET", self.SESSIONS, 404, key=self.member, server_id=str(uuid.uuid4()))
        self.call("GET", self.SESSIONS, 404, key=self.member, server_id="not-an-id")
        self.clock.advance(self.sessions.lease + 1)  # this node never renewed: as if it died
        self.assertEqual(self.call("GET", self.SESSIONS, 200, key=self.member, server_id=server_id)["serial_sessions"], [])

    @provokes(("GET", "/v3/serial-sessions", 200), ("GET", "/v3/serial-sessions", 401), ("GET", "/v3/serial-sessions", 403))
    def test_list_all_sessions(self):
        """An admin sees every tenant's sessions, each with its server; no key is 401, a member key 403."""
        self.assertEqual(self.call("GET", "/v3/serial-sessions", 200, key=self.admin), {"serial_sessions": []})
        ours, theirs = self._server("acme", ports=2), self._server("globex")
        self._attach(ours, "write", index=1)
        self.clock.advance(1)
        self._attach(theirs, "read", tenant="globex")
        listed = self.call("GET", "/v3/serial-sessions", 200, key=self.admin)["serial_sessions"]
        self.assertEqual([(s["server_id"], s["port"], s["mode"], s["tenant_id"]) for s in listed],
                         [(ours, 1, "write", "acme"), (theirs, 0, "read", "globex")])
        self.call("GET", "/v3/serial-sessions", 401)
        self.call("GET", "/v3/serial-sessions", 403, key=self.member)

    @provokes(("DELETE", KICK, 204), ("GET", SESSIONS, 200))
    def test_kick_session(self):
        """The owner kicks the writer: 4010 with who and why, and its lock is free at once; an admin kicks without a reason."""
        server_id = self._server()
        writer, client = self._attach(server_id, "write")
        spectator, watching = self._attach(server_id, "read")
        self.call("DELETE", self.KICK, 204, key=self.member, body={"reason": "your session hung; reconnect"},
                  server_id=server_id, session_id=writer.id)
        self.assertEqual(client.closed, [(CloseCode.KICKED, "kicked by owner of tenant acme: your session hung; reconnect")])
        self.assertEqual(watching.closed, [])
        successor, _ = self._attach(server_id, "write")  # no ConsoleBusy: the lock went with the kick, not the close
        self.call("DELETE", self.KICK, 204, key=self.admin, server_id=server_id, session_id=spectator.id)
        self.assertEqual(watching.closed, [(CloseCode.KICKED, "kicked by admin of tenant ops: no reason given")])
        late, arriving = self._attach(server_id, "read")
        self.call("DELETE", self.KICK, 204, key=self.member, body={"reason": ""}, server_id=server_id, session_id=late.id)
        self.assertEqual(arriving.closed, [(CloseCode.KICKED, "kicked by owner of tenant acme: no reason given")])
        for gone in (writer, spectator, late):  # their close handshakes end
            self.sessions.detach(gone)
        listed = self.call("GET", self.SESSIONS, 200, key=self.member, server_id=server_id)["serial_sessions"]
        self.assertEqual([s["id"] for s in listed], [successor.id])

    @provokes(("DELETE", KICK, 400))
    def test_kick_session_bad_bodies(self):
        """A reason that is not up to 200 printable characters, an unknown field or a body that is not a JSON object answers 400."""
        server_id = self._server()
        writer, client = self._attach(server_id)
        for body in ({"reason": 5}, {"reason": None}, {"reason": "x" * 201}, {"reason": "a\x1bb"}, {"why": "x"}):
            self.refuse("DELETE", self.KICK, 400, self.member, body, server_id=server_id, session_id=writer.id)
        for raw in (b"{not json", b"[]", b'"hung"'):
            self.call("DELETE", self.KICK, 400, key=self.member, raw=raw, server_id=server_id, session_id=writer.id)
        self.assertEqual(client.closed, [])

    @provokes(("DELETE", KICK, 401), ("DELETE", KICK, 404))
    def test_kick_session_refused(self):
        """No key is 401; another tenant's server, an unknown server, or no live session of that id on this server is 404."""
        server_id, sibling = self._server(), self._server()
        writer, client = self._attach(server_id)
        self.call("DELETE", self.KICK, 401, server_id=server_id, session_id=writer.id)
        self.call("DELETE", self.KICK, 404, key=self.other, server_id=server_id, session_id=writer.id)
        self.call("DELETE", self.KICK, 404, key=self.member, server_id=str(uuid.uuid4()), session_id=writer.id)
        self.call("DELETE", self.KICK, 404, key=self.member, server_id=sibling, session_id=writer.id)
        for session_id in (str(uuid.uuid4()), "not-an-id"):
            self.call("DELETE", self.KICK, 404, key=self.member, server_id=server_id, session_id=session_id)
        self.assertEqual(client.closed, [])
        self.clock.advance(self.sessions.lease + 1)
        self.call("DELETE", self.KICK, 404, key=self.admin, server_id=server_id, session_id=writer.id)
        self.assertEqual(client.closed, [])

    def test_every_documented_status_provoked(self):
        """Each status the spec lists for an operation is provoked by some test here."""
        provoked = set()
        for name in dir(self):
            provoked |= getattr(getattr(self, name), "provokes", frozenset())
        documented = {(method, path, int(status)) for path, method, operation in operations(self.spec)
                      for status in operation["responses"]}
        unprovoked = {case for case in documented - provoked if case[2] != 500}
        self.assertEqual(unprovoked, set())
        self.assertEqual(provoked - documented, set())
