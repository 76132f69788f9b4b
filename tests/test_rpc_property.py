"""Property: whatever JSON (or bytes) arrives, the server answers valid JSON-RPC 2.0 and keeps serving,
and the simulator behind the real stack sees only writes the governor allows.

One server (the full stack: simulator over RTU-over-TCP, bus, driver, governor,
loop, RPC), in a background thread with its own event loop, serves every
example over one keep-alive connection. CI (env CI set) runs 2000 examples.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .loop_support import assert_governor_rules_held
from .rpc_support import full_stack

pytestmark = pytest.mark.integration

EXAMPLES = 2000 if os.environ.get("CI") else 300
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

METHOD_PARAMS = {
    "ping": [],
    "health": [],
    "getStatus": ["chargerId"],
    "getChargingPower": ["chargerId"],
    "setChargingCurrent": ["ampere", "chargerId"],
    "startCharging": ["current", "chargerId"],
    "resumeCharging": ["current", "chargerId"],
    "stopCharging": ["chargerId"],
    "pauseCharging": ["chargerId"],
    "setRequestedPhases": ["phases", "chargerId"],
    "setLock": ["lock", "chargerId"],
    "getMode": ["chargerId"],
    "setMode": ["mode", "chargerId"],
    "setOverride": ["current", "phases", "charge", "lock", "pauseKind", "until", "chargerId"],
    "clearOverride": ["chargerId"],
    "getDecision": ["chargerId"],
    "getMeters": [],
    "listPlugins": [],
    "rpc.discover": [],
}

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)
interesting = st.sampled_from(
    [0, 5.99, 6, 6.01, 16, 32, 32.01, 1, 3, "pv", "off", "wb1", "soft", "release", -1]
)
param_values = interesting | json_values
ids = (
    st.none()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.text(max_size=10)
    | st.floats(allow_nan=False, allow_infinity=False)
)


@st.composite
def calls(draw: st.DrawFn) -> dict[str, Any]:
    method = draw(st.sampled_from(sorted(METHOD_PARAMS)) | st.text(max_size=15))
    names = METHOD_PARAMS.get(method, [])
    keys = st.sampled_from(names) | st.text(max_size=8) if names else st.text(max_size=8)
    req: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    params = draw(
        st.none() | st.dictionaries(keys, param_values, max_size=4) | st.lists(param_values, max_size=4)
    )
    if params is not None:
        req["params"] = params
    if draw(st.booleans()):
        req["id"] = draw(ids)
    if draw(st.integers(0, 9)) == 0:  # now and then break the envelope itself
        req[draw(st.sampled_from(["jsonrpc", "method", "extra", "id"]))] = draw(json_values)
    return req


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    content: bytes


class ServerThread:
    """A server on its own event loop, so synchronous hypothesis tests can call it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._cm = full_stack()
        self.stack, self.model, url = self._run(self._cm.__aenter__(), 60)
        self.port = int(url.rsplit(":", 1)[1].strip("/"))
        self.mark = len(self.model.record.writes)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def _run(self, coro: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def post(self, body: bytes) -> Reply:
        """POST over the one keep-alive connection."""
        self.conn.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        content = resp.read()
        # The server must keep the connection open: a close here would hide a crash.
        assert not resp.will_close, "server closed the keep-alive connection"
        return Reply(resp.status, resp.getheader("Content-Type", ""), content)

    def close(self) -> None:
        self.conn.close()
        self._run(self._cm.__aexit__(None, None, None), 60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerThread]:
    s = ServerThread()
    yield s
    s.close()


def check_response(obj: Any, request: Any = None) -> None:
    """``obj`` is one valid JSON-RPC 2.0 response (to ``request`` if that was a valid call with an id)."""
    assert isinstance(obj, dict) and obj.get("jsonrpc") == "2.0", obj
    assert "id" in obj and (("result" in obj) != ("error" in obj)), obj
    assert set(obj) <= {"jsonrpc", "id", "result", "error"}, obj
    if "error" in obj:
        err = obj["error"]
        assert isinstance(err["code"], int) and isinstance(err["message"], str), err
        assert set(err) <= {"code", "message", "data"}
        # Nothing arbitrary input does may crash a method.
        assert err["code"] != -32603, (request, obj)
        assert err["code"] in (-32700, -32600, -32601, -32602, -32000, -32001), err
        assert "Traceback" not in json.dumps(err)
    if isinstance(request, dict) and "id" in obj and obj["id"] is not None and "id" in request:
        assert obj["id"] == request["id"]


def check_reply(resp: Reply, request: Any) -> None:
    if resp.status == 204:
        assert resp.content == b""
        return
    assert resp.status == 200, resp.content
    assert resp.content_type.startswith("application/json")
    reply = json.loads(resp.content)
    if isinstance(reply, list):
        assert isinstance(request, list) and 0 < len(reply) <= len(request)
        for r in reply:
            check_response(r)
    else:
        check_response(reply, request)


def encode(value: Any) -> tuple[bytes, Any]:
    """The request body and what it decodes to (None for bytes that are not JSON)."""
    if isinstance(value, bytes):
        try:
            return value, json.loads(value)
        except ValueError:
            return value, None
    return json.dumps(value).encode(), value


bodies = calls() | st.lists(calls(), max_size=4) | json_values | st.binary(max_size=64)


@PROPERTY
@given(bodies)
def test_any_body_gets_a_valid_reply(srv: ServerThread, value: Any) -> None:
    body, request = encode(value)
    check_reply(srv.post(body), request)


def test_server_still_serves_and_writes_were_valid(srv: ServerThread) -> None:
    reply = json.loads(srv.post(b'{"jsonrpc":"2.0","method":"ping","id":1}').content)
    assert reply["result"]["message"] == "pong"
    # Whatever was asked, the simulator saw only what the governor allows: a soft pause or
    # 6..32 A (never 0), current changes at least 5 s apart, no refused writes.
    record = srv.model.record
    # Whatever the examples left behind (they may all have been refused or unchanged), a
    # person's valid request must still get through: clear any override, then ask for 13 A.
    srv.post(b'{"jsonrpc":"2.0","method":"clearOverride","id":2}')
    reply = json.loads(
        srv.post(b'{"jsonrpc":"2.0","method":"setChargingCurrent","params":{"ampere":13},"id":3}').content
    )
    assert reply["result"]["success"] is True, reply
    # A change scheduled behind an earlier one waits at most 5 s: give it time.
    deadline = time.monotonic() + 7.0
    while not ({w.register for w in record.writes[srv.mark :]} - {"HEARTBEAT_EM"}):
        assert time.monotonic() < deadline, "no RPC call reached the simulator"
        time.sleep(0.05)
    assert_governor_rules_held(record)
    assert not record.refused_writes, record.refused_writes
    assert record.worst_heartbeat_gap_s < 5.0
