"""The MQTT bridge without a broker: command payloads, discovery payloads against Home Assistant's
rules, and the publishing pass (on the fake clock, with the real loop, driver, governor and model)."""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from surplus.clock import FakeClock
from surplus.config import MqttConfig
from surplus.governor import Limits
from surplus.ha_discovery import Topics, all_config_topics, charger_configs, meter_configs, stale_topics
from surplus.loop import Controller
from surplus.mqtt_bridge import MqttBridge
from surplus.mqtt_payloads import COMMANDS, MAX_PAYLOAD_BYTES, CommandError, command_call, setpoint_text
from surplus.sim.model import AmtronModel, EvProfile
from surplus.types import DeviceInfo

from .ha_schema import energy_dashboard_ready, problems
from .loop_support import SOFT_PAUSE_MAX_A, assert_governor_rules_held, build_controller
from .rpc_support import BUILTIN_MODES

TOPICS = Topics(prefix="surplus", discovery_prefix="homeassistant")
INFO = DeviceInfo(
    layout_version=0x0103,
    firmware_version="5.22.3",
    serial_number="SIM0000001",
    article_number="1320221",
    device_id=50,
)

# -- payload -> JSON-RPC call -------------------------------------------------------------------

GOOD = [
    ("mode", b"pv", "setMode", {"mode": "pv"}),
    ("mode", b'"minpv"', "setMode", {"mode": "minpv"}),
    ("mode", b'{"mode": "off"}', "setMode", {"mode": "off"}),
    ("current", b"16", "setOverride", {"current": 16}),
    ("current", b" 7.5\n", "setOverride", {"current": 7.5}),
    ("current", b'{"current": 10, "until": 3600}', "setOverride", {"current": 10, "until": 3600}),
    ("phases", b"1", "setOverride", {"phases": 1}),
    ("phases", b'{"phases": 3}', "setOverride", {"phases": 3}),
    ("lock", b"ON", "setLock", {"lock": True}),
    ("lock", b"unlock", "setLock", {"lock": False}),
    ("lock", b"true", "setLock", {"lock": True}),
    ("lock", b'{"lock": false}', "setLock", {"lock": False}),
    ("clear_override", b"", "clearOverride", {}),
    ("clear_override", b"clear", "clearOverride", {}),
]


@pytest.mark.parametrize(("what", "payload", "method", "params"), GOOD)
def test_a_command_is_the_rpc_call_that_does_the_same(
    what: str, payload: bytes, method: str, params: dict[str, Any]
) -> None:
    assert command_call(what, payload, "wallbox") == (method, {"chargerId": "wallbox", **params})


@pytest.mark.parametrize(
    ("amps", "text"),
    [
        (10.0, "10.0"),
        (16.0, "16.0"),
        (7.3, "7.3"),
        (7.349999904632568, "7.35"),
        (12.95, "12.95"),
        (0.0, "0.0"),
    ],
)
def test_the_setpoint_topic_shows_the_current_as_set(amps: float, text: str) -> None:
    # pv moves in 0.05 A on three phases: one decimal would show 7.35 A (read back as float32) as 7.3.
    assert setpoint_text(amps) == text
    assert setpoint_text(math.nan) is None


@pytest.mark.parametrize(
    ("what", "payload", "fragment"),
    [
        ("start", b"1", "unknown command 'start'"),
        ("current", b"\xff\xfe", "not UTF-8"),
        ("current", b"1" * (MAX_PAYLOAD_BYTES + 1), "payload too long"),
        ("current", b'{"current": 10, "lock": true}', "current/set takes a number"),
        ("current", b'{"until": 60}', "current/set takes a number"),
    ],
)
def test_payloads_that_are_no_call_are_refused_with_a_reason(
    what: str, payload: bytes, fragment: str
) -> None:
    with pytest.raises(CommandError) as info:
        command_call(what, payload, "wallbox")
    assert fragment in info.value.message


# -- discovery payloads against Home Assistant's rules -----------------------------------------


def all_configs(commands: bool, info: DeviceInfo | None = INFO) -> dict[str, dict[str, Any]]:
    out = charger_configs(
        TOPICS, "wallbox", commands=commands, info=info, ceiling_a=16.0, modes=BUILTIN_MODES
    )
    return out | meter_configs(TOPICS, "grid")


@pytest.mark.parametrize("commands", [True, False])
def test_every_discovery_payload_passes_home_assistants_rules(commands: bool) -> None:
    configs = all_configs(commands)
    for topic, payload in configs.items():
        assert problems(topic, payload) == [], (topic, payload)
        json.dumps(payload, allow_nan=False)  # and it is plain JSON
    ids = [p["unique_id"] for p in configs.values()]
    assert len(set(ids)) == len(ids), "unique ids repeat"
    assert sorted(configs) == all_config_topics(TOPICS, ["wallbox"], ["grid"], commands=commands)
    components = {t.split("/")[1] for t in configs}
    if commands:
        assert components == {"sensor", "binary_sensor", "select", "number", "switch", "button"}
    else:
        assert components == {"sensor", "binary_sensor"}


def test_the_energy_counters_are_fit_for_the_energy_dashboard_and_the_controls_are_right() -> None:
    configs = all_configs(True)
    by_key = {t.split("/")[3]: p for t, p in configs.items()}
    assert energy_dashboard_ready(by_key["energy_total"]) and energy_dashboard_ready(by_key["session_energy"])
    assert by_key["energy_total"]["unit_of_measurement"] == "kWh"
    assert (by_key["power"]["device_class"], by_key["power"]["unit_of_measurement"]) == ("power", "W")
    number = by_key["current"]
    assert (number["min"], number["max"], number["command_topic"]) == (
        6.0,
        16.0,
        "surplus/wallbox/current/set",
    )
    assert by_key["mode"]["options"] == list(BUILTIN_MODES)
    assert by_key["lock"]["command_topic"] == "surplus/wallbox/lock/set"
    assert {by_key["car_connected"]["device_class"], by_key["charging"]["device_class"]} == {
        "plug",
        "battery_charging",
    }
    device = by_key["power"]["device"]
    assert device["manufacturer"] == "MENNEKES" and device["serial_number"] == "SIM0000001"
    assert device["sw_version"] == "5.22.3" and "1320221" in device["model"]


def test_unique_ids_do_not_depend_on_what_was_read_or_when() -> None:
    # Stable across restarts: the same ids before the box was read, after, and on every build.
    first = {p["unique_id"] for p in all_configs(True, info=None).values()}
    again = {p["unique_id"] for p in all_configs(True, info=INFO).values()}
    assert first == again
    assert "surplus_wallbox_energy_total" in first


@pytest.mark.parametrize(
    ("topic", "change", "fragment"),
    [
        ("sensor/surplus_wallbox/energy_total", {"state_class": "measurement"}, "needs state_class total"),
        ("sensor/surplus_wallbox/power", {"unit_of_measurement": "kWh"}, "needs a unit of W"),
        ("sensor/surplus_wallbox/current_l1", {"unit_of_measurement": None}, "needs a unit of A"),
        ("select/surplus_wallbox/mode", {"options": None}, "options"),
        ("number/surplus_wallbox/current", {"command_topic": None}, "command_topic is required"),
        ("number/surplus_wallbox/current", {"max": 6.0}, "must be below max"),
        ("switch/surplus_wallbox/lock", {"command_topic": None}, "command_topic is required"),
        ("sensor/surplus_wallbox/power", {"unique_id": None}, "unique_id missing"),
        ("sensor/surplus_wallbox/power", {"availability": None}, "no availability"),
        ("sensor/surplus_wallbox/status", {"state_class": "measurement"}, "enum sensor has no state_class"),
        ("binary_sensor/surplus_wallbox/charging", {"device_class": "charging"}, "device_class"),
    ],
)
def test_the_rules_catch_what_home_assistant_would_reject(
    topic: str, change: dict[str, Any], fragment: str
) -> None:
    configs = all_configs(True)
    full = f"homeassistant/{topic}/config"
    payload = {k: v for k, v in {**configs[full], **change}.items() if v is not None}
    assert any(fragment in p for p in problems(full, payload)), problems(full, payload)


def test_only_announced_discovery_topics_that_left_the_config_are_emptied() -> None:
    now = all_config_topics(TOPICS, ["wallbox"], [], commands=True)
    old = all_config_topics(TOPICS, ["wallbox", "garage"], ["grid"], commands=True)
    stale = stale_topics(
        [*old, "surplus/wallbox/power", "homeassistant/sensor/#/config", 5], now, "homeassistant"
    )
    assert stale and all("surplus_garage" in t or "meter_grid" in t for t in stale)
    assert set(stale) == set(old) - set(now)


# -- the bridge on the real loop (fake clock) ------------------------------------------------------


class RecordingClient:
    """Stands in for the aiomqtt client in the publishing pass: keeps what would be sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bool]] = []

    async def publish(self, topic: str, payload: Any, *, qos: int, retain: bool, **_kw: Any) -> None:
        self.sent.append((topic, payload, retain))


def make_bridge(controller: Controller, **settings: Any) -> MqttBridge:
    return MqttBridge(controller, MqttConfig(**settings), stale_after_s=10.0, ceiling_a=lambda r: 16.0)


@pytest.fixture
async def running(clock: FakeClock) -> AsyncIterator[tuple[Controller, AmtronModel]]:
    model = AmtronModel(clock, ev=EvProfile())
    controller, bus = build_controller(clock, model, fixed_current_a=10, limits=Limits(fuse_limit_a=12))
    task = asyncio.ensure_future(controller.run())
    await clock.advance(10)
    yield controller, model
    controller.stop()
    await clock.advance(15)
    await task
    await bus.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def test_state_is_published_once_and_then_only_what_changed(
    clock: FakeClock, running: tuple[Controller, AmtronModel]
) -> None:
    controller, model = running
    controller.set_mode("wallbox", "off")
    model.unplug()
    await clock.advance(20)
    bridge = make_bridge(controller)
    client = RecordingClient()
    await bridge._publish_changes(client)  # type: ignore[arg-type]
    first = {t: p for t, p, _r in client.sent}
    assert first["surplus/wallbox/mode"] == "off" and first["surplus/wallbox/car_connected"] == "false"
    state = controller.snapshot().chargers["wallbox"].state
    assert (
        state is not None and abs(state.energy_total_wh - model.energy_total_wh) < 20
    )  # register resolution
    assert first["surplus/wallbox/energy_total"] == f"{state.energy_total_wh / 1000:.3f}"
    assert first["surplus/wallbox/available"] == "online"
    assert any(t.startswith("homeassistant/") for t in first)
    assert all(r for t, _p, r in client.sent)  # retained by default
    client.sent.clear()
    for _ in range(60):  # a quiet minute: nothing changes, nothing is sent
        await clock.advance(1)
        await bridge._publish_changes(client)  # type: ignore[arg-type]
    assert [(t, p) for t, p, _r in client.sent] == [], "a flood in a quiet minute"
    controller.set_mode("wallbox", "fixed")
    await bridge._publish_changes(client)  # type: ignore[arg-type]
    assert client.sent == [("surplus/wallbox/mode", "fixed", True)]


def _fuzz_payload(rng: random.Random) -> bytes:
    kind = rng.randrange(12)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 40))
    if kind == 1:
        return str(
            rng.choice([10**400, -(10**400), 1e308, -1e308, 2**63, -1, 0, 5.99, 6, 16, 32, 33, 1e-9])
        ).encode()
    if kind == 2:
        return rng.choice(
            [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"nan", b"inf", b"null", b"[]", b"{}"]
        )
    if kind == 3:
        return json.dumps(rng.choice([True, False, None, "x" * 300, [1, 3], {"a": 1}])).encode()
    if kind == 4:
        return ("[" * 600 + "]" * 600).encode()
    if kind == 5:
        return b"7" * (MAX_PAYLOAD_BYTES + rng.randrange(1, 100))
    if kind == 6:
        until = rng.choice(
            [-5, 0, 10, 1e12, "2000-01-01T00:00:00Z", "garbage", "2999-01-01T00:00:00", None, [1]]
        )
        return json.dumps({"current": rng.choice([6, 12, 40, "10", None, -3]), "until": until}).encode()
    if kind == 7:
        return rng.choice([*BUILTIN_MODES, "PV", "turbo", ""]).encode()
    if kind == 8:
        return rng.choice([b"ON", b"OFF", b"lock", b"maybe", b"1", b"0", b"true"])
    if kind == 9:
        return str(rng.choice([1, 3, 2, 0, "1", 1.5])).encode()
    if kind == 10:
        return str(round(rng.uniform(-10, 50), rng.randrange(0, 4))).encode()
    return json.dumps({rng.choice(["mode", "phases", "lock", "current", "x"]): rng.random()}).encode()


async def test_fuzzed_commands_never_crash_and_never_get_past_the_governor(
    clock: FakeClock, running: tuple[Controller, AmtronModel]
) -> None:
    controller, model = running
    bridge = make_bridge(controller)
    rng = random.Random(13)
    whats = [*COMMANDS, "start", "set", "", "mode/x"]
    ok = refused = 0
    for _ in range(400):
        what = rng.choice(whats)
        payload = _fuzz_payload(rng)
        before = (controller.get_override("wallbox"), controller.get_mode("wallbox"))
        reply = await bridge.execute("wallbox", what, payload, retained=rng.random() < 0.05)
        json.dumps(reply, allow_nan=False)  # publishable as it is
        assert reply["command"] == what
        if reply["success"]:
            ok += 1
        else:
            refused += 1
            err = reply["error"]
            assert isinstance(err["code"], int) and isinstance(err["message"], str) and err["message"]
            assert err["code"] != -32603, (what, payload, err)  # never an internal error
            # A refused command changes nothing.
            assert (controller.get_override("wallbox"), controller.get_mode("wallbox")) == before
        await clock.advance(rng.uniform(0, 3))
    assert ok > 30 and refused > 100, (ok, refused)
    await clock.advance(30)
    assert_governor_rules_held(model.record)
    currents = [w.value for w in model.record.writes if w.register == "CHARGING_CURRENT_EM"]
    assert currents and all(c <= SOFT_PAUSE_MAX_A or 6 <= c <= 12 for c in currents), sorted(set(currents))
    assert not any(math.isnan(c) for c in currents)


async def test_a_retained_command_is_never_executed(
    clock: FakeClock, running: tuple[Controller, AmtronModel]
) -> None:
    controller, _model = running
    bridge = make_bridge(controller)
    reply = await bridge.execute("wallbox", "mode", b"off", retained=True)
    assert reply["success"] is False and "retained" in reply["error"]["message"]
    assert controller.get_mode("wallbox") == "fixed"
