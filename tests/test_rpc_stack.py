"""Every JSON-RPC method against the real stack: simulator over RTU-over-TCP, bus owner, AMTRON
driver, governor and loop. Writes are checked on the simulator's own write record."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from surplus.sim.model import AmtronModel

from .loop_support import assert_governor_rules_held
from .rpc_support import STACK_CONFIG, full_stack

pytestmark = pytest.mark.integration


class Rpc:
    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url, self.session, self.n = url, session, 0

    async def call(self, method: str, params: Any = None) -> dict[str, Any]:
        self.n += 1
        req = {"jsonrpc": "2.0", "method": method, "params": params or {}, "id": self.n}
        async with self.session.post(self.url, data=json.dumps(req)) as resp:
            assert resp.status == 200
            reply: dict[str, Any] = await resp.json()
        assert reply["id"] == self.n
        return reply

    async def ok(self, method: str, params: Any = None) -> Any:
        reply = await self.call(method, params)
        assert "result" in reply, reply
        return reply["result"]


@pytest.fixture
async def stack() -> AsyncIterator[tuple[Any, AmtronModel, Rpc]]:
    async with full_stack() as (st, model, url), aiohttp.ClientSession() as session:
        yield st, model, Rpc(url, session)


def writes(model: AmtronModel, register: str, since: int = 0) -> list[float]:
    return [
        float(w.value)
        for w in model.record.writes[since:]
        if w.register == register and w.exception_code is None
    ]


async def wait_for_write(
    model: AmtronModel, register: str, value: float, since: int, timeout_s: float = 8.0
) -> None:
    """The simulator saw ``register = value`` (a scheduled write may wait out the 5 s spacing)."""
    async with asyncio.timeout(timeout_s):
        # The simulator keeps a plain list (no event to wait on), so poll it.
        while value not in writes(model, register, since):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_reads_serve_the_simulator_state(stack: tuple[Any, AmtronModel, Rpc]) -> None:
    _st, _model, rpc = stack
    status = await rpc.ok("getStatus")
    assert status["success"] is True and 0 <= status["ageSeconds"] < 10
    assert status["data"]["evseStateText"] and status["data"]["evseState"] in range(8)
    info = (await rpc.ok("getDeviceInfo"))["data"]
    assert info["modbusVersion"] == "1.0.3" and info["serialNumber"]
    lines = (await rpc.ok("health"))["data"]["lines"]
    assert list(lines) == ["bus"] and lines["bus"]["connected"] is True  # the config's one bus:
    assert 0.0 <= lines["bus"]["load"] < 0.5  # polls and heartbeats on the in-process line (fast: ~0)
    for method in (
        "getVoltage",
        "getCurrent",
        "getPower",
        "getChargingPower",
        "getTemperature",
        "getEnergy",
        "getSessionData",
        "getStatistics",
        "getDiagnostics",
        "getConfiguration",
        "getAllData",
        "health",
        "ping",
        "getMode",
        "getDecision",
        "getMeters",
        "listPlugins",
        "rpc.discover",
    ):
        assert "result" in await rpc.call(method), method
    assert (await rpc.ok("health"))["data"]["status"] == "healthy"
    assert (await rpc.ok("getMode"))["data"]["mode"] == "fixed"
    decision = (await rpc.ok("getDecision"))["data"]
    assert decision["strategy"] == "fixed" and decision["verdict"]["outcome"] in (
        "applied",
        "unchanged",
        "scheduled",
    )


async def test_writes_reach_the_simulator_through_the_governor(stack: tuple[Any, AmtronModel, Rpc]) -> None:
    st, model, rpc = stack
    await wait_for_write(model, "CHARGING_CURRENT_EM", 10.0, 0)  # the fixed strategy's setpoint
    start = len(model.record.writes)

    data = (await rpc.ok("setChargingCurrent", {"ampere": 16}))["data"]
    assert data["status"] in ("applied", "scheduled"), data
    if data["status"] == "scheduled":
        assert data["scheduledAt"].endswith("Z") and data["reasons"]
    await wait_for_write(model, "CHARGING_CURRENT_EM", 16.0, start)
    assert st.controller.get_override("wallbox").current_a == 16.0
    assert writes(model, "CHARGING_CURRENT_EM", start) == [16.0]

    # Refused by validation: nothing reaches the bus.
    mark = len(model.record.writes)
    err = (await rpc.call("setChargingCurrent", {"ampere": 40}))["error"]
    assert err["code"] == -32602
    assert (await rpc.ok("setLock", {"lock": True}))["data"]["status"] in ("applied", "scheduled")
    await wait_for_write(model, "LOCK_EVSE", 1.0, mark)
    assert writes(model, "CHARGING_CURRENT_EM", mark) == []

    mark = len(model.record.writes)
    assert (await rpc.ok("stopCharging"))["data"]["status"] in ("applied", "scheduled")
    await wait_for_write(model, "CHARGING_RELEASE_EM", 0.0, mark)

    # The strategy resumes after clearOverride (10 A again, at the governor's pace).
    assert (await rpc.ok("clearOverride"))["data"]["cleared"] is True
    assert (await rpc.ok("setMode", {"mode": "off"}))["data"]["mode"] == "off"
    assert (await rpc.ok("setMode", {"mode": "pv"}))["data"]["mode"] == "pv"
    assert_governor_rules_held(model.record)


async def test_pause_and_phases(stack: tuple[Any, AmtronModel, Rpc]) -> None:
    _st, model, rpc = stack
    mark = len(model.record.writes)
    reply = await rpc.call("pauseCharging")
    if "result" in reply:
        await wait_for_write(model, "CHARGING_CURRENT_EM", 1.0, mark)  # the configured soft-pause value
    else:
        assert reply["error"]["code"] == -32000 and reply["error"]["message"].startswith("refused: ")
    mark = len(model.record.writes)
    reply = await rpc.call("setRequestedPhases", {"phases": 1})
    if "error" in reply:
        assert reply["error"]["message"].startswith("refused: ") and reply["error"]["data"]["reasons"]
        assert writes(model, "REQUESTED_PHASES", mark) == []
    else:
        assert reply["result"]["data"]["status"] in ("applied", "scheduled", "unchanged")
    assert_governor_rules_held(model.record)


async def test_write_replies_name_the_current_the_charger_really_gets() -> None:
    # QA: with a 16 A fuse, "ampere=32" answered "Charging current set to 32A".
    config = STACK_CONFIG.replace("fuse_limit_a: 32", "fuse_limit_a: 16")
    assert config != STACK_CONFIG
    async with full_stack(config) as (st, model, url), aiohttp.ClientSession() as session:
        rpc = Rpc(url, session)
        await wait_for_write(model, "CHARGING_CURRENT_EM", 10.0, 0)  # the fixed strategy's setpoint
        start = len(model.record.writes)
        data = (await rpc.ok("setChargingCurrent", {"ampere": 32}))["data"]
        assert data["reasons"][0] == "32 A clamped to 16 A (fuse limit)"
        assert data["current"] == 16.0
        if data["status"] == "applied":
            assert data["message"] == "Charging current set to 16A (32 A clamped to 16 A: fuse limit)"
            assert data["command"]["current"] == 16.0
        else:  # within 5 s of the strategy's write
            assert data["status"] == "scheduled", data
            assert data["message"] == (
                f"Charging current change to 16A scheduled for {data['scheduledAt']} "
                "(32 A clamped to 16 A: fuse limit)"
            )
        await wait_for_write(model, "CHARGING_CURRENT_EM", 16.0, start)

        data = (await rpc.ok("setChargingCurrent", {"ampere": 16.5}))["data"]
        assert data["status"] == "unchanged", data
        assert (
            data["message"] == "Charging current unchanged: stays at 16A (16.5 A clamped to 16 A: fuse limit)"
        )
        assert data["current"] == 16.0 and data["command"] is None
        assert writes(model, "CHARGING_CURRENT_EM", start) == [16.0]
        assert st.controller.get_override("wallbox").current_a == 16.5


async def test_a_dead_meter_shows_in_get_meters_health_and_healthz() -> None:
    """QA: with the grid meter unreachable from the start, getMeters was empty and health 'healthy'."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = STACK_CONFIG.replace("mode: fixed", "mode: pv").replace(
        "meters: []",
        f"meters:\n  - id: grid\n    type: fronius\n    options: {{host: 127.0.0.1, port: {port}, timeout_s: 0.5}}",
    )
    async with full_stack(config) as (_st, _model, url), aiohttp.ClientSession() as session:
        rpc = Rpc(url, session)
        async with asyncio.timeout(10):
            while "grid" not in (await rpc.ok("getMeters"))["data"]:  # noqa: ASYNC110  (polling the API)
                await asyncio.sleep(0.1)
        grid = (await rpc.ok("getMeters"))["data"]["grid"]
        assert grid["gridPowerW"] is None and grid["ageSeconds"] is None
        assert "cannot connect (connection refused)" in grid["error"]
        health = (await rpc.ok("health"))["data"]
        assert health["degraded"] is True and health["meters"]["grid"].startswith("error: ")
        assert any("mode pv needs the meters" in r for r in health["degradedReasons"])
        async with session.get(url + "healthz") as resp:
            body = await resp.json()
        assert body["degraded"] is True  # meter trouble is reported, the charger itself is fine
        decision = (await rpc.ok("getDecision"))["data"]
        assert decision["strategy"] == "fallback" and "no fresh grid-meter reading" in decision["reasons"][0]
