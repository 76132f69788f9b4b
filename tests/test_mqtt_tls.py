"""The MQTT bridge over TLS, against a real mosquitto with a TLS listener on 127.0.0.1 and a
test CA made by ``openssl``: with ``ca_file`` it connects and publishes; without it (the
system's CAs, which do not know the test CA) the certificate is refused, the bridge says why
and never counts itself connected."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from .mosquitto_support import Mosquitto
from .mqtt_support import eventually, mqtt_stack, subscriber
from .tls_support import TestPki, make_test_pki

pytestmark = pytest.mark.integration


@pytest.fixture
def pki(tmp_path: Path) -> TestPki:
    return make_test_pki(tmp_path / "pki")


@pytest.fixture
def tls_broker(tmp_path: Path, pki: TestPki) -> Iterator[Mosquitto]:
    """A real mosquitto that speaks only TLS, with the test CA's server certificate."""
    b = Mosquitto(tmp_path / "mosquitto", tls=pki)
    b.start()
    try:
        yield b
    finally:
        b.stop()


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


async def test_a_plain_connection_to_a_tls_listener_fails_without_hanging(tls_broker: Mosquitto) -> None:
    # tls left off against a TLS-only port: the broker drops the connection; the bridge retries.
    async with mqtt_stack(tls_broker) as (stack, _model, _url):
        await eventually(lambda: stack.mqtt.stats.failures >= 1, "a failed plain attempt")
        assert not stack.mqtt.connected
