"""The MQTT meter against a real mosquitto on 127.0.0.1.

Arrival times come from a FakeClock, so staleness needs no sleeping; real
waits are only the bounded polls for messages and reconnects to arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from surplus_plugins.mqtt_meter import MqttMeter, MqttMeterError
from surplus_plugins.mqtt_settings import parse_payload

from surplus.clock import FakeClock
from surplus.meter import MeterEnv
from surplus.options import OptionError
from surplus.plugins import collect_meters, make_plugin_manager
from surplus.types import MeterReading

from .mosquitto_support import Mosquitto, free_port
from .waiting import eventually

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-Pa55"
LOGGER = "surplus_plugins.mqtt_meter"


def factory() -> Any:
    return collect_meters(make_plugin_manager(load_entrypoints=False))["mqtt"]


def build(clock: FakeClock, port: int, meter_id: str = "grid", **options: Any) -> MqttMeter:
    options.setdefault("grid_topic", "home/grid")
    meter = factory()(meter_id, {"port": port, **options}, MeterEnv(clock=clock))
    assert isinstance(meter, MqttMeter)
    return meter


async def publish(broker: Mosquitto, topic: str, payload: str, *, retain: bool = False) -> None:
    async with aiomqtt.Client(broker.host, port=broker.port, identifier="test-publisher", timeout=5) as c:
        await c.publish(topic, payload, qos=1, retain=retain)


async def read_value(meter: MqttMeter, grid_w: float) -> MeterReading:
    """Wait until the meter's grid value is ``grid_w`` and return that reading."""
    got: list[MeterReading] = []

    async def check() -> bool:
        try:
            got.append(await meter.read())
        except MqttMeterError:
            return False
        return got[-1].grid_power_w == grid_w

    await eventually(check, f"grid {grid_w} W")
    return got[-1]


async def error_of(meter: MqttMeter) -> str:
    with pytest.raises(MqttMeterError) as info:
        await meter.read()
    return str(info.value)


def failures_reach(meter: MqttMeter, n: int) -> Callable[[], bool]:
    return lambda: meter.failures == n


async def connected(meter: MqttMeter) -> None:
    await eventually(lambda: meter.connected, "the meter to subscribe")


# ---- payloads (pure) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "path", "expected"),
    [
        (b"1234.5", (), 1234.5),
        (b" -42\n", (), -42.0),
        (b'"17"', (), 17.0),  # a JSON string holding a number
        (b"1e3", (), 1000.0),
        (b'{"ENERGY": {"Power": 812}}', ("ENERGY", "Power"), 812.0),
        (b'{"phases": [{"w": 1}, {"w": -2.5}]}', ("phases", "1", "w"), -2.5),
        (b"[10, 20, 30]", ("2",), 30.0),
        (b'{"0": 5}', ("0",), 5.0),  # a digit key in an object is a key
    ],
)
def test_parse_payload(payload: bytes, path: tuple[str, ...], expected: float) -> None:
    assert parse_payload(payload, path) == expected


@pytest.mark.parametrize(
    ("payload", "path", "message"),
    [
        (b"", (), "empty payload"),
        (b"abc", (), "not a number: 'abc'"),
        (b"nan", (), "not a finite number"),
        (b"true", (), "not a number"),
        (b"\xff\xfe", (), "not UTF-8"),
        (b"12", ("a",), "no 'a' at the top level"),
        (b"{oops", ("a",), "not JSON: '{oops'"),
        (b'{"a": {"b": 1}}', ("a", "c"), "no 'c' at a in"),
        (b'{"a": [1]}', ("a", "3"), "no '3' at a in"),
        (b'{"a": {"b": 1}}', ("a",), "not a number"),
        (b'{"a": null}', ("a",), "not a number"),
    ],
)
def test_parse_payload_errors(payload: bytes, path: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_payload(payload, path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_long_payloads_are_cut_in_messages() -> None:
    with pytest.raises(ValueError) as info:
        parse_payload(b"x" * 5000, ())
    assert len(str(info.value)) < 100


# ---- options (no I/O) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "option", "text"),
    [
        ({"grid_topic": None}, "grid_topic", "required"),
        ({"grid_topik": "a"}, "grid_topik", "did you mean 'grid_topic'"),
        ({"port": 0}, "port", "below the minimum"),
        ({"port": "1883"}, "port", "whole number"),
        ({"host": ""}, "host", "non-empty text"),
        ({"grid_topic": "home/+/power"}, "grid_topic", "wildcard"),
        ({"pv_topic": "home/#"}, "pv_topic", "wildcard"),
        ({"pv_path": "a.b"}, "pv_path", "set pv_topic too"),
        ({"grid_path": "a..b"}, "grid_path", "empty step"),
        ({"scale": 0}, "scale", "0 would"),
        ({"scale": "1000"}, "scale", "expected a number"),
        ({"invert_grid": "yes"}, "invert_grid", "true or false"),
        ({"max_age_s": 0}, "max_age_s", "below the minimum"),
        ({"timeout_s": 600}, "timeout_s", "above the maximum"),
        ({"reconnect_s": -1}, "reconnect_s", "below the minimum"),
        ({"password": SECRET}, "password", "set username too"),
        ({"username": "u", "password": 12345}, "password", "a secret"),
        ({"tls": "yes"}, "tls", "true or false"),
        ({"ca_file": "ca.pem"}, "ca_file", "set tls: true too"),
        ({"tls": True, "ca_file": "/nonexistent/surplus-ca.pem"}, "ca_file", "no such file"),
    ],
)
def test_option_errors_name_the_option(options: dict[str, Any], option: str, text: str) -> None:
    merged = {"grid_topic": "home/grid", **options}
    if merged["grid_topic"] is None:
        del merged["grid_topic"]
    with pytest.raises(OptionError) as info:
        factory()("grid", merged, MeterEnv(clock=FakeClock()))
    assert info.value.option == option
    assert text in str(info.value)
    assert SECRET not in str(info.value) and "12345" not in str(info.value)


def test_defaults_and_no_secret_in_repr() -> None:
    meter = build(FakeClock(), 1883, meter_id="roof", username="u", password=SECRET)
    s = meter.settings
    assert (s.host, s.port, s.client_id, s.max_age_s, s.timeout_s, s.reconnect_s) == (
        "127.0.0.1",
        1883,
        "surplus-roof",
        10.0,
        2.0,
        5.0,
    )
    assert SECRET not in repr(s) and SECRET not in repr(meter.settings.sources)


async def test_read_before_start_says_so() -> None:
    meter = build(FakeClock(), free_port())
    assert await error_of(meter) == "meter grid: not started"


# ---- against the broker -------------------------------------------------------------


async def test_plain_number_and_arrival_time(broker: Mosquitto) -> None:
    clock = FakeClock(start=500.0)
    meter = build(clock, broker.port)
    await meter.start()
    try:
        await connected(meter)
        assert await error_of(meter) == "meter grid: no value yet on grid topic 'home/grid'"
        await publish(broker, "home/grid", "1234.5")
        reading = await read_value(meter, 1234.5)
        assert reading.read_at_s == 500.0  # stamped on arrival with the env clock
        assert (reading.pv_power_w, reading.battery_power_w, reading.house_power_w) == (None, None, None)
        clock.set(503.0)
        later = await meter.read()
        assert later.read_at_s == 500.0  # still the arrival time: the loop sees the data's age
        await publish(broker, "home/grid", "-300")
        assert (await read_value(meter, -300.0)).read_at_s == 503.0
    finally:
        await meter.stop()


async def test_json_paths_shared_topic_scale_and_signs(broker: Mosquitto) -> None:
    meter = build(
        FakeClock(),
        broker.port,
        grid_topic="tele/meter/SENSOR",
        grid_path="ENERGY.Power.0",
        pv_topic="tele/meter/SENSOR",
        pv_path="pv",
        battery_topic="bat/p",
        battery_soc_topic="bat/soc",
        house_topic="house/p",
        scale=1000,  # the meter speaks kW
        invert_grid=True,  # it counts export as positive
        invert_battery=True,  # it counts discharging as positive
    )
    await meter.start()
    try:
        await connected(meter)
        await publish(broker, "bat/p", "0.5")
        await publish(broker, "bat/soc", "77.5")  # percent: scale and invert do not apply
        await publish(broker, "house/p", "0.75")
        await publish(broker, "tele/meter/SENSOR", '{"ENERGY": {"Power": [-1.2, 0]}, "pv": 3.4}')
        reading = await read_value(meter, 1200.0)
        assert reading.pv_power_w == 3400.0
        assert reading.battery_power_w == -500.0  # discharging 0.5 kW
        assert reading.battery_soc_pct == 77.5
        assert reading.house_power_w == 750.0
    finally:
        await meter.stop()


async def test_bad_payload_is_reported_and_the_subscriber_lives_on(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    meter = build(FakeClock(), broker.port, pv_topic="home/pv")
    await meter.start()
    try:
        await connected(meter)
        await publish(broker, "home/grid", "100")
        await publish(broker, "home/pv", "2000")
        await read_value(meter, 100.0)
        for _ in range(3):
            await publish(broker, "home/grid", "n/a")
        expected = "meter grid: bad payload on grid topic 'home/grid': not a number: 'n/a'"

        async def failing() -> bool:
            try:
                await meter.read()
            except MqttMeterError as exc:
                return str(exc) == expected
            return False

        await eventually(failing, "the bad payload to show")
        await publish(broker, "home/pv", "{}")
        await publish(broker, "home/grid", "150")
        reading = await read_value(meter, 150.0)  # the same subscriber, still running
        assert reading.pv_power_w is None  # the latest PV payload was bad
        assert meter.failures == 0
        bad_lines = [r for r in caplog.records if "bad payload on grid" in r.getMessage()]
        assert len(bad_lines) == 1  # once per streak, not per message
    finally:
        await meter.stop()


async def test_staleness_on_the_fake_clock(broker: Mosquitto) -> None:
    clock = FakeClock(start=100.0)
    meter = build(clock, broker.port, pv_topic="home/pv", max_age_s=10)
    await meter.start()
    try:
        await connected(meter)
        await publish(broker, "home/pv", "900")
        await eventually(lambda: meter._latest["pv"].value == 900.0, "the PV value")
        clock.set(105.0)
        await publish(broker, "home/grid", "50")
        assert (await read_value(meter, 50.0)).pv_power_w == 900.0
        clock.set(111.0)  # PV is 11 s old, grid 6 s
        assert (await meter.read()).pv_power_w is None
        clock.set(115.0)  # exactly max_age_s: still usable
        assert (await meter.read()).grid_power_w == 50.0
        clock.set(117.0)
        assert await error_of(meter) == "meter grid: grid value is 12 s old"
    finally:
        await meter.stop()


async def test_retained_value_is_picked_up_at_start(broker: Mosquitto) -> None:
    broker.publish("home/grid", "777", retain=True)  # mosquitto_pub, before the meter exists
    meter = build(FakeClock(), broker.port)
    await meter.start()
    try:
        await read_value(meter, 777.0)
    finally:
        await meter.stop()


async def test_broker_outage_and_recovery(broker: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock(start=0.0)
    meter = build(clock, broker.port, reconnect_s=5)
    await meter.start()
    try:
        await connected(meter)
        await publish(broker, "home/grid", "400")
        await read_value(meter, 400.0)

        broker.kill()  # SIGKILL by PID: the TCP connection just dies
        await eventually(lambda: meter.failures == 1, "the meter to notice the outage")
        assert not meter.connected
        assert (await meter.read()).grid_power_w == 400.0  # still fresh by the clock
        for attempt in (2, 3):  # reconnect attempts while the broker is down
            await clock.advance(5.0)
            await eventually(failures_reach(meter, attempt), f"attempt {attempt} to fail")
        clock.set(12.0)
        text = await error_of(meter)
        assert text.startswith(
            f"meter grid: grid value is 12 s old (broker 127.0.0.1:{broker.port} unreachable"
        )
        assert "\n" not in text

        broker.start()  # same port
        await clock.advance(5.0)
        await connected(meter)
        await publish(broker, "home/grid", "-1500")
        assert (await read_value(meter, -1500.0)).read_at_s == clock.now()

        lines = [r.getMessage() for r in caplog.records if r.name.startswith(LOGGER)]
        assert (
            lines.count(
                f"meter grid: broker 127.0.0.1:{broker.port} unreachable (connection lost); retrying every 5 s"
            )
            == 1
        )
        assert sum("unreachable" in line for line in lines) == 1  # one per outage, not per attempt
        assert sum("is back after" in line for line in lines) == 1
    finally:
        await meter.stop()


async def test_broker_never_reachable(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    port = free_port()
    meter = build(FakeClock(start=0.0), port, timeout_s=1)
    await meter.start()
    try:
        await eventually(lambda: meter.failures >= 1, "the first attempt to fail")
        text = await error_of(meter)
        assert text == f"meter grid: broker 127.0.0.1:{port} unreachable for 0 s (Connection refused)"
    finally:
        await meter.stop()


async def test_credentials_and_no_password_in_errors_or_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secured = Mosquitto(tmp_path / "secured", users={"surplus": SECRET})
    secured.start()
    good = build(FakeClock(), secured.port, username="surplus", password=SECRET)
    bad = build(FakeClock(), secured.port, meter_id="bad", username="surplus", password=SECRET + "x")
    try:
        await good.start()
        await bad.start()
        await connected(good)
        secured.publish("home/grid", "42", user=("surplus", SECRET))
        await read_value(good, 42.0)
        await eventually(lambda: bad.failures >= 1, "the bad login to fail")
        text = await error_of(bad)
        assert text == (
            f"meter bad: broker 127.0.0.1:{secured.port} unreachable for 0 s "
            "(broker refused the connection: Not authorized)"
        )
        assert SECRET not in text
        assert all(SECRET not in r.getMessage() for r in caplog.records)
    finally:
        await good.stop()
        await bad.stop()
        secured.stop()


async def test_stop_twice_leaves_no_tasks(broker: Mosquitto) -> None:
    before = asyncio.all_tasks()
    meter = build(FakeClock(), broker.port)
    await meter.stop()  # never started: fine
    await meter.start()
    await meter.start()  # already running: no second task
    assert len(asyncio.all_tasks() - before) >= 1
    await connected(meter)
    await meter.stop()
    await meter.stop()
    assert not meter.connected
    assert not (asyncio.all_tasks() - before)
    assert await error_of(meter) == "meter grid: not started"

    await meter.start()  # a stopped meter starts again
    await connected(meter)
    await publish(broker, "home/grid", "5")
    await read_value(meter, 5.0)
    await meter.stop()
    assert not (asyncio.all_tasks() - before)


async def test_stop_while_waiting_to_reconnect() -> None:
    before = asyncio.all_tasks()
    meter = build(FakeClock(), free_port(), reconnect_s=3600)
    await meter.start()
    await eventually(lambda: meter.failures == 1, "the first attempt to fail")
    await meter.stop()  # the task sleeps on the clock: cancel must end it at once
    assert not (asyncio.all_tasks() - before)


async def test_a_silent_server_times_out_and_stop_ends_a_connect_in_progress() -> None:
    before = asyncio.all_tasks()
    clock = FakeClock()
    with socket.socket() as server:  # accepts TCP, never answers MQTT
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        server.setblocking(False)
        port = server.getsockname()[1]
        meter = build(clock, port, timeout_s=0.3, reconnect_s=5)
        await meter.start()
        await eventually(failures_reach(meter, 1), "the CONNACK wait to time out")
        assert await error_of(meter) == (
            f"meter grid: broker 127.0.0.1:{port} unreachable for 0 s (no answer within 0.3 s)"
        )
        accepted: list[socket.socket] = []
        try:
            await until_stopped_mid_connect(clock, meter, server, accepted)
        finally:
            for conn in accepted:
                conn.close()
        assert meter.failures == 1
        assert not (asyncio.all_tasks() - before)


async def until_stopped_mid_connect(
    clock: FakeClock, meter: MqttMeter, server: socket.socket, accepted: list[socket.socket]
) -> None:
    """Let the meter's second attempt reach the silent server, then stop the meter."""

    def second_connection() -> bool:
        with contextlib.suppress(BlockingIOError):
            while True:
                accepted.append(server.accept()[0])
        return len(accepted) == 2

    await clock.advance(5.0)
    await eventually(second_connection, "the second attempt to connect")
    await meter.stop()  # mid-connect: waits out the bounded attempt, then closes it
