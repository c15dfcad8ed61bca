"""docs/openapi.yaml against the Klein routes and the answers of the real API.

The spec is checked three ways: its operations are exactly the routes of
:class:`serialproxy.api.API`; it is structurally sound (every operation
answers something, every ``$ref`` resolves, every path parameter is
declared); and the real API, driven in memory over an sqlite file, answers
only statuses the spec lists, with bodies that validate against its schemas.
"""

import datetime
import re
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from serialproxy.api import API
from serialproxy.config import load_config
from serialproxy.errors import CloseCode
from serialproxy.interfaces import SerialPort, Server
from serialproxy.sessions import SessionManager
from serialproxy.store import SQLStore
from serialproxy.testing import inline_database

from ..support import sqlite_url
from serialproxy.tokens import KeyService, TokenService

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
_HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
_IMPLICIT_METHODS = {"HEAD", "OPTIONS"}
_SCHEMA_KEYWORDS = {
    "$ref", "type", "properties", "required", "items", "enum", "additionalProperties",
    "minimum", "maximum", "minItems", "maxItems", "minLength", "maxLength", "pattern", "format",
}
_ANNOTATIONS = {"description", "default", "example", "title"}
_FORMATS = {"uuid", "date-time", "uri"}
_BASE = "http://proxy.test"


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
    if "type" in schema and not _type_ok(schema["type"], value):
        return [f"{where}: expected {schema['type']}, got {value!r}"]
    errors = []
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

    def test_errors_use_error_schema(self):
        """Every 4xx and 5xx answer is the shared ``Error`` schema."""
        for path, method, operation in operations(self.spec):
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    content = resolve(self.spec, response)["content"]["application/json"]
                    self.assertEqual(content["schema"], {"$ref": "#/components/schemas/Error"}, (method, path, status))

    def test_security_is_the_api_key_header(self):
        """Every operation is guarded by the ``X-Auth-Token`` apiKey scheme."""
        scheme = self.spec["components"]["securitySchemes"]["ApiKey"]
        self.assertEqual((scheme["type"], scheme["in"], scheme["name"]), ("apiKey", "header", "X-Auth-Token"))
        self.assertEqual(self.spec["security"], [{"ApiKey": []}])
        for path, method, operation in operations(self.spec):
            self.assertNotIn("security", operation, (method, path))
            self.assertIn(401, {int(s) for s in operation["responses"]}, (method, path))

    def test_examples_validate(self):
        """Every request example validates against its own schema."""
        for where, node in [("paths", self.spec["paths"]), ("requestBodies", self.spec["components"]["requestBodies"])]:
            for media in _media_types(node):
                if "example" in media:
                    self.assertEqual(validate(self.spec, media["schema"], media["example"]), [], where)

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
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.db = inline_database(sqlite_url(self))
        self.addCleanup(self.db.close)
        self.store = SQLStore(self.db)
        self.admin = self._key("ops", True)
        self.member = self._key("acme", False)
        self.other = self._key("globex", False)
        self.stub = self._stub(self.store, enabled=True)

    def _key(self, tenant: str, admin: bool) -> str:
        keys = KeyService(self.store, self.clock)
        return self.successResultOf(Deferred.fromCoroutine(keys.create(tenant, admin)))[1]

    def _stub(self, store, enabled: bool) -> StubTreq:
        config = load_config(None, {"enabled": "true" if enabled else "false"})
        tokens = TokenService(store, self.clock, 600)
        sessions = SessionManager(store, tokens, self.clock, "node")
        api = API(config, store, KeyService(store, self.clock), tokens, sessions, self.clock,
                  lambda: "ws://127.0.0.1:6083/")
        return StubTreq(api.app.resource())

    def _server(self, tenant: str = "acme", status: str = "active", ports: int = 2) -> str:
        first = 10000 + 100 * len(self.successResultOf(self.store.list_servers()))
        server = Server(str(uuid.uuid4()), "vm", tenant, status, self.clock.seconds(),
                        tuple(SerialPort(i, "192.0.2.10", first + i) for i in range(ports)))
        self.successResultOf(self.store.create_server(server))
        return server.id

    def call(self, method: str, template: str, status: int, key=None, body=None, raw=None,
             stub=None, **params):
        """Send one request; check its status is the expected one and documented; the parsed body."""
        stub = stub or self.stub
        kwargs = {"headers": {"X-Auth-Token": key}} if key is not None else {}
        if body is not None:
            kwargs["json"] = body
        elif raw is not None:
            kwargs["data"] = raw
        d = stub.request(method, _BASE + template.format(**params), **kwargs)
        stub.flush()
        response = self.successResultOf(d)
        d = stub.content(response)
        stub.flush()
        content = self.successResultOf(d)
        self.assertEqual(response.code, status, content)
        self.assertIn((method, template, status), getattr(self, self._testMethodName).provokes)
        return self._check(method, template, response, content)

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
