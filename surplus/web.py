"""One aiohttp server: ``POST /`` JSON-RPC, ``GET /metrics``, ``GET /healthz``.

Safe by default: it binds 127.0.0.1. Bound beyond loopback it refuses to
start without a token, and with a token every write method needs
``Authorization: Bearer <token>`` (reads too when ``auth_reads``, and then
``GET /metrics`` and ``GET /healthz`` as well: they show power, setpoint, mode
and whether a car is there). Bodies over
``max_body_bytes`` get HTTP 413 with a JSON-RPC error; replies never carry
stack traces or filesystem paths (see :func:`surplus.jsonrpc.dumps`).

Misbehaving clients are bounded (:mod:`surplus.web_guard`): at most
``max_connections`` connections, ``header_timeout_s`` for the request headers,
``read_timeout_s`` for the body, and a bad request is one log line without a
traceback, rate-limited.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from . import __version__
from .api import ControllerAPI, SessionHistory
from .config import is_loopback
from .jsonrpc import INVALID_REQUEST, UNAUTHORIZED, Dispatcher, dumps, error_object
from .rpc import build_methods
from .rpc_health import charger_health, meter_health
from .web_guard import AiohttpLog, ClientLog, ConnectionGuard, GuardedSite, QuietHandler, one_line

log = logging.getLogger(__name__)

Metrics = Callable[[], tuple[bytes, str]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_JSON = "application/json"
#: The app's dispatcher (tests read its method table).
DISPATCHER = web.AppKey("dispatcher", Dispatcher)


@dataclass(frozen=True, slots=True, kw_only=True)
class RpcSettings:
    """Where and how the HTTP server listens."""

    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    #: Reads need the token too (writes always do when a token is set).
    auth_reads: bool = False
    max_body_bytes: int = 65536
    max_batch: int = 50
    #: Charger data older than this is refused by the getters (error -32000).
    stale_after_s: float = 30.0
    #: Idle keep-alive connections are closed after this long.
    keepalive_timeout_s: float = 15.0
    #: The whole request body must arrive within this.
    read_timeout_s: float = 10.0
    #: At most this many open connections (see :mod:`surplus.web_guard`).
    max_connections: int = 64
    #: A new connection must have sent its request headers within this.
    header_timeout_s: float = 5.0
    #: A write waits at most this long for the controller's verdict.
    call_timeout_s: float = 10.0

    def check(self) -> None:
        """Raise ``ValueError`` (one line) for settings the server must not start with."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f"RPC port {self.port} is not between 0 and 65535")
        if self.max_body_bytes < 1024 or self.max_batch < 1:
            raise ValueError("RPC max_body_bytes must be >= 1024 and max_batch >= 1")
        if self.max_connections < 1:
            raise ValueError(f"RPC max_connections must be >= 1, not {self.max_connections}")
        for name in ("header_timeout_s", "read_timeout_s", "keepalive_timeout_s", "call_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"RPC {name} must be > 0, not {getattr(self, name)}")
        if self.token is not None and not self.token.strip():
            raise ValueError("RPC token is empty")
        if not is_loopback(self.host) and not self.token:
            raise ValueError(
                f"refusing to serve JSON-RPC on {self.host} without a token: set RPC_TOKEN (or rpc.token) "
                "or bind 127.0.0.1"
            )


class WebServer:
    """A running server; ``port`` is the bound port (useful with port 0)."""

    def __init__(
        self,
        runner: web.AppRunner,
        site: GuardedSite,
        port: int,
        host: str,
        *,
        guard: ConnectionGuard,
        client_log: ClientLog,
    ) -> None:
        self._runner = runner
        #: Open connections, the cap and how many were refused or pushed out.
        self.guard = guard
        self._site = site
        self._client_log = client_log
        self.port = port
        self.host = host

    @property
    def url(self) -> str:
        """Base URL of the server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def close(self) -> None:
        """Stop listening and close open connections."""
        await self._runner.cleanup()
        self._client_log.close()


def _too_large(limit: int) -> web.Response:
    body = dumps(error_object(INVALID_REQUEST, f"Invalid request: body exceeds {limit} bytes"))
    return web.Response(status=413, body=body, content_type=_JSON)


def build_app(
    controller: ControllerAPI,
    settings: RpcSettings,
    *,
    metrics: Metrics | None = None,
    client_log: ClientLog | None = None,
    guard: ConnectionGuard | None = None,
    history: SessionHistory | None = None,
) -> web.Application:
    """The aiohttp application (no socket yet); ``guard`` is the server's connection guard,
    ``history`` the session history ``getSessions`` reads."""
    clients = client_log if client_log is not None else ClientLog()
    dispatcher = Dispatcher(
        build_methods(controller, stale_after_s=settings.stale_after_s, history=history),
        title="surplus",
        version=__version__,
        max_batch=settings.max_batch,
        auth_writes=settings.token is not None,
        auth_reads=settings.token is not None and settings.auth_reads,
        call_timeout_s=settings.call_timeout_s,
    )
    expected = f"Bearer {settings.token}".encode() if settings.token else None
    limit = settings.max_body_bytes

    def bad_client(request: web.Request, what: str) -> None:
        clients.line(logging.WARNING, f"bad JSON-RPC request from {request.remote or '?'}: {one_line(what)}")

    async def rpc(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > limit:
            bad_client(request, f"body of {request.content_length} bytes exceeds {limit}")
            return _too_large(limit)
        try:
            async with asyncio.timeout(settings.read_timeout_s):
                body = await request.content.read(limit + 1)
                # read(n) may return less than n before EOF on chunked bodies: keep reading.
                while len(body) <= limit and not request.content.at_eof():
                    chunk = await request.content.read(limit + 1 - len(body))
                    if not chunk:
                        break
                    body += chunk
        except TimeoutError:
            bad_client(request, f"body not complete within {settings.read_timeout_s:g} s")
            return web.Response(
                status=408, body=dumps(error_object(INVALID_REQUEST, "request body timed out"))
            )
        except ConnectionError:
            # The client went (or was pushed out by the connection limit): nobody reads a reply.
            log.debug("client %s went away during its request body", request.remote)
            return web.Response(status=400)
        if len(body) > limit:
            bad_client(request, f"body exceeds {limit} bytes")
            return _too_large(limit)
        authorized = _authorized(request, expected)
        with guard.busy(request.transport) if guard is not None else contextlib.nullcontext():
            reply = await dispatcher.handle(
                body, authorized=authorized, on_parse_error=lambda why: bad_client(request, why)
            )
        if reply is None:
            return web.Response(status=204)
        return web.Response(body=reply, content_type=_JSON)

    reads_need_token = expected is not None and settings.auth_reads

    def refused(request: web.Request) -> web.Response | None:
        """401 for /metrics and /healthz when reads need the token and the request lacks it."""
        if not reads_need_token or _authorized(request, expected):
            return None
        return web.Response(
            status=401,
            body=dumps(
                error_object(UNAUTHORIZED, "unauthorized: rpc.auth_reads is on, send the bearer token")
            ),
            content_type=_JSON,
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def healthz(request: web.Request) -> web.Response:
        if (denied := refused(request)) is not None:
            return denied
        worst, chargers = charger_health(controller, settings.stale_after_s)
        ok = bool(chargers) and worst == "healthy"
        status = "ok" if ok else worst
        # Meter trouble is reported but keeps 200: the chargers are still safely controlled.
        meters, degraded = meter_health(controller)
        body = dumps(
            {
                "status": status,
                "chargers": chargers,
                "meters": meters,
                "degraded": bool(degraded),
                "degradedReasons": degraded,
            }
        )
        return web.Response(status=200 if ok else 503, body=body, content_type=_JSON)

    async def metrics_handler(request: web.Request) -> web.Response:
        if (denied := refused(request)) is not None:
            return denied
        if metrics is None:
            raise web.HTTPNotFound(text="metrics are not enabled\n")
        body, content_type = metrics()
        return web.Response(body=body, headers={"Content-Type": content_type})

    @web.middleware
    async def headers_complete(request: web.Request, handler: Handler) -> web.StreamResponse:
        if guard is not None:
            guard.request_arrived(request.transport)
        return await handler(request)

    app = web.Application(client_max_size=limit + 1, middlewares=[headers_complete])
    app.on_response_prepare.append(_plain_server_header)
    app.router.add_post("/", rpc)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    app[DISPATCHER] = dispatcher
    return app


def _authorized(request: web.Request, expected: bytes | None) -> bool:
    """The request carries the bearer token (or none is configured)."""
    # Header bytes that are not UTF-8 arrive as surrogates: compare them as the raw bytes they were
    # (they never match a token), instead of failing with a traceback.
    given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
    return expected is None or hmac.compare_digest(given, expected)


async def _plain_server_header(_request: web.Request, response: web.StreamResponse) -> None:
    """No Python or aiohttp versions in replies (they help only someone looking for a weakness)."""
    response.headers["Server"] = "surplus"


class PortInUseError(OSError):
    """The RPC port is taken by another process; the message says what to do."""


def check_port_free(settings: RpcSettings) -> None:
    """Raise ``PortInUseError`` when another process listens on the RPC port.

    ``surplus run`` checks this before it starts the simulator and the bus, so a
    second ``make run`` stops at once with what to do instead of a bare errno.
    Other bind failures are left to the server's own bind to report.
    """
    if settings.port == 0:
        return
    try:
        addresses = socket.getaddrinfo(
            settings.host or None, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError:
        return
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    return
                raise PortInUseError(
                    f"the JSON-RPC port {settings.port} on {settings.host} is in use (another surplus "
                    "running?): set RPC_PORT to a free port (or rpc.port in the config), or pass --no-rpc "
                    "to run without the JSON-RPC server"
                ) from None


async def start_web(
    controller: ControllerAPI,
    settings: RpcSettings,
    *,
    metrics: Metrics | None = None,
    history: SessionHistory | None = None,
) -> WebServer:
    """Check ``settings`` (``ValueError`` if unsafe), then serve until ``close()``."""
    settings.check()
    client_log = ClientLog()
    guard = ConnectionGuard(
        max_connections=settings.max_connections,
        header_timeout_s=settings.header_timeout_s,
        client_log=client_log,
    )
    app = build_app(
        controller, settings, metrics=metrics, client_log=client_log, guard=guard, history=history
    )
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    server = runner.server
    assert server is not None
    loop = asyncio.get_running_loop()
    # aiohttp logs a malformed request with a traceback; AiohttpLog makes it one rate-limited line.
    aiohttp_log = AiohttpLog(client_log)

    def handler() -> QuietHandler:
        return QuietHandler(
            server,
            loop=loop,
            access_log=None,  # type: ignore[arg-type]  # None is aiohttp's documented "no access log"
            keepalive_timeout=settings.keepalive_timeout_s,
            logger=aiohttp_log,
        )

    site = GuardedSite(runner, settings.host, settings.port, guard=guard, handler=handler)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    port = site.port
    log.info(
        "JSON-RPC on http://%s:%d/ (token %s, at most %d connections)",
        settings.host,
        port,
        "set" if settings.token else "off",
        settings.max_connections,
    )
    return WebServer(runner, site, port, settings.host, guard=guard, client_log=client_log)
