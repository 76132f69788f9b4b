"""The HTTP server against misbehaving clients (real server on 127.0.0.1).

- a flood of half-open connections costs at most ``max_connections`` sockets and a
  few log lines; a normal call is still answered at once;
- a malformed request is one log line without a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from surplus.api import Override
from surplus.types import Verdict
from surplus.web import RpcSettings, WebServer, start_web
from surplus.web_guard import ClientLog, LineBudget, one_line

from .rpc_support import FakeController

pytestmark = pytest.mark.integration

STATUS = json.dumps({"jsonrpc": "2.0", "method": "getStatus", "id": 1}).encode()


def http_post(body: bytes, *, close: bool = True) -> bytes:
    return (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + (b"Connection: close\r\n" if close else b"")
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


async def exchange(port: int, *parts: bytes, timeout_s: float = 3.0) -> bytes:
    """Send ``parts`` on one new connection, each after the reply to the one before; all the server sent."""
    got = b""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for part in parts[:-1]:
                writer.write(part)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
                got += head + await reader.readexactly(length)
            writer.write(parts[-1])
            await writer.drain()
            with contextlib.suppress(ConnectionError):
                got += await reader.read()
            return got
        finally:
            writer.close()


def last_status(reply: bytes) -> bytes:
    return reply[reply.rfind(b"HTTP/1.") :].split(b" ", 2)[1]


def server_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.INFO]


@pytest.fixture
async def server(request: pytest.FixtureRequest) -> AsyncIterator[WebServer]:
    settings: RpcSettings = getattr(request, "param", RpcSettings(port=0))
    srv = await start_web(FakeController(), settings)
    yield srv
    await srv.close()


# -- connection limit and header timeout ------------------------------------------------------


HALF_OPEN = (
    b"",  # connects, says nothing
    b"POST / HTTP/1.1\r\nHost: x\r\n",  # headers never end
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",  # body never ends
)


@pytest.mark.parametrize("server", [RpcSettings(port=0, max_connections=16)], indirect=True)
async def test_half_open_flood_is_bounded_and_a_call_still_answers(
    server: WebServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    loop = asyncio.get_running_loop()
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        async with asyncio.timeout(10):
            for i in range(300):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                if HALF_OPEN[i % 3]:
                    writer.write(HALF_OPEN[i % 3])
                conns.append((reader, writer))
            started = loop.time()
            reply = await exchange(server.port, http_post(STATUS))
            assert loop.time() - started < 2.0
        assert reply.startswith(b"HTTP/1.1 200 ")
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["result"]["success"] is True
        assert server.guard.open_connections <= 16
        # The server closed all but the 16 newest (bounded wait for the client side to notice).
        async with asyncio.timeout(3):
            # Client sockets offer no event for "closed by the peer": poll (bounded).
            while sum(r.at_eof() or r.exception() is not None for r, _ in conns) < 300 - 16:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    finally:
        for _, writer in conns:  # gone all at once: the ones mid-body must not write tracebacks either
            writer.transport.abort()
        await asyncio.sleep(0.2)
    await server.close()
    lines = server_lines(caplog)
    # 10 lines per 10 s, then one line saying how many were left out.
    assert 1 <= len(lines) <= 11, [r.getMessage() for r in lines]
    assert "lines about bad or refused HTTP clients were left out" in lines[-1].getMessage()
    assert all(r.exc_info is None for r in caplog.records)
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("server", [RpcSettings(port=0, header_timeout_s=0.3)], indirect=True)
async def test_a_connection_without_complete_headers_is_closed_after_the_header_timeout(
    server: WebServer,
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await exchange(server.port, b"POST / HTTP/1.1\r\nHost: x\r\n", timeout_s=3.0) == b""
    assert 0.25 <= loop.time() - started < 2.0
    assert server.guard.open_connections == 0
    # A request sent at once is not affected.
    assert (await exchange(server.port, http_post(STATUS))).startswith(b"HTTP/1.1 200 ")


@dataclass
class GatedController(FakeController):
    """Writes wait for ``gate``: the connections that sent them stay busy; ``two_waiting`` tells."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    two_waiting: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: int = 0

    async def set_override(self, charger_id: str, override: Override) -> Verdict:
        self.waiting += 1
        if self.waiting == 2:
            self.two_waiting.set()
        await self.gate.wait()
        return await super().set_override(charger_id, override)


async def test_when_every_connection_is_busy_a_new_one_gets_503_and_the_busy_ones_finish() -> None:
    ctl = GatedController()
    srv = await start_web(ctl, RpcSettings(port=0, max_connections=2))
    try:
        write = json.dumps(
            {"jsonrpc": "2.0", "method": "setChargingCurrent", "params": {"ampere": 10}, "id": 1}
        ).encode()
        busy = [asyncio.ensure_future(exchange(srv.port, http_post(write), timeout_s=5)) for _ in range(2)]
        await asyncio.wait_for(ctl.two_waiting.wait(), 3)
        refused = await exchange(srv.port, http_post(STATUS))
        assert refused.startswith(b"HTTP/1.1 503 ")
        assert b"Retry-After: 1" in refused
        assert json.loads(refused.split(b"\r\n\r\n", 1)[1])["error"]["message"].startswith("busy")
        assert srv.guard.refused == 1 and srv.guard.pushed_out == 0
        ctl.gate.set()
        for reply in await asyncio.gather(*busy):
            assert reply.startswith(b"HTTP/1.1 200 ")
            assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["result"]["data"]["status"] == "applied"
    finally:
        await srv.close()


def test_settings_refuse_no_connections_and_zero_timeouts() -> None:
    with pytest.raises(ValueError, match="max_connections must be >= 1"):
        RpcSettings(max_connections=0).check()
    with pytest.raises(ValueError, match="header_timeout_s must be > 0"):
        RpcSettings(header_timeout_s=0).check()


# -- malformed requests: one line each, no traceback ------------------------------------------


MALFORMED = [
    ("tls hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)) + b"\r\n\r\n", 400),
    ("bad request line", b"HELLO THERE\r\n\r\n", 400),
    ("header without colon", b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n", 400),
    ("request line too long", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    # aiohttp's first request on a connection is logged differently from the later ones.
    ("garbage after a good request", (http_post(STATUS, close=False), b"\x00\x01\x02garbage\n\r\n\r\n"), 400),
    ("broken json", http_post(b'{"jsonrpc": "2.0", "method": '), 200),
    ("not utf-8", http_post(b'{"jsonrpc": "2.0", "method": "\xff\xfe"}'), 200),
    (
        "body too large",
        http_post(b"[" + b" " * 100_000 + b"]"),  # sent whole: aiohttp waits for it before closing
        413,
    ),
]


@pytest.mark.parametrize(("data", "status"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
async def test_a_malformed_request_is_one_log_line_without_traceback(
    server: WebServer, caplog: pytest.LogCaptureFixture, data: bytes | tuple[bytes, ...], status: int
) -> None:
    caplog.set_level(logging.INFO)
    caplog.clear()
    reply = await exchange(server.port, *(data if isinstance(data, tuple) else (data,)))
    assert last_status(reply) == b"%d" % status
    assert b"\r\nServer: surplus\r\n" in reply  # also on aiohttp's own 400 replies
    await asyncio.sleep(0)  # aiohttp logs from the connection's task
    lines = server_lines(caplog)
    assert len(lines) == 1, [r.getMessage() for r in lines]
    (line,) = lines
    text = line.getMessage()
    assert line.levelno == logging.WARNING and line.exc_info is None
    assert text.startswith("bad ") and "127.0.0.1" in text
    assert "\n" not in text and all(c.isprintable() for c in text) and len(text) < 300


async def test_a_flood_of_garbage_is_rate_limited(
    server: WebServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    caplog.clear()
    for _ in range(30):
        assert (await exchange(server.port, b"HELLO THERE\r\n\r\n")).startswith(b"HTTP/1.0 400 ")
    assert len(server_lines(caplog)) == 10
    await server.close()  # writes the summary of the window at once
    assert server_lines(caplog)[-1].getMessage().startswith("20 more lines about bad or refused HTTP clients")


def test_line_budget_counts_what_it_leaves_out() -> None:
    budget = LineBudget(3, window_s=10.0)
    assert [budget.take(t) for t in (0.0, 1.0, 2.0, 3.0, 9.9)] == [True, True, True, False, False]
    assert budget.window_end == 10.0
    assert budget.drain() == 2 and budget.drain() == 0
    assert budget.take(10.0) is True  # a new window


async def test_client_log_writes_the_summary_on_close(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clients = ClientLog(lines=2, window_s=60.0, logger=logging.getLogger("test.clients"))
    for i in range(5):
        clients.line(logging.WARNING, f"bad {i}")
    assert [r.getMessage() for r in caplog.records] == ["bad 0", "bad 1"]
    clients.close()
    assert caplog.records[-1].getMessage() == (
        "3 more lines about bad or refused HTTP clients were left out in the last 60 s"
    )


def test_one_line() -> None:
    assert one_line("Invalid method:\n\n  b'\\x16'\n    ^") == "Invalid method: b'\\x16' ^"
    assert one_line("a\x00b\x1bc") == "a\\x00b\\x1bc"
    assert one_line("x" * 500, limit=20) == "x" * 17 + "..."
