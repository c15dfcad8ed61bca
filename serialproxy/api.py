"""The REST API (Klein): servers and console URLs, as in DESIGN.md.

Every call carries ``X-Auth-Token``; a member key acts for its own tenant,
an admin key for all. Another tenant's server answers 404, exactly like a
server that does not exist. Errors are ``{"error": {"code", "message"}}``.
"""

import datetime
import json
from typing import Callable, ClassVar, Optional
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from attrs import define
from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from werkzeug.exceptions import MethodNotAllowed, NotFound as RouteNotFound

from .config import Config
from .errors import (
    BadRequest,
    Conflict,
    ConsolesDisabled,
    Forbidden,
    NotFound,
    SerialProxyError,
    TokenInvalid,
    Unauthorized,
)
from .interfaces import ApiKey, Hypervisor, Image, IStore, SerialPort, Server
from .servers import Servers
from .sessions import SessionManager
from .tokens import KeyService, TokenService, new_id
from . import validate

__all__ = ["API", "MAX_BODY", "console_url"]

MAX_BODY = 64 * 1024


def console_url(base: str, secret: str) -> str:
    """``base`` with ``token=secret`` added to its query."""
    parts = urlsplit(base)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "token"]
    query.append(("token", secret))
    return urlunsplit(parts._replace(path=parts.path or "/", query=urlencode(query)))


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def _server_json(server: Server, key: ApiKey) -> dict:
    ports = [{"index": p.index} | ({"host": p.host, "port": p.port} if key.is_admin else {}) for p in server.serial_ports]
    body = {"id": server.id, "name": server.name, "tenant_id": server.tenant_id, "status": server.status,
            "created": _iso(server.created), "serial_ports": ports}
    if server.hypervisor_id:
        body.update({"hypervisor_id": server.hypervisor_id, "image_id": server.image_id, "memory_mb": server.memory_mb})
        if key.is_admin:
            body["domain"] = server.domain
    return body


def _session_json(record) -> dict:
    return {"id": record.id, "port": record.port_index, "mode": record.mode, "peer": record.peer,
            "since": _iso(record.since), "bytes_in": record.bytes_in, "bytes_out": record.bytes_out,
            "tenant_id": record.tenant_id, "node": record.node}


def _hypervisor_json(hypervisor: Hypervisor) -> dict:
    return {"id": hypervisor.id, "name": hypervisor.name, "libvirt_uri": hypervisor.libvirt_uri,
            "proxyclient_address": hypervisor.proxyclient_address, "virt_type": hypervisor.virt_type,
            "port_range": f"{hypervisor.port_range[0]}:{hypervisor.port_range[1]}", "created": _iso(hypervisor.created)}


def _image_json(image: Image) -> dict:
    return {"id": image.id, "name": image.name, "kernel": image.kernel, "initrd": image.initrd,
            "cmdline": image.cmdline, "disk": image.disk, "metadata": image.metadata, "created": _iso(image.created)}


def _json(request, status: int, body) -> bytes:
    _json_head(request, status)
    return json.dumps(body).encode("utf-8")


def _json_head(request, status: int) -> None:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")


# A list answer is made this many items at a time, a slice a reactor turn.
# Made in one go, 10,000 servers took ~140 ms of Python (their dicts, then
# the JSON), and every console's bytes waited that long; a slice takes a few
# milliseconds. See docs/performance.md.
LIST_SLICE = 200


async def _json_list(clock: IReactorTime, request, name: str, items: list, render: Callable, size: int = LIST_SLICE) -> bytes:
    """``_json(request, 200, {name: [render(item) for item in items]})``, the same bytes, made ``size`` items a reactor turn."""
    pieces = []
    for start in range(0, len(items), size):
        if start:
            await deferLater(clock, 0, lambda: None)  # the reactor's other work comes first
        pieces.append(json.dumps([render(item) for item in items[start:start + size]])[1:-1])
    _json_head(request, 200)
    return f"{{{json.dumps(name)}: [{', '.join(pieces)}]}}".encode("utf-8")


def _body(request, required: bool = True) -> dict:
    raw = request.content.read(MAX_BODY + 1) if request.content is not None else b""
    if len(raw) > MAX_BODY:
        raise BadRequest(f"request body larger than {MAX_BODY} bytes")
    if not raw.strip():
        if required:
            raise BadRequest("missing JSON request body")
        return {}
    try:
        body = json.loads(raw)
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


@define
class API:
    """The REST API of one serialproxy node."""

    _config: Config
    _store: IStore
    _keys: KeyService
    _tokens: TokenService
    _sessions: SessionManager
    _clock: IReactorTime
    _base_url: Callable[[], str]
    _entropy: Callable[[int], bytes]
    _servers: Servers
    app: ClassVar[Klein] = Klein()
    _log: ClassVar[Logger] = Logger()

    # errors

    @app.handle_errors(SerialProxyError)
    def _domain_error(self, request, failure):
        return _json(request, failure.value.http_status,
                     {"error": {"code": failure.value.http_status, "message": failure.value.message}})

    @app.handle_errors(RouteNotFound)
    def _no_route(self, request, failure):
        path = request.path.decode("utf-8", "replace")
        return _json(request, 404, {"error": {"code": 404, "message": f"no such API path: {path}"}})

    @app.handle_errors(MethodNotAllowed)
    def _bad_method(self, request, failure):
        allowed = ", ".join(sorted(failure.value.valid_methods or ()))
        request.setHeader(b"Allow", allowed.encode("ascii"))
        method = request.method.decode("ascii", "replace")
        return _json(request, 405, {"error": {"code": 405, "message": f"method {method} not allowed here; allowed: {allowed}"}})

    @app.handle_errors(Exception)
    def _unexpected(self, request, failure):
        self._log.failure("API request {method} {path} failed", failure,
                          method=request.method, path=request.path)
        return _json(request, 500, {"error": {"code": 500, "message": "internal error; the proxy's log has the details"}})

    # helpers

    async def _caller(self, request) -> ApiKey:
        raw = request.getHeader(b"X-Auth-Token")
        try:
            secret = raw.decode("ascii") if raw is not None else None
        except UnicodeDecodeError:
            raise Unauthorized("invalid API key in X-Auth-Token") from None
        return await self._keys.authenticate(secret)

    async def _admin(self, request) -> ApiKey:
        key = await self._caller(request)
        if not key.is_admin:
            raise Forbidden("this call needs an admin API key (serialproxy-manage create-key --admin)")
        return key

    async def _visible_server(self, key: ApiKey, server_id: str, tenant_id: Optional[str] = None) -> Server:
        server = await self._store.get_server(server_id) if validate.is_id(server_id) else None
        visible = server is not None and (key.is_admin or server.tenant_id == key.tenant_id)
        if not visible or (tenant_id is not None and server.tenant_id != tenant_id):
            raise NotFound(f"no server {server_id!r}")
        return server

    # servers

    @app.route("/v3/servers", methods=["POST"])
    async def create_server(self, request):
        """Boot a server through libvirt (image + hypervisor), or register one whose serial ports listen."""
        key = await self._admin(request)
        body = _body(request)
        if isinstance(body.get("server"), dict) and "serial_ports" not in body["server"]:
            return await self._boot(request, key, validate.boot_body(body, with_tenant=True))
        spec = validate.server_body(body)
        server = Server(new_id(self._entropy), spec["name"],
                        spec["tenant_id"], "active", self._clock.seconds(),
                        tuple(SerialPort(i, p["host"], p["port"]) for i, p in enumerate(spec["serial_ports"])))
        await self._servers.register(server)
        self._log.info("registered server {id} ({name}) of tenant {tenant} with {n} serial ports",
                       id=server.id, name=server.name, tenant=server.tenant_id, n=len(server.serial_ports))
        request.setHeader(b"Location", f"/v3/servers/{server.id}".encode("ascii"))
        return _json(request, 201, {"server": _server_json(server, ApiKey("", "", True, "", 0))})

    @app.route("/v2/<tenant_id>/servers", methods=["POST"])
    async def boot_server_v2(self, request, tenant_id):
        """A member boots a server for its own tenant."""
        key = await self._caller(request)
        if not key.is_admin and key.tenant_id != tenant_id:
            raise Forbidden(f"this API key acts for tenant {key.tenant_id!r}, not {tenant_id!r}")
        spec = validate.boot_body(_body(request), with_tenant=False)
        spec["tenant_id"] = validate.tenant_id(tenant_id, "tenant_id")
        return await self._boot(request, key, spec)

    async def _boot(self, request, key, spec):
        image = await self._store.find_image(spec["image"])
        if image is None:
            raise BadRequest(f"server.image: no image {spec['image']!r} (GET /v3/images lists them)")
        hypervisor = await self._store.find_hypervisor(spec["hypervisor"])
        if hypervisor is None:
            raise BadRequest(f"server.hypervisor: no hypervisor {spec['hypervisor']!r}")
        server = await self._servers.boot(spec["name"], spec["tenant_id"], image, hypervisor, spec["memory_mb"])
        request.setHeader(b"Location", f"/v3/servers/{server.id}".encode("ascii"))
        return _json(request, 202, {"server": _server_json(server, key)})

    # hypervisors and images

    @app.route("/v3/hypervisors", methods=["POST"])
    async def create_hypervisor(self, request):
        await self._admin(request)
        spec = validate.hypervisor_body(_body(request), self._config.port_range, self._config.proxyclient_address)
        hypervisor = Hypervisor(new_id(self._entropy), spec["name"], spec["libvirt_uri"], spec["proxyclient_address"],
                                spec["port_range"], self._clock.seconds(), spec["virt_type"])
        await self._servers.check_hypervisor(hypervisor)
        await self._store.create_hypervisor(hypervisor)
        self._log.info("registered hypervisor {name} at {uri}", name=hypervisor.name, uri=hypervisor.libvirt_uri)
        return _json(request, 201, {"hypervisor": _hypervisor_json(hypervisor)})

    @app.route("/v3/hypervisors", methods=["GET"])
    async def list_hypervisors(self, request):
        await self._admin(request)
        return _json(request, 200, {"hypervisors": [_hypervisor_json(h) for h in await self._store.list_hypervisors()]})

    @app.route("/v3/images", methods=["POST"])
    async def create_image(self, request):
        await self._admin(request)
        spec = validate.image_body(_body(request))
        image = Image(new_id(self._entropy), spec["name"], spec["kernel"], spec["initrd"], spec["cmdline"],
                      spec["disk"], spec["metadata"], self._clock.seconds())
        await self._store.create_image(image)
        return _json(request, 201, {"image": _image_json(image)})

    @app.route("/v3/images", methods=["GET"])
    async def list_images(self, request):
        await self._caller(request)
        return _json(request, 200, {"images": [_image_json(i) for i in await self._store.list_images()]})

    @app.route("/v3/servers", methods=["GET"])
    async def list_servers(self, request):
        key = await self._caller(request)
        servers = await self._store.list_servers(None if key.is_admin else key.tenant_id)
        return await _json_list(self._clock, request, "servers", servers, lambda server: _server_json(server, key))

    @app.route("/v3/servers/<server_id>", methods=["GET"])
    async def show_server(self, request, server_id):
        key = await self._caller(request)
        server = await self._servers.refresh(await self._visible_server(key, server_id))
        return _json(request, 200, {"server": _server_json(server, key)})

    @app.route("/v3/servers/<server_id>", methods=["DELETE"])
    async def delete_server(self, request, server_id):
        key = await self._caller(request)
        server = await self._visible_server(key, server_id)
        await self._servers.delete(server)
        self._tokens.forget_server(server.id)
        self._sessions.close_server(server.id, NotFound.close_code, "the server was deleted")
        self._log.info("deleted server {id} by key {key}", id=server.id, key=key.id)
        request.setResponseCode(204)
        return b""

    # console sessions

    @app.route("/v3/servers/<server_id>/serial-sessions", methods=["GET"])
    async def server_sessions(self, request, server_id):
        """Live sessions on the server's consoles (owner, admin)."""
        key = await self._caller(request)
        server = await self._visible_server(key, server_id)
        records = await self._sessions.list(server.id)
        return await _json_list(self._clock, request, "serial_sessions", records, _session_json)

    @app.route("/v3/serial-sessions", methods=["GET"])
    async def all_sessions(self, request):
        """Every live session (admin)."""
        await self._admin(request)
        records = await self._sessions.list()
        return await _json_list(self._clock, request, "serial_sessions", records,
                                lambda record: _session_json(record) | {"server_id": record.server_id})

    @app.route("/v3/servers/<server_id>/serial-sessions/<session_id>", methods=["DELETE"])
    async def kick_session(self, request, server_id, session_id):
        """Force-disconnect a session (owner, admin): close code 4010 with the reason."""
        key = await self._caller(request)
        server = await self._visible_server(key, server_id)
        reason = validate.kick_body(_body(request, required=False))
        actor = f"{'admin' if key.is_admin else 'owner'} of tenant {key.tenant_id}"
        await self._sessions.kick(server.id, session_id, reason, actor)
        request.setResponseCode(204)
        return b""

    @app.route("/v3/console-info", methods=["GET"])
    async def console_info(self, request):
        """What a console URL's token opens: for the console page's title bar. The token is the credential."""
        raw = (request.args.get(b"token") or [b""])[0]
        token = await self._tokens.check(raw.decode("ascii", "replace"))
        server = await self._store.get_server(token.server_id)
        if server is None:  # deleted since (on another node, or while its token was looked up)
            self._tokens.forget_server(token.server_id)
            raise TokenInvalid("the server of this console is gone")
        return _json(request, 200, {"console": {
            "server_id": server.id, "server_name": server.name, "port": token.port_index,
            "expires": _iso(token.expires), "modes": ["write", "read"]}})

    # consoles

    @app.route("/v2/<tenant_id>/servers/<server_id>/get-serial-console", methods=["POST"])
    async def get_serial_console_v2(self, request, tenant_id, server_id):
        """Nova's v2 shape: tenant in the path, 200."""
        key = await self._caller(request)
        if not key.is_admin and key.tenant_id != tenant_id:
            raise Forbidden(f"this API key acts for tenant {key.tenant_id!r}, not {tenant_id!r}")
        return await self._console(request, key, server_id, tenant_id, 200)

    @app.route("/v3/servers/<server_id>/get-serial-console", methods=["POST"])
    async def get_serial_console_v3(self, request, server_id):
        """Tenant from the key, 202."""
        return await self._console(request, await self._caller(request), server_id, None, 202)

    async def _console(self, request, key, server_id, tenant_id, status):
        if not self._config.enabled:
            raise ConsolesDisabled()
        kind, index = validate.console_body(_body(request, required=False))
        server = await self._servers.refresh(await self._visible_server(key, server_id, tenant_id))
        if server.status != "active":
            raise Conflict(f"server {server.id} is {server.status}, not active: its console cannot be reached")
        port = await self._servers.console_port(server, index)
        secret = await self._tokens.mint(server, port, key.tenant_id)
        self._log.info("console URL for {server}/{port} minted for key {key}", server=server.id, port=index, key=key.id)
        return _json(request, status, {"serial_console": {"type": kind, "port": index, "url": console_url(self._base_url(), secret)}})

