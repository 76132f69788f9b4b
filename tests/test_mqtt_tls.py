"""MQTT over TLS, against a real mosquitto with a TLS listener on 127.0.0.1 and a test CA made
by ``openssl`` (the ``pki`` and ``tls_broker`` fixtures): the bridge and the MQTT meter connect
with ``ca_file``; without it (the system's CAs, which do not know the test CA) the certificate
is refused, the log or the read says why, and neither counts itself connected."""

from __future__ import annotations

import logging

import pytest
from surplus_plugins.mqtt_meter import MqttMeter, MqttMeterError

from surplus.clock import FakeClock
from surplus.meter import MeterEnv
from surplus.plugins import collect_meters, make_plugin_manager

from .mosquitto_support import Mosquitto
from .mqtt_support import mqtt_stack, publish, subscriber
from .test_mqtt_meter import read_value
from .tls_support import TestPki
from .waiting import eventually

pytestmark = pytest.mark.integration


async def test_the_bridge_publishes_over_tls_with_the_brokers_ca_file(
    tls_broker: Mosquitto, pki: TestPki
) -> None:
    async with (
        subscriber(tls_broker) as seen,
        mqtt_stack(tls_broker, tls="true", ca_file=str(pki.ca_file)) as (
            stack,
            _model,
            _url,
        ),
    ):
        await eventually(lambda: seen.text("surplus/availability") == "online", "availability over TLS")
        await eventually(
            lambda: seen.text("surplus/wallbox/mode") is not None, "the charger's state over TLS"
        )
        assert stack.mqtt.connected
        assert stack.mqtt.stats.failures == 0


async def test_a_certificate_the_bridge_cannot_verify_is_refused_and_said(
    tls_broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="surplus.mqtt_bridge")
    # tls: true without ca_file trusts the system's CAs, which never signed the test CA.
    async with subscriber(tls_broker) as seen, mqtt_stack(tls_broker, tls="true") as (stack, _model, _url):
        await eventually(lambda: stack.mqtt.stats.failures >= 2, "two refused attempts (it keeps retrying)")
        assert not stack.mqtt.connected
        assert "surplus/availability" not in seen.latest  # nothing got through
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    said = [w for w in warnings if "unreachable" in w]
    assert len(said) == 1, warnings  # one line per outage, not one per attempt
    assert "the broker's certificate was not trusted" in said[0], said
    assert "self-signed certificate in certificate chain" in said[0], said  # openssl's own words
    assert "mqtt.ca_file" in said[0], said  # and what to set


async def test_a_plain_connection_to_a_tls_port_says_to_set_tls_once(
    tls_broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    # tls left off against a TLS-only port: the broker drops each attempt; the bridge retries.
    caplog.set_level(logging.DEBUG, logger="surplus.mqtt_bridge")
    async with mqtt_stack(tls_broker) as (stack, _model, _url):
        await eventually(lambda: stack.mqtt.stats.failures >= 3, "three dropped attempts")
        assert not stack.mqtt.connected
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    # One line for the outage, naming the cause and the fix; not one ERROR per attempt from paho.
    assert len(said) == 1, said
    assert "the broker closed the connection without answering" in said[0], said
    assert "needs tls: true" in said[0], said


def tls_meter(broker: Mosquitto, **options: object) -> MqttMeter:
    factory = collect_meters(make_plugin_manager(load_entrypoints=False))["mqtt"]
    merged = {"port": broker.port, "grid_topic": "home/grid", "tls": True, "reconnect_s": 0.2, **options}
    meter = factory("grid", merged, MeterEnv(clock=FakeClock()))
    assert isinstance(meter, MqttMeter)
    return meter


async def test_the_mqtt_meter_reads_over_tls_with_the_brokers_ca_file(
    tls_broker: Mosquitto, pki: TestPki
) -> None:
    meter = tls_meter(tls_broker, ca_file=str(pki.ca_file))
    await meter.start()
    try:
        await eventually(lambda: meter.connected, "the meter to subscribe over TLS")
        await publish(tls_broker, "home/grid", "-1234")

        assert (await read_value(meter, -1234.0)).grid_power_w == -1234.0
        assert meter.failures == 0
    finally:
        await meter.stop()


async def read_error_after_a_failure(meter: MqttMeter) -> str:
    """What a read says once the meter's first attempt has failed (it never connects)."""
    await meter.start()
    try:
        await eventually(lambda: meter.failures >= 1, "a failed attempt")
        assert not meter.connected
        with pytest.raises(MqttMeterError) as info:
            await meter.read()
        return str(info.value)
    finally:
        await meter.stop()


async def test_the_mqtt_meter_refuses_a_certificate_it_cannot_verify(tls_broker: Mosquitto) -> None:
    text = await read_error_after_a_failure(tls_meter(tls_broker))  # the system's CAs
    assert "the broker's certificate was not trusted" in text, text
    assert "the meter's ca_file names the CA that signed it" in text, text


async def test_the_mqtt_meter_on_a_tls_port_without_tls_says_to_set_it(tls_broker: Mosquitto) -> None:
    text = await read_error_after_a_failure(tls_meter(tls_broker, tls=False))
    assert "the broker closed the connection without answering" in text, text
    assert "needs tls: true" in text, text
