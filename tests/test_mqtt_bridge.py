"""The MQTT bridge on the real stack against a real mosquitto on 127.0.0.1: state out, commands in
through the governor, discovery and its removal, broker restarts, and the last will of a real
``surplus run`` killed with SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from surplus.ha_discovery import all_config_topics
from surplus.modbus import registers as R
from surplus.sim.model import AmtronModel

from .ha_schema import problems
from .loop_support import assert_governor_rules_held
from .mosquitto_support import Mosquitto
from .mqtt_support import mqtt_section, mqtt_stack, publish, retained_now, subscriber
from .rpc_support import STACK_CONFIG
from .waiting import eventually

pytestmark = pytest.mark.integration

OLD_CONFIG = "homeassistant/sensor/surplus_garage/power/config"


def current_writes(model: AmtronModel, since: int = 0) -> list[float]:
    return [
        float(w.value)
        for w in model.record.writes[since:]
        if w.register == "CHARGING_CURRENT_EM" and w.exception_code is None
    ]


async def rpc(url: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
    req = {"jsonrpc": "2.0", "method": method, "params": params, "id": 1}
    async with aiohttp.ClientSession() as session, session.post(url, data=json.dumps(req)) as resp:
        reply: dict[str, Any] = await resp.json()
    return reply


async def command(broker: Mosquitto, seen: Any, what: str, payload: str) -> dict[str, Any]:
    """Publish ``surplus/wallbox/<what>/set`` and return the reply published for it."""
    topic = f"surplus/wallbox/{what}/reply"
    seen.latest.pop(topic, None)
    await publish(broker, f"surplus/wallbox/{what}/set", payload)
    await eventually(lambda: topic in seen.latest, f"the reply on {topic}")
    reply: dict[str, Any] = json.loads(seen.latest[topic])
    assert reply["command"] == what
    return reply


async def test_state_commands_and_discovery_on_a_real_broker(broker: Mosquitto) -> None:
    # A record of an earlier run that had a second charger: its entity must be removed.
    await publish(broker, OLD_CONFIG, '{"name": "old"}', retain=True)
    await publish(broker, "surplus/bridge/announced", json.dumps([OLD_CONFIG]), retain=True)
    config = STACK_CONFIG + "simulator:\n  profile: 22kw\n"  # a box that cannot switch phases
    async with subscriber(broker) as seen, mqtt_stack(broker, config) as (stack, model, url):
        await eventually(lambda: seen.text("surplus/wallbox/setpoint") == "10.0", "the fixed strategy's 10 A")
        assert seen.text("surplus/availability") == "online"

        # State follows the simulator.
        state = stack.controller.snapshot().chargers["wallbox"].state
        assert seen.text("surplus/wallbox/energy_total") == f"{state.energy_total_wh / 1000:.3f}"
        assert seen.text("surplus/wallbox/mode") == "fixed"
        assert seen.text("surplus/wallbox/car_connected") == "true"
        model.unplug()
        await eventually(lambda: seen.text("surplus/wallbox/car_connected") == "false", "car unplugged")
        assert seen.text("surplus/wallbox/evse_state") == R.EVSE_STATE.text(model.evse_state)
        retained = await retained_now(broker, "surplus/#")
        for name in ("car_connected", "setpoint", "energy_total", "mode", "status", "lock", "phases"):
            assert retained[f"surplus/wallbox/{name}"] == seen.latest[f"surplus/wallbox/{name}"], name

        # Discovery: every config retained and valid; the old charger's entity is gone.
        configs = await retained_now(broker, "homeassistant/#")
        assert sorted(configs) == all_config_topics(stack.mqtt.topics, ["wallbox"], [], commands=True)
        for topic, payload in configs.items():
            assert problems(topic, json.loads(payload)) == [], topic
        number = json.loads(configs["homeassistant/number/surplus_wallbox/current/config"])
        assert number["max"] == 32.0  # the governor's ceiling for this box (22 kW, 32 A fuse)
        assert OLD_CONFIG not in configs

        # A command goes through the governor to the box, and the reply says what happened.
        mark = len(model.record.writes)
        reply = await command(broker, seen, "current", "16")
        assert reply["success"] is True and reply["data"]["status"] in ("applied", "scheduled")
        assert reply["data"]["message"].startswith("Override set")
        await eventually(lambda: current_writes(model, mark) == [16.0], "16 A at the box", wait_s=8)
        await eventually(lambda: seen.text("surplus/wallbox/setpoint") == "16.0", "the setpoint topic")
        # The override says it came by MQTT (getOverride and getDecision show who set it).
        override = stack.controller.get_override("wallbox")
        assert override is not None and override.reason == "mqtt setOverride"
        decision = await rpc(url, "getDecision", {})
        assert "mqtt setOverride" in json.dumps(decision), decision

        # Refused by the governor: an error reply with the RPC's words, nothing sent.
        mark = len(model.record.writes)
        reply = await command(broker, seen, "phases", "1")
        assert reply["success"] is False and reply["error"]["message"].startswith("refused: ")
        by_rpc = await rpc(url, "setOverride", {"phases": 1})
        assert reply["error"]["message"] == by_rpc["error"]["message"]
        assert reply["error"]["data"]["reasons"] == by_rpc["error"]["data"]["reasons"]

        # A bad payload: the RPC's validation message, nothing changes.
        reply = await command(broker, seen, "current", "lots")
        assert (reply["success"], reply["error"]["code"]) == (False, -32602)
        assert reply["error"]["message"] == "current must be a number between 6 and 32"
        reply = await command(broker, seen, "mode", "off")
        assert reply["success"] is True and reply["data"]["mode"] == "off"
        await eventually(lambda: seen.text("surplus/wallbox/mode") == "off", "the mode topic")
        assert not [w for w in model.record.writes[mark:] if w.register == "REQUESTED_PHASES"]
        assert stack.controller.get_override("wallbox") is None  # setMode dropped it
        assert_governor_rules_held(model.record)
    # A clean stop says offline itself (the broker keeps the will for crashes).
    retained = await retained_now(broker, "surplus/availability")
    assert retained == {"surplus/availability": b"offline"}


async def test_a_broker_restart_reconnects_republishes_and_leaves_charging_alone(broker: Mosquitto) -> None:
    async with mqtt_stack(broker) as (stack, model, _url):
        bridge = stack.mqtt
        await eventually(lambda: bridge.connected and bridge.stats.published > 20, "the first publications")
        await eventually(lambda: 10.0 in current_writes(model), "the fixed strategy's 10 A")
        mark, ticks = len(model.record.writes), stack.controller.ticks
        broker.kill()  # persistence is off: every retained message is gone with it
        await eventually(lambda: not bridge.connected, "the bridge noticing")
        await asyncio.sleep(1.5)
        assert stack.controller.ticks >= ticks + 2  # the loop runs on (tick_s 0.5)
        assert stack.controller.last_tick_s < 0.4
        broker.start()
        await eventually(lambda: bridge.connected and bridge.stats.connects == 2, "a reconnect")
        await asyncio.sleep(0.3)
        retained = await retained_now(broker)
        assert retained["surplus/availability"] == b"online"
        assert retained["surplus/wallbox/setpoint"] == b"10.0"
        assert retained["surplus/wallbox/mode"] == b"fixed"
        assert len([t for t in retained if t.startswith("homeassistant/")]) == len(
            all_config_topics(bridge.topics, ["wallbox"], [], commands=True)
        )
        # Nothing the outage did reached the box: no current change, heartbeats on time.
        assert current_writes(model, mark) == []
        assert model.em_current_a == 10.0
        assert model.record.worst_heartbeat_gap_s < 5.0
        assert_governor_rules_held(model.record)


async def test_the_last_will_says_offline_when_surplus_run_is_killed_and_commands_can_be_off(
    broker: Mosquitto, tmp_path: Path
) -> None:
    config = tmp_path / "surplus.yaml"
    config.write_text(
        "bus:\n  port: sim\nchargers:\n  - id: wallbox\n    device_id: 50\n    mode: fixed\n"
        + mqtt_section(broker, commands="false")
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODBUS_", "RPC_", "HEARTBEAT_", "LOG_"))}
    async with subscriber(broker, "surplus/#") as seen:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "surplus.cli",
            "run",
            "-c",
            str(config),
            "--no-rpc",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
        )
        try:
            await eventually(lambda: seen.text("surplus/availability") == "online", "online", wait_s=15)
            # mqtt.commands: false: a command is not even read.
            await eventually(lambda: seen.text("surplus/wallbox/mode") == "fixed", "the mode topic")
            await publish(broker, "surplus/wallbox/mode/set", "off")
            await asyncio.sleep(1.2)
            assert "surplus/wallbox/mode/reply" not in seen.latest
            assert seen.text("surplus/wallbox/mode") == "fixed"
            os.kill(proc.pid, signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 5)
            assert proc.returncode == -signal.SIGKILL
            await eventually(lambda: seen.text("surplus/availability") == "offline", "the last will")
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert await retained_now(broker, "surplus/availability") == {"surplus/availability": b"offline"}
