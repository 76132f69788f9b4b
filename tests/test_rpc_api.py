"""JSON-RPC methods over real HTTP against the running server (in-memory controller)."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import aiohttp
import jsonschema
import pytest

from surplus.api import Override
from surplus.jsonrpc import Dispatcher
from surplus.rpc import build_methods
from surplus.types import Command, Decision, MeterReading, Outcome, PauseKind, ReadGroup, Source, Verdict
from surplus.web import DISPATCHER, RpcSettings, WebServer, start_web

from .rpc_support import FakeController, sample_decision

pytestmark = pytest.mark.integration

ISO_MS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class Client:
    def __init__(self, server: WebServer, session: aiohttp.ClientSession) -> None:
        self.url = server.url
        self.session = session
        self.next_id = 0

    async def post(self, payload: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        async with self.session.post(self.url, data=data, headers=headers or {}) as resp:
            raw = await resp.read()
            return resp.status, (json.loads(raw) if raw else None)

    async def call(self, method: str, params: Any = None, **kw: Any) -> dict[str, Any]:
        self.next_id += 1
        req: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": self.next_id}
        if params is not None:
            req["params"] = params
        status, reply = await self.post(req, **kw)
        assert status == 200
        assert reply["jsonrpc"] == "2.0" and reply["id"] == self.next_id
        return reply

    async def result(self, method: str, params: Any = None) -> dict[str, Any]:
        reply = await self.call(method, params)
        assert "error" not in reply, reply
        assert reply["result"]["success"] is True
        assert ISO_MS_Z.match(reply["result"]["timestamp"])
        return reply["result"]

    async def error(self, method: str, params: Any = None, **kw: Any) -> dict[str, Any]:
        reply = await self.call(method, params, **kw)
        assert "result" not in reply, reply
        return reply["error"]


@pytest.fixture
def ctl() -> FakeController:
    return FakeController()


@pytest.fixture
async def server(ctl: FakeController) -> AsyncIterator[WebServer]:
    srv = await start_web(
        ctl, RpcSettings(port=0), metrics=lambda: (b"surplus_up 1\n", "text/plain; version=0.0.4")
    )
    yield srv
    await srv.close()


@pytest.fixture
async def client(server: WebServer) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession() as session:
        yield Client(server, session)


# -- Node-compatible reads --------------------------------------------------------------------


async def test_ping_and_health(client: Client) -> None:
    pong = await client.result("ping")
    assert pong["message"] == "pong" and "data" not in pong
    health = (await client.result("health"))["data"]
    assert health["status"] == "healthy" and health["modbusConnected"] is True
    assert health["uptime"] == pytest.approx(100.0)
    assert ISO_MS_Z.match(health["timestamp"])


NODE_SHAPES: dict[str, Any] = {
    "getDeviceInfo": {
        "modbusVersion": "1.0.3",
        "firmwareVersion": "2.0",
        "serialNumber": "ABC123456",
        "maxCurrentEVSE": 32.0,
        "maxCurrentHouse": 32.0,
    },
    "getStatus": {
        "evseState": 5,
        "evseStateText": "Charging (C2)",
        "cpState": 28,
        "cpStateText": "C2 (charging)",
        "authorizationStatus": 1,
        "authorizationText": "Authorized (charging released)",
        "downgrade": 1,
        "downgradeText": "Charging current not downgraded",
        "phaseRotation": 0,
        "signaledCurrent": 16.0,
    },
    "getVoltage": {"l1": 230.5, "l2": 231.0, "l3": 229.8, "unit": "V"},
    "getCurrent": {"l1": 15.2, "l2": 15.1, "l3": 15.3, "unit": "A"},
    "getPower": {"l1": 3502.6, "l2": 3488.1, "l3": 3511.9, "total": 10502.6, "unit": "W"},
    "getChargingPower": 10.503,
    "getTemperature": 42.5,
    "getEnergy": {"session": 5.234, "total": 1234.567, "unit": "kWh"},
    "getSessionData": {
        "maxCurrent": 16.0,
        "chargedEnergy": 5.234,
        "duration": 1823,
        "durationFormatted": "0h 30m 23s",
        "detectedPhases": 3,
        "unit": {"current": "A", "energy": "kWh", "duration": "s"},
    },
    "getStatistics": {"totalEnergy": 1234.567, "totalSessions": 156, "unit": {"energy": "kWh"}},
    "getDiagnostics": {
        "activeErrorCode": 0,
        "hasError": False,
        "masterLostFallback": False,
        "switchedPhases": 0,
        "temperature": 42.5,
    },
    "getConfiguration": {
        "maxCurrentHouse": 32.0,
        "maxCurrentEvse": 32.0,
        "phaseSwitchingMode": 2,
        "phaseOptionsHw": 2,
        "cableLock": False,
        "masterLostFallbackCurrent": 1,
        "gridImbalance": False,
        "gridPhasesConnected": 2,
        "authorization": False,
    },
}


@pytest.mark.parametrize("method", sorted(NODE_SHAPES))
async def test_node_read_shapes(client: Client, method: str) -> None:
    result = await client.result(method, {})
    expected = NODE_SHAPES[method]
    data = result["data"]
    if isinstance(expected, dict):
        # Every Node key with the Node value; extra keys are allowed.
        assert {k: data.get(k) for k in expected} == expected
    else:
        assert data == expected
    assert result["ageSeconds"] == 1.0 and result["chargerId"] == "wb1"


@pytest.mark.parametrize(
    ("method", "ages"),
    [
        ("getEnergy", {"control": 41.0}),
        ("getStatus", {"measurements": 1.0, "control": 41.0}),
        ("getVoltage", {"measurements": 1.0}),
        ("getDeviceInfo", {"configuration": 61.0}),
        ("getChargingPower", {"measurements": 1.0}),
        ("getTemperature", {"control": 41.0}),
        ("getAllData", {"measurements": 1.0, "control": 41.0, "configuration": 61.0}),
    ],
)
async def test_replies_say_how_old_each_read_group_is(
    client: Client, ctl: FakeController, method: str, ages: dict[str, float]
) -> None:
    """Issue 10 item 8: energy.total read 40 s before the measurements is not "1 s old"."""
    assert ctl.state is not None
    at = ctl.state.read_at_s
    ctl.state = replace(
        ctl.state,
        read_at_by_group=MappingProxyType({ReadGroup.CONTROL: at - 40.0, ReadGroup.CONFIGURATION: at - 60.0}),
    )
    result = await client.result(method, {})
    assert result["readAgesSeconds"] == ages
    assert result["ageSeconds"] == max(ages.values())  # the oldest value in the reply


async def test_get_chargers_lists_each_charger_with_its_circuits_priority_mode_and_health(
    client: Client,
) -> None:
    chargers = (await client.result("getChargers"))["data"]
    assert chargers == [
        {
            "chargerId": "wb1",
            "mode": "pv",
            "priority": 2,
            "circuits": ["garage", "site"],
            "status": "healthy",
            "ageSeconds": 1.0,
        }
    ]


async def test_get_all_data(client: Client) -> None:
    data = (await client.result("getAllData"))["data"]
    assert data["measurements"]["voltage"]["l1"] == 230.5
    assert data["status"]["evseState"] == 5 and ISO_MS_Z.match(data["timestamp"])


async def test_stale_and_missing_data_are_errors(client: Client, ctl: FakeController) -> None:
    ctl.age_s = 45.0
    err = await client.error("getStatus")
    assert err["code"] == -32000 and err["message"].startswith("charger data stale (age 45.0 s")
    assert err["data"] == {"chargerId": "wb1", "ageSeconds": 45.0, "maxAgeSeconds": 30.0}
    assert (await client.result("health"))["data"]["status"] == "stale"
    ctl.state, ctl.age_s = None, float("inf")
    err = await client.error("getVoltage")
    assert err["code"] == -32000 and "unavailable" in err["message"]
    assert (await client.result("health"))["data"]["status"] == "disconnected"
    # The clock moving on also ages the snapshot.
    ctl.state, ctl.age_s = FakeController().state, 1.0
    assert (await client.result("getTemperature"))["data"] == 42.5


async def test_nan_reading_becomes_null(client: Client, ctl: FakeController) -> None:
    from dataclasses import replace

    assert ctl.state is not None
    ctl.state = replace(ctl.state, temperature_c=float("nan"))
    assert (await client.result("getTemperature"))["data"] is None


# -- writes -----------------------------------------------------------------------------------

WRITES = [
    (
        "setChargingCurrent",
        {"ampere": 16},
        Override(charge=True, current_a=16.0, reason="rpc setChargingCurrent"),
    ),
    ("startCharging", {"current": 10}, Override(charge=True, current_a=10.0, reason="rpc startCharging")),
    ("startCharging", {}, Override(charge=True, current_a=6.0, reason="rpc startCharging")),
    ("resumeCharging", {"current": 7.5}, Override(charge=True, current_a=7.5, reason="rpc resumeCharging")),
    (
        "stopCharging",
        {},
        Override(charge=False, pause_kind=PauseKind.RELEASE, reason="rpc stopCharging"),
    ),
    ("pauseCharging", None, Override(charge=False, pause_kind=PauseKind.SOFT, reason="rpc pauseCharging")),
    ("setRequestedPhases", {"phases": 0}, Override(phases=3, reason="rpc setRequestedPhases")),
    ("setRequestedPhases", {"phases": 1}, Override(phases=1, reason="rpc setRequestedPhases")),
    ("setLock", {"lock": True}, Override(lock=True, reason="rpc setLock")),
    ("setLock", [False], Override(lock=False, reason="rpc setLock")),
    ("setChargingCurrent", [32], Override(charge=True, current_a=32.0, reason="rpc setChargingCurrent")),
]


@pytest.mark.parametrize(("method", "params", "override"), WRITES)
async def test_writes_become_overrides(
    client: Client, ctl: FakeController, method: str, params: Any, override: Override
) -> None:
    result = await client.result(method, params)
    assert ctl.overrides == [("wb1", override)]
    data = result["data"]
    assert data["status"] == "applied" and data["reasons"] == [] and isinstance(data["message"], str)
    assert data["override"]["reason"] == override.reason
    assert "scheduledAt" not in data


async def test_scheduled_unchanged_refused(client: Client, ctl: FakeController) -> None:
    ctl.next_verdict = Verdict(
        outcome=Outcome.SCHEDULED,
        command=Command(charger_id="wb1", current_a=16.0),
        reasons=("at least 5 s between current changes",),
        retry_at_s=ctl.clock.now() + 3.5,
    )
    data = (await client.result("setChargingCurrent", {"ampere": 16}))["data"]
    assert data["status"] == "scheduled" and data["reasons"] == ["at least 5 s between current changes"]
    assert data["scheduledAt"] == "2025-11-24T16:00:03.500Z"  # FakeClock wall start + 3.5 s
    ctl.next_verdict = Verdict(outcome=Outcome.UNCHANGED)
    assert (await client.result("setLock", {"lock": False}))["data"]["status"] == "unchanged"
    ctl.next_verdict = Verdict(outcome=Outcome.REFUSED, reasons=("32 A exceeds the fuse limit of 16 A",))
    err = await client.error("setChargingCurrent", {"ampere": 32})
    assert err == {
        "code": -32000,
        "message": "refused: 32 A exceeds the fuse limit of 16 A",
        "data": {"status": "refused", "reasons": ["32 A exceeds the fuse limit of 16 A"], "chargerId": "wb1"},
    }


AT = "2025-11-24T16:00:03.500Z"  # FakeClock wall start + 3.5 s
CLAMP_32 = ("32 A clamped to 16 A (fuse limit)",)


def clamp_of(reasons: tuple[str, ...]) -> tuple[float, float, str] | None:
    """The governor sets ``clamp`` together with its "X A clamped to Y A (why)" reason."""
    for reason in reasons:
        if " A clamped to " in reason:
            asked, rest = reason.split(" A clamped to ", 1)
            allowed, why = rest.split(" A (", 1)
            return float(asked), float(allowed), why.rstrip(")")
    return None


def verdict(outcome: Outcome, current_a: float | None = None, **kw: Any) -> Verdict:
    cmd = None
    if outcome is Outcome.APPLIED:
        cmd = Command(charger_id="wb1", current_a=current_a, release=kw.pop("release", None))
    return Verdict(outcome=outcome, command=cmd, clamp=clamp_of(kw.get("reasons", ())), **kw)


# (method, params, the governor's verdict, message, data.current)
MESSAGES: list[tuple[str, Any, Verdict, str, float | None]] = [
    (
        "setChargingCurrent",
        {"ampere": 16},
        verdict(Outcome.APPLIED, 16.0),
        "Charging current set to 16A",
        16.0,
    ),
    (
        "setChargingCurrent",
        {"ampere": 32},
        verdict(Outcome.APPLIED, 16.0, reasons=CLAMP_32),
        "Charging current set to 16A (32 A clamped to 16 A: fuse limit)",
        16.0,
    ),
    (
        "setChargingCurrent",
        {"ampere": 16.5},
        verdict(Outcome.UNCHANGED, reasons=("16.5 A clamped to 16 A (fuse limit)",)),
        "Charging current unchanged: stays at 16A (16.5 A clamped to 16 A: fuse limit)",
        16.0,
    ),
    (
        "setChargingCurrent",
        {"ampere": 7.25},
        verdict(Outcome.UNCHANGED),
        "Charging current unchanged: stays at 7.25A",
        7.25,
    ),
    (
        "setChargingCurrent",
        {"ampere": 32},
        verdict(Outcome.SCHEDULED, reasons=(*CLAMP_32, "held for another 3.5 s (...)"), retry_at_s=1003.5),
        f"Charging current change to 16A scheduled for {AT} (32 A clamped to 16 A: fuse limit)",
        16.0,
    ),
    # Only the release is sent: the current was right already.
    ("startCharging", {}, verdict(Outcome.APPLIED, release=True), "Charging started with 6A", 6.0),
    (
        "startCharging",
        {"current": 20},
        verdict(Outcome.SCHEDULED, reasons=("20 A clamped to 13 A (cable maximum)",), retry_at_s=1003.5),
        f"Charging start with 13A scheduled for {AT} (20 A clamped to 13 A: cable maximum)",
        13.0,
    ),
    (
        "resumeCharging",
        {"current": 32},
        verdict(Outcome.APPLIED, 16.0, release=True, reasons=CLAMP_32),
        "Charging resumed with 16A (32 A clamped to 16 A: fuse limit)",
        16.0,
    ),
    ("resumeCharging", {"current": 10}, verdict(Outcome.UNCHANGED), "Charging already on at 10A", 10.0),
    ("stopCharging", {}, verdict(Outcome.APPLIED, release=False), "Charging stopped", None),
    ("stopCharging", {}, verdict(Outcome.UNCHANGED), "Charging already stopped", None),
    (
        "pauseCharging",
        {},
        verdict(Outcome.SCHEDULED, retry_at_s=1003.5),
        f"Charging pause scheduled for {AT}",
        None,
    ),
    (
        "setLock",
        {"lock": True},
        verdict(Outcome.SCHEDULED, retry_at_s=1003.5),
        f"EVSE lock scheduled for {AT}",
        None,
    ),
    ("setLock", {"lock": False}, verdict(Outcome.UNCHANGED), "EVSE already unlocked", None),
    (
        "setRequestedPhases",
        {"phases": 1},
        verdict(Outcome.UNCHANGED),
        "Requested phases already single",
        None,
    ),
    (
        "setOverride",
        {"current": 32, "phases": 1},
        Verdict(
            outcome=Outcome.APPLIED,
            command=Command(charger_id="wb1", phases=1),
            reasons=(*CLAMP_32, "the rest of the decision follows after the phase switch"),
            retry_at_s=1003.5,
            clamp=(32.0, 16.0, "fuse limit"),
        ),
        f"Override set; the rest follows at {AT} (32 A clamped to 16 A: fuse limit)",
        None,
    ),
]


async def test_a_resume_on_a_locked_evse_says_it_will_not_charge(client: Client, ctl: FakeController) -> None:
    """QA: resumeCharging on a locked box answered "Charging resumed" and nothing happened."""
    assert ctl.state is not None
    ctl.state = replace(ctl.state, locked=True)
    ctl.next_verdict = verdict(Outcome.APPLIED, 11.0, release=True)
    data = (await client.result("resumeCharging", {"current": 11}))["data"]
    note = "the EVSE is locked: the car cannot charge until setLock lock=false"
    assert data["message"] == f"Charging resumed with 11A; {note}" and data["reasons"] == [note]
    ctl.state = replace(ctl.state, locked=False)
    data = (await client.result("resumeCharging", {"current": 11}))["data"]
    assert data["message"] == "Charging resumed with 11A" and data["reasons"] == []


@pytest.mark.parametrize(("method", "params", "verdict", "message", "current"), MESSAGES)
async def test_write_messages_say_what_really_happens(
    client: Client,
    ctl: FakeController,
    method: str,
    params: Any,
    verdict: Verdict,
    message: str,
    current: float | None,
) -> None:
    ctl.next_verdict = verdict
    data = (await client.result(method, params))["data"]
    assert data["status"] == verdict.outcome.value
    assert data["message"] == message
    assert data["reasons"] == list(verdict.reasons)
    assert data.get("current") == current
    assert ("current" in data) == (method in ("setChargingCurrent", "startCharging", "resumeCharging"))


BAD_PARAMS = [
    ("setChargingCurrent", {"ampere": 5}, "ampere must be a number between 6 and 32"),
    ("setChargingCurrent", {"ampere": 33}, "ampere must be a number between 6 and 32"),
    ("setChargingCurrent", {"ampere": True}, "ampere must be a number between 6 and 32"),
    ("setChargingCurrent", {"ampere": "16"}, "ampere must be a number between 6 and 32"),
    ("setChargingCurrent", {}, "ampere is required: ampere must be a number between 6 and 32"),
    (
        "setChargingCurrent",
        {"amps": 16},
        "unknown parameter 'amps' for setChargingCurrent (expected: ampere, chargerId)",
    ),
    ("setChargingCurrent", [16, "wb1", 3], "setChargingCurrent takes at most 2 positional parameter(s)"),
    ("setChargingCurrent", {"ampere": 16, "chargerId": "wb9"}, "chargerId must be one of wb1"),
    ("startCharging", {"current": 0}, "current must be a number between 6 and 32"),
    ("setRequestedPhases", {"phases": 3}, "phases must be one of 0, 1"),
    ("setRequestedPhases", {"phases": False}, "phases must be one of 0, 1"),
    ("setLock", {"lock": 1}, "lock must be a boolean"),
    ("setLock", {}, "lock is required: lock must be a boolean"),
    ("getStatus", {"verbose": True}, "unknown parameter 'verbose' for getStatus (expected: chargerId)"),
    ("ping", [1], "ping takes at most 0 positional parameter(s)"),
    ("setMode", {"mode": "turbo"}, 'mode must be one of "off", "fixed", "pv", "minpv", "schedule"'),
    ("setMode", {"mode": "schedule"}, "mode schedule needs a schedule in the config"),
    ("setOverride", {}, "setOverride needs at least one of current, phases, charge, lock"),
    ("setOverride", {"phases": 2}, "phases must be one of 1, 3"),
    ("setOverride", {"charge": True, "until": -5}, "until must be in the future and at most 7 days ahead"),
    (
        "setOverride",
        {"charge": True, "until": "tomorrow"},
        "until must be an ISO 8601 time (e.g. 2024-01-10T12:00:00Z)",
    ),
    (
        "setOverride",
        {"charge": True, "until": "2025-11-24T17:00:00"},
        "until must include a timezone (e.g. 2024-01-10T12:00:00Z)",
    ),
]


@pytest.mark.parametrize(("method", "params", "message"), BAD_PARAMS)
async def test_bad_params_are_invalid_params(
    client: Client, ctl: FakeController, method: str, params: Any, message: str
) -> None:
    err = await client.error(method, params)
    assert err["code"] == -32602 and err["message"] == message
    assert ctl.overrides == [] and ctl.modes == {"wb1": "pv"}


# -- controller methods -----------------------------------------------------------------------


async def test_modes(client: Client, ctl: FakeController) -> None:
    data = (await client.result("getMode"))["data"]
    assert data == {"chargerId": "wb1", "mode": "pv", "modes": ["off", "fixed", "pv", "minpv", "schedule"]}
    assert (await client.result("setMode", {"mode": "fixed"}))["data"]["mode"] == "fixed"
    assert ctl.modes == {"wb1": "fixed"}


async def test_set_and_clear_override(client: Client, ctl: FakeController) -> None:
    data = (await client.result("setOverride", {"current": 10, "phases": 1, "until": 3600}))["data"]
    assert ctl.overrides == [
        ("wb1", Override(current_a=10.0, phases=1, until_s=ctl.clock.now() + 3600, reason="rpc setOverride"))
    ]
    assert data["override"]["until"] == "2025-11-24T17:00:00.000Z"
    await client.result(
        "setOverride", {"charge": False, "pauseKind": "soft", "until": "2025-11-24T16:30:00Z"}
    )
    assert ctl.overrides[-1][1] == Override(
        charge=False, pause_kind=PauseKind.SOFT, until_s=ctl.clock.now() + 1800, reason="rpc setOverride"
    )
    assert (await client.result("clearOverride"))["data"] == {"chargerId": "wb1", "cleared": True}
    assert (await client.result("clearOverride"))["data"] == {"chargerId": "wb1", "cleared": False}


async def test_decision_meters_plugins(client: Client, ctl: FakeController) -> None:
    assert (await client.result("getDecision"))["data"] == {
        "chargerId": "wb1",
        "decision": None,
        "reasons": ["no decision yet: the charger has not been read yet"],
    }
    ctl.decision = sample_decision()
    data = (await client.result("getDecision"))["data"]
    assert data["decision"]["current"] == 10.0 and data["verdict"]["outcome"] == "scheduled"
    assert data["verdict"]["retryAt"] == "2025-11-24T16:00:02.000Z"
    assert data["reasons"] == ["surplus 7 kW", "5 s spacing"]
    assert data["inputs"] == {"gridPowerW": -2500.0, "chargerAgeSeconds": 0.5, "override": None}
    meters = (await client.result("getMeters"))["data"]
    assert meters["grid"]["gridPowerW"] == -2500.0 and meters["grid"]["pvPowerW"] == 8000.0
    plugins = (await client.result("listPlugins"))["data"]
    assert plugins == [{"name": "fixed", "source": "built-in", "provides": ["strategy:fixed"]}]


# -- protocol -------------------------------------------------------------------------------


async def test_protocol_errors(client: Client) -> None:
    assert await client.post(b"{not json") == (
        200,
        {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None},
    )
    assert (await client.post(b'{"jsonrpc":"2.0","method":"ping","id":NaN}'))[1]["error"]["code"] == -32700
    assert (await client.post({"method": "ping", "id": 1}))[1]["error"]["code"] == -32600
    assert (await client.post({"jsonrpc": "2.0", "method": "ping", "id": True}))[1]["error"]["code"] == -32600
    assert (await client.post([]))[1]["error"]["code"] == -32600
    err = await client.error("noSuchMethod")
    assert err["code"] == -32601


async def test_batch_and_notifications(client: Client, ctl: FakeController) -> None:
    status, reply = await client.post(
        [
            {"jsonrpc": "2.0", "method": "ping", "id": "a"},
            {"jsonrpc": "2.0", "method": "setLock", "params": {"lock": True}},  # notification: runs, no reply
            1,
            {"jsonrpc": "2.0", "method": "nope", "id": 7},
        ]
    )
    assert status == 200
    assert [r.get("id") for r in reply] == ["a", None, 7]
    assert reply[0]["result"]["message"] == "pong"
    assert reply[1]["error"]["code"] == -32600 and reply[2]["error"]["code"] == -32601
    assert ctl.overrides == [("wb1", Override(lock=True, reason="rpc setLock"))]
    assert await client.post({"jsonrpc": "2.0", "method": "ping"}) == (204, None)
    assert await client.post([{"jsonrpc": "2.0", "method": "ping"}]) == (204, None)
    status, reply = await client.post([{"jsonrpc": "2.0", "method": "ping", "id": i} for i in range(51)])
    assert reply["error"]["code"] == -32600 and "51 exceeds 50" in reply["error"]["message"]


async def test_body_limit(client: Client) -> None:
    big = json.dumps({"jsonrpc": "2.0", "method": "ping", "id": 1, "params": ["x" * 70000]}).encode()
    status, reply = await client.post(big)
    assert status == 413 and reply["error"]["code"] == -32600

    async def chunked() -> Any:
        for _ in range(70):
            yield b" " * 1000

    async with client.session.post(client.url, data=chunked()) as resp:
        assert resp.status == 413


async def test_internal_error_leaks_nothing(
    client: Client, ctl: FakeController, caplog: pytest.LogCaptureFixture
) -> None:
    ctl.raise_on_override = OSError("/dev/ttyUSB0: secret internals at /srv/surplus/loop.py line 42")
    with caplog.at_level(logging.ERROR, logger="surplus.jsonrpc"):
        reply = await client.call("setChargingCurrent", {"ampere": 10})
    assert reply["error"] == {"code": -32603, "message": "Internal error"}
    assert "Traceback" in caplog.text or caplog.records[0].exc_info is not None
    assert (await client.result("ping"))["message"] == "pong"


async def test_http_routes(client: Client, server: WebServer, ctl: FakeController) -> None:
    async with client.session.get(server.url + "healthz") as resp:
        assert resp.status == 200 and (await resp.json())["status"] == "ok"
    async with client.session.get(server.url + "metrics") as resp:
        assert resp.status == 200 and await resp.read() == b"surplus_up 1\n"
        assert resp.headers["Content-Type"] == "text/plain; version=0.0.4"
    async with client.session.get(server.url) as resp:
        assert resp.status == 405
    ctl.age_s = 60.0
    async with client.session.get(server.url + "healthz") as resp:
        assert resp.status == 503 and (await resp.json())["status"] == "stale"
        # The same words and shape as the health method (one function computes both).
        body = await resp.json()
    health = (await client.result("health"))["data"]
    assert body["chargers"] == {
        cid: {**c, "ageSeconds": body["chargers"][cid]["ageSeconds"]} for cid, c in health["chargers"].items()
    }


# -- OpenRPC ----------------------------------------------------------------------------------


async def test_discover_matches_dispatch_table(client: Client, server: WebServer) -> None:
    doc = (await client.call("rpc.discover"))["result"]
    assert doc["openrpc"].startswith("1.2")
    documented = {m["name"] for m in doc["methods"]}
    dispatcher: Dispatcher = server._runner.app[DISPATCHER]
    assert documented == set(dispatcher.specs)
    node = set(NODE_SHAPES) | {
        "ping",
        "health",
        "setChargingCurrent",
        "startCharging",
        "stopCharging",
        "pauseCharging",
        "resumeCharging",
        "setRequestedPhases",
        "setLock",
    }
    controller = {
        "getMode",
        "setMode",
        "setOverride",
        "clearOverride",
        "getDecision",
        "getMeters",
        "getChargers",
        "listPlugins",
        "getSessions",
    }
    assert node | controller | {"rpc.discover", "getAllData"} == documented
    # Every documented method dispatches (none answers "method not found").
    for name in documented:
        reply = await client.call(name, {"mode": "pv"} if name == "setMode" else None)
        assert reply.get("error", {}).get("code") != -32601, name


async def test_get_sessions_without_a_history_says_how_to_turn_it_on(client: Client) -> None:
    err = await client.error("getSessions")
    assert err["code"] == -32000 and err["message"] == "history is off: set history.path in the config"


async def test_results_match_their_openrpc_schema(client: Client, ctl: FakeController) -> None:
    ctl.decision = sample_decision()
    doc = (await client.call("rpc.discover"))["result"]
    args = {
        "setChargingCurrent": {"ampere": 8},
        "setRequestedPhases": {"phases": 1},
        "setLock": {"lock": True},
    }
    args |= {"setMode": {"mode": "off"}, "setOverride": {"charge": True}}
    for m in doc["methods"]:
        if m["name"] == "getSessions":
            continue  # needs a history file: test_history checks its reply against this schema
        reply = await client.call(m["name"], args.get(m["name"]))
        assert "result" in reply, (m["name"], reply)
        jsonschema.validate(reply["result"], m["result"]["schema"])
        for p in m["params"]:
            jsonschema.Draft7Validator.check_schema(p["schema"])


# -- auth -------------------------------------------------------------------------------------


async def test_refuses_open_bind_without_token(ctl: FakeController) -> None:
    with pytest.raises(ValueError, match="without a token"):
        await start_web(ctl, RpcSettings(host="0.0.0.0", port=0))


async def test_token_guards_writes(ctl: FakeController) -> None:
    srv = await start_web(ctl, RpcSettings(host="0.0.0.0", port=0, token="s3cret"))
    try:
        async with aiohttp.ClientSession() as session:
            client = Client(srv, session)
            client.url = f"http://127.0.0.1:{srv.port}/"
            await client.result("getStatus")
            err = await client.error("setChargingCurrent", {"ampere": 10})
            assert err["code"] == -32001 and "Authorization: Bearer" in err["message"]
            err = await client.error("setLock", {"lock": True}, headers={"Authorization": "Bearer wrong"})
            assert err["code"] == -32001
            assert ctl.overrides == []
            reply = await client.call("setLock", {"lock": True}, headers={"Authorization": "Bearer s3cret"})
            assert reply["result"]["data"]["status"] == "applied"
    finally:
        await srv.close()


async def test_auth_reads(ctl: FakeController) -> None:
    srv = await start_web(ctl, RpcSettings(port=0, token="t", auth_reads=True))
    try:
        async with aiohttp.ClientSession() as session:
            client = Client(srv, session)
            assert (await client.error("getStatus"))["code"] == -32001
            reply = await client.call("getStatus", headers={"Authorization": "Bearer t"})
            assert reply["result"]["data"]["evseState"] == 5
            # /metrics and /healthz show power, setpoint, mode and the car: the token too.
            base = f"http://127.0.0.1:{srv.port}"
            for path in ("/metrics", "/healthz"):
                async with session.get(base + path) as resp:
                    assert resp.status == 401, path
                    assert (await resp.json())["error"]["code"] == -32001
                    assert resp.headers["WWW-Authenticate"] == "Bearer"
                async with session.get(base + path, headers={"Authorization": "Bearer t"}) as resp:
                    assert resp.status != 401, path
    finally:
        await srv.close()


async def test_without_auth_reads_metrics_and_healthz_are_open(ctl: FakeController) -> None:
    srv = await start_web(ctl, RpcSettings(port=0, token="t"))
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{srv.port}/healthz") as r,
        ):
            assert r.status != 401
    finally:
        await srv.close()


def test_settings_check() -> None:
    RpcSettings(host="0.0.0.0", port=9090, token="abc").check()
    with pytest.raises(ValueError, match="without a token"):
        RpcSettings(host="192.168.1.5").check()
    RpcSettings(host="::1").check()


async def test_health_and_healthz_report_a_charger_error(
    client: Client, server: WebServer, ctl: FakeController
) -> None:
    assert ctl.state is not None
    ctl.state = replace(ctl.state, evse_state=6, error_code=200, master_lost_fallback=True)
    health = (await client.result("health"))["data"]
    assert health["status"] == "error"
    assert health["chargers"]["wb1"]["chargerError"] == {
        "code": 200,
        "text": "Energy manager unavailable (no heartbeat)",
    }
    async with client.session.get(server.url + "healthz") as resp:
        assert resp.status == 503 and (await resp.json())["status"] == "error"


# -- meters in getMeters, health and /healthz --------------------------------------------------

NEVER_READ = MeterReading(
    meter_id="grid", read_at_s=0.0, grid_power_w=math.nan, age_s=math.inf, error="connection refused"
)


def no_nan(text: str) -> Any:
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in a reply"))


async def test_a_meter_that_never_read_is_null_with_its_error(
    client: Client, server: WebServer, ctl: FakeController
) -> None:
    ctl.meter_readings = {
        "grid": NEVER_READ,
        "pv": MeterReading(meter_id="pv", read_at_s=999.0, grid_power_w=0.0, pv_power_w=math.inf, age_s=1.0),
    }
    req = {"jsonrpc": "2.0", "method": "getMeters", "id": 1}
    async with client.session.post(server.url, data=json.dumps(req)) as resp:
        data = no_nan(await resp.text())["result"]["data"]
    assert data["grid"] == {
        "gridPowerW": None,
        "pvPowerW": None,
        "housePowerW": None,
        "batteryPowerW": None,
        "batterySocPct": None,
        "ageSeconds": None,
        "error": "connection refused",
    }
    assert data["pv"]["gridPowerW"] == 0.0 and data["pv"]["pvPowerW"] is None and data["pv"]["error"] is None


async def test_no_reply_builds_nan_or_infinity(ctl: FakeController) -> None:
    # Not even one that the transport's fallback would still have to clean up.
    ctl.meter_readings = {"grid": NEVER_READ}
    record = sample_decision()
    ctl.decision = replace(
        record,
        grid_power_w=math.nan,
        charger_age_s=math.inf,
        decision=replace(record.decision, current_a=math.nan),
        verdict=replace(record.verdict, command=Command(charger_id="wb1", current_a=math.inf)),
    )
    ctl.next_verdict = Verdict(outcome=Outcome.APPLIED, command=Command(charger_id="wb1", current_a=math.nan))
    ctl.age_s = 0.5
    methods = {m.name: m.handler for m in build_methods(ctl)}
    for name, params in [
        ("getMeters", {}),
        ("health", {}),
        ("getDecision", {}),
        ("setChargingCurrent", {"ampere": 16}),
    ]:
        result = methods[name](params)
        if inspect.isawaitable(result):
            result = await result
        json.dumps(result, allow_nan=False)  # raises on NaN or Infinity


async def test_health_reports_meters_and_degraded(
    client: Client, server: WebServer, ctl: FakeController
) -> None:
    health = (await client.result("health"))["data"]
    assert (health["meters"], health["degraded"], health["degradedReasons"]) == ({"grid": "ok"}, False, [])
    assert health["lines"] == {
        "line1": {"connected": True, "load": 0.1235, "pollIntervalSeconds": None, "boxes": 0}
    }  # how full each line is

    # The grid meter is down while the charger's mode (pv) needs it: the charger is still healthy.
    ctl.meter_readings = {"grid": NEVER_READ}
    health = (await client.result("health"))["data"]
    assert health["status"] == "healthy" and health["chargers"]["wb1"]["status"] == "healthy"
    assert health["meters"] == {"grid": "error: connection refused"}
    assert health["degraded"] is True
    assert health["degradedReasons"] == ["wb1: mode pv needs the meters: grid error: connection refused"]
    async with client.session.get(server.url + "healthz") as resp:
        assert resp.status == 200
        body = no_nan(await resp.text())
    assert body["status"] == "ok" and body["meters"] == {"grid": "error: connection refused"}
    assert body["degraded"] is True and body["degradedReasons"] == health["degradedReasons"]

    stale = replace(NEVER_READ, grid_power_w=-300.0, age_s=45.0, error="stale (45 s old)")
    ctl.meter_readings = {"grid": stale}
    health = (await client.result("health"))["data"]
    assert health["meters"] == {"grid": "stale"} and health["degraded"] is True

    # "fixed" needs no meter: the meter is reported, but nothing is degraded.
    ctl.modes["wb1"] = "fixed"
    health = (await client.result("health"))["data"]
    assert health["meters"] == {"grid": "stale"} and health["degraded"] is False

    # No meter at all, and "pv" on its fallback.
    ctl.modes["wb1"] = "pv"
    ctl.meter_readings = {}
    record = sample_decision()
    fallback = Decision(
        charger_id="wb1",
        source=Source.FALLBACK,
        charge=False,
        reason="fallback pause: strategy pv failed: no fresh grid-meter reading",
    )
    ctl.decision = replace(record, decision=fallback)
    health = (await client.result("health"))["data"]
    assert health["meters"] == {} and health["degraded"] is True
    assert health["degradedReasons"] == [
        "wb1: fallback pause: strategy pv failed: no fresh grid-meter reading"
    ]


@pytest.mark.parametrize(
    ("fallback", "layout", "degraded"),
    [(0, 0x0103, True), (1, 0x0103, False), (16, 0x0103, False), (0, 0x0101, False)],
    ids=["0-keeps-charging", "1-pauses", "16-chosen", "old-layout-has-none"],
)
async def test_health_is_degraded_while_the_box_would_charge_on_without_surplus(
    client: Client, server: WebServer, ctl: FakeController, fallback: int, layout: int, degraded: bool
) -> None:
    """Issue 10 item 1: fallback 0 keeps the last values, so a dead controller leaves the car charging."""
    assert ctl.state is not None
    ctl.state = replace(
        ctl.state,
        info=replace(ctl.state.info, layout_version=layout),
        config=replace(ctl.state.config, master_lost_fallback_current_a=fallback),
    )
    ctl.modes["wb1"] = "fixed"
    health = (await client.result("health"))["data"]
    assert health["degraded"] is degraded
    async with client.session.get(server.url + "healthz") as resp:
        body = no_nan(await resp.text())
    assert resp.status == 200 and body["degraded"] is degraded  # the charger itself is under control
    if degraded:
        (reason,) = health["degradedReasons"]
        assert reason.startswith("wb1: the box's heartbeat-loss fallback (0x030E) is 0")
        assert "control.box_fallback_a: 1" in reason and body["degradedReasons"] == [reason]
    else:
        assert health["degradedReasons"] == []


async def test_invalid_bytes_in_the_authorization_header_get_a_json_rpc_error(ctl: FakeController) -> None:
    """QA: invalid header bytes gave HTTP 500 in plain text with a traceback."""
    srv = await start_web(ctl, RpcSettings(port=0, token="s3cret"))
    try:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "setLock", "params": {"lock": True}}).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(
            b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \xff\xfe\xc3(\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        head, _, payload = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"\r\nServer: surplus\r\n" in head  # no Python or aiohttp versions
        assert json.loads(payload)["error"]["code"] == -32001
        assert ctl.overrides == []  # nothing written
    finally:
        await srv.close()
