"""What keeps the HTTP server small when clients misbehave.

- :class:`ConnectionGuard` caps the open connections. At the cap, a new
  connection pushes out the connection that has waited longest without a
  request being worked on (a half-open one, a slow body, an idle keep-alive);
  when every connection has a request in progress, the new one gets a 503 and
  is closed. A connection that has not sent complete request headers within
  ``header_timeout_s`` is closed. So a flood of half-open connections costs at
  most ``max_connections`` sockets, and a client that sends its request at once
  is still answered.
- :class:`ClientLog` writes what bad clients cause (malformed requests,
  unparsable JSON, pushed-out connections) as one line each, without a
  traceback, at most ``lines`` per ``window_s``, then one line with how many
  were left out. :class:`AiohttpLog` routes aiohttp's own server log there.

The control loop and the heartbeat share the event loop with the server; all
of this is bounded work per connection, so a flood cannot starve them.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_request import BaseRequest

log = logging.getLogger("surplus.web")

_BUSY_BODY = (
    b'{"jsonrpc":"2.0","error":{"code":-32000,"message":"busy: too many connections, retry"},"id":null}'
)
#: Sent to a connection over the cap when every other one has a request in progress.
_BUSY_REPLY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Server: surplus\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: %d\r\n"
    b"\r\n%s"
) % (len(_BUSY_BODY), _BUSY_BODY)


def one_line(text: str, limit: int = 200) -> str:
    """``text`` fit for one log line: no line breaks or control characters, at most ``limit`` characters."""
    flat = " ".join(text.split())
    flat = "".join(c if c.isprintable() else repr(c)[1:-1] for c in flat)
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class LineBudget:
    """At most ``lines`` lines per window of ``window_s``; the rest are counted as left out."""

    def __init__(self, lines: int, window_s: float) -> None:
        self.lines = lines
        self.window_s = window_s
        self._start = -math.inf
        self._used = 0
        self.left_out = 0

    def take(self, now: float) -> bool:
        """May a line be written at ``now``? (A new window starts with the first line after the last one ended.)"""
        if now - self._start >= self.window_s:
            self._start, self._used = now, 0
        if self._used < self.lines:
            self._used += 1
            return True
        self.left_out += 1
        return False

    @property
    def window_end(self) -> float:
        return self._start + self.window_s

    def drain(self) -> int:
        """How many were left out since the last call."""
        n, self.left_out = self.left_out, 0
        return n


class ClientLog:
    """One log line per client problem, rate-limited; must be used inside the running loop."""

    def __init__(self, lines: int = 10, window_s: float = 10.0, logger: logging.Logger = log) -> None:
        self._budget = LineBudget(lines, window_s)
        self._log = logger
        self._summary: asyncio.TimerHandle | None = None

    def line(self, level: int, text: str, *, exc_info: BaseException | None = None) -> None:
        loop = asyncio.get_running_loop()
        if self._budget.take(loop.time()):
            self._log.log(level, "%s", text, exc_info=exc_info)
        elif self._summary is None:
            self._summary = loop.call_at(self._budget.window_end, self._write_summary)

    def _write_summary(self) -> None:
        self._summary = None
        n = self._budget.drain()
        if n:
            self._log.warning(
                "%d more lines about bad or refused HTTP clients were left out in the last %g s",
                n,
                self._budget.window_s,
            )

    def close(self) -> None:
        """Write the pending summary now (the server stops)."""
        if self._summary is not None:
            self._summary.cancel()
            self._write_summary()


class AiohttpLog(logging.Logger):
    """The logger handed to aiohttp's request handler (``logger=``).

    aiohttp logs a request it cannot parse with a full traceback (or, when it is
    the first on its connection, at debug level only). Here such a request is one
    warning line; a client that went away is a debug line; anything else (a bug
    of ours) keeps its traceback. All of it goes through the :class:`ClientLog`.
    """

    def __init__(self, client_log: ClientLog) -> None:
        super().__init__("surplus.web.aiohttp")
        self._client_log = client_log

    def handle(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        text = record.getMessage()
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            reason = one_line(str(exc.message) or type(exc).__name__)
            self._client_log.line(logging.WARNING, f"bad HTTP request from {remote} ({exc.code}): {reason}")
        elif isinstance(exc, ConnectionError):
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s: %s", one_line(text), one_line(str(exc)))
        elif exc is not None:
            self._client_log.line(logging.ERROR, one_line(text), exc_info=exc)
        elif record.levelno >= logging.INFO:
            self._client_log.line(record.levelno, one_line(text))
        elif log.isEnabledFor(record.levelno):
            log.log(record.levelno, "%s", one_line(text))


@dataclass(eq=False, slots=True)
class _Conn:
    transport: asyncio.Transport
    #: When it connected, or last finished a request: the oldest is pushed out first.
    since: float
    busy: int = 0
    header_timer: asyncio.TimerHandle | None = None
    peer: str = "?"


class ConnectionGuard:
    """Counts the server's connections and enforces the cap and the header timeout."""

    def __init__(self, *, max_connections: int, header_timeout_s: float, client_log: ClientLog) -> None:
        self.max_connections = max_connections
        self._header_timeout_s = header_timeout_s
        self._client_log = client_log
        self._conns: dict[asyncio.BaseTransport, _Conn] = {}
        self.refused = 0
        self.pushed_out = 0

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def wrap(self, inner: asyncio.Protocol) -> asyncio.Protocol:
        """``inner`` (aiohttp's protocol for a new connection) behind the guard."""
        return _Guarded(self, inner)

    def admit(self, transport: asyncio.Transport) -> bool:
        loop = asyncio.get_running_loop()
        now = loop.time()
        peer = _peer(transport)
        if len(self._conns) >= self.max_connections:
            idle = [c for c in self._conns.values() if not c.busy]
            if not idle:
                self.refused += 1
                self._client_log.line(
                    logging.WARNING,
                    f"HTTP connection from {peer} refused: all {self.max_connections} connections are busy",
                )
                transport.write(_BUSY_REPLY)
                transport.close()
                return False
            oldest = min(idle, key=lambda c: c.since)
            self.pushed_out += 1
            self._client_log.line(
                logging.INFO,
                f"HTTP connection limit ({self.max_connections}) reached: closed the connection from {oldest.peer}"
                f" that waited longest for a request to complete ({now - oldest.since:.1f} s)",
            )
            self._drop(oldest)
            oldest.transport.abort()
        conn = _Conn(transport=transport, since=now, peer=peer)
        conn.header_timer = loop.call_at(now + self._header_timeout_s, self._headers_late, conn)
        self._conns[transport] = conn
        return True

    def _headers_late(self, conn: _Conn) -> None:
        conn.header_timer = None
        if self._conns.get(conn.transport) is conn and not conn.busy:
            self._drop(conn)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "HTTP connection from %s closed: no complete request within %g s",
                    conn.peer,
                    self._header_timeout_s,
                )
            conn.transport.abort()

    def _drop(self, conn: _Conn) -> None:
        if conn.header_timer is not None:
            conn.header_timer.cancel()
            conn.header_timer = None
        if self._conns.get(conn.transport) is conn:
            del self._conns[conn.transport]

    def lost(self, transport: asyncio.BaseTransport) -> None:
        conn = self._conns.get(transport)
        if conn is not None:
            self._drop(conn)

    def request_arrived(self, transport: asyncio.BaseTransport | None) -> None:
        """The headers of a request are complete: the header timeout no longer applies."""
        conn = self._conns.get(transport) if transport is not None else None
        if conn is not None and conn.header_timer is not None:
            conn.header_timer.cancel()
            conn.header_timer = None

    def busy(self, transport: asyncio.BaseTransport | None) -> _Busy:
        """Context manager: while inside, the connection is not pushed out."""
        return _Busy(self._conns.get(transport) if transport is not None else None)

    def close(self) -> None:
        for conn in list(self._conns.values()):
            self._drop(conn)


class _Busy:
    __slots__ = ("_conn",)

    def __init__(self, conn: _Conn | None) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        if self._conn is not None:
            self._conn.busy += 1

    def __exit__(self, *_exc: object) -> None:
        if self._conn is not None:
            self._conn.busy -= 1
            self._conn.since = asyncio.get_running_loop().time()


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "?"


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol behind the guard: a refused connection never reaches it."""

    __slots__ = ("_admitted", "_guard", "_inner", "_transport")

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._transport: asyncio.BaseTransport | None = None
        self._inner = inner
        self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._admitted = self._guard.admit(transport)
        if self._admitted:
            self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._admitted:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._admitted else None

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._admitted:
            self._admitted = False
            if self._transport is not None:
                self._guard.lost(self._transport)
            self._inner.connection_lost(exc)


class QuietHandler(web.RequestHandler):
    """aiohttp's protocol, whose own error replies (400 for a malformed request) also say ``Server: surplus``.

    Those replies are made outside the application, so its ``on_response_prepare``
    never sees them; without this they would name the Python and aiohttp versions.
    """

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        response = super().handle_error(request, status, exc, message)
        response.headers["Server"] = "surplus"
        return response


class GuardedSite(web.BaseSite):
    """A TCP site whose connections (made by ``handler``) pass through a :class:`ConnectionGuard`."""

    __slots__ = ("_guard", "_handler", "_host", "_listener", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        guard: ConnectionGuard,
        handler: Callable[[], asyncio.Protocol],
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._guard = guard
        self._handler = handler
        self._listener: asyncio.Server | None = None

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def port(self) -> int:
        if self._listener is not None and self._listener.sockets:
            return int(self._listener.sockets[0].getsockname()[1])
        return self._port

    async def start(self) -> None:
        await super().start()
        guard, handler = self._guard, self._handler
        self._listener = await asyncio.get_running_loop().create_server(
            lambda: guard.wrap(handler()), self._host, self._port
        )

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        self._guard.close()
        await super().stop()
