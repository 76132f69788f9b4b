"""Meter type "mqtt": grid (and optionally PV, battery, house) power from MQTT topics.

``start()`` launches one background task that connects, subscribes and keeps
the latest value of each topic together with the time it arrived
(``env.clock.now()``). When the broker goes away the task reconnects every
``reconnect_s`` seconds; it logs one line per outage and one when the broker is
back. ``read()`` never touches the network: it returns the latest values or
raises one line saying why it cannot (no value yet, stale, bad payload, broker
unreachable).

Payloads are a plain number (``"-1234.5"``) or JSON, with a dotted path per
topic to the number (``grid_path: "ENERGY.Power"``, list indices as numbers:
``"phases.0.w"``). Several roles may share one topic with different paths.

``battery_soc_topic`` (and ``battery_soc_path``) carry the home battery's state
of charge in percent (``scale`` does not apply to it).

Sign conventions (ours): grid positive = import, battery positive = charging,
house = the house without the chargers. ``invert_grid`` / ``invert_battery``
flip meters that count the other way; ``scale`` multiplies every value (1000
for kW). A retained message counts as fresh when it arrives; MQTT carries no
timestamp of its own.

``read_at_s`` of a reading is the arrival time of the grid value, so the
loop's age of the reading is the age of the data. An optional value that is
stale or whose latest payload was bad is reported as ``None``.

The options and the payload parsing (pure) are in :mod:`.mqtt_settings`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiomqtt

from surplus.clock import Clock
from surplus.hookspecs import RegisterMeter, hookimpl
from surplus.meter import Meter, MeterEnv
from surplus.mqtt_client import PahoLog as _PahoLog
from surplus.mqtt_client import connect as _connect
from surplus.mqtt_client import helper_ended as _helper_ended
from surplus.mqtt_client import tls_context as _tls_context
from surplus.types import MeterReading

from .mqtt_settings import OPTIONS, MqttSettings, Source, parse_payload, settings_from_options

log = logging.getLogger(__name__)

#: The broker notices a silently dead client (and we a dead broker) within ~1.5x this.
KEEPALIVE_S = 15


class MqttMeterError(RuntimeError):
    """A reading is not available; the message is one line."""


@dataclass(slots=True)
class _Latest:
    value: float | None = None
    arrived_s: float = -math.inf
    error: str | None = None  # the latest payload was unusable


class MqttMeter:
    """A meter fed by MQTT messages; see the module docstring."""

    def __init__(self, meter_id: str, env: MeterEnv, settings: MqttSettings) -> None:
        self.meter_id = meter_id
        self.settings = settings
        self._clock: Clock = env.clock
        self._latest = {s.role: _Latest() for s in settings.sources}
        self._by_topic: dict[str, list[Source]] = {}
        for source in settings.sources:
            self._by_topic.setdefault(source.topic, []).append(source)
        self._task: asyncio.Task[None] | None = None
        self._connected = False
        self._paho_log = _PahoLog(__name__)
        self._down_since_s: float | None = None
        self._down_reason = ""
        self._ever_connected = False
        #: Connection attempts that failed or ended (tests wait on it).
        self.failures = 0

    @property
    def connected(self) -> bool:
        """True while subscribed to the broker."""
        return self._connected

    @property
    def broker(self) -> str:
        """``host:port`` for messages."""
        return f"{self.settings.host}:{self.settings.port}"

    async def start(self) -> None:
        """Launch the subscriber task (a no-op while it runs)."""
        if self._task is not None and not self._task.done():
            return
        self._task = asyncio.create_task(self._run(), name=f"mqtt meter {self.meter_id}")

    async def stop(self) -> None:
        """Cancel the subscriber and disconnect; safe to call twice."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # A connect in progress is let finish (TCP + CONNACK, timeout_s each), then the
        # disconnect and the helper's end take up to timeout_s each; plus a margin.
        limit_s = 4 * self.settings.timeout_s + 1.0
        done, _ = await asyncio.wait({task}, timeout=limit_s)
        if not done:
            log.error("meter %s: the MQTT task did not stop within %g s", self.meter_id, limit_s)
        self._connected = False

    async def read(self) -> MeterReading:
        """The latest values; raises :class:`MqttMeterError` (one line) when there is no usable grid value."""
        if self._task is None:
            raise MqttMeterError(f"meter {self.meter_id}: not started")
        now = self._clock.now()
        grid = self._latest["grid"]
        if grid.error is not None:
            raise MqttMeterError(f"meter {self.meter_id}: {grid.error}")
        if grid.value is None:
            if self._down_since_s is not None:
                raise MqttMeterError(f"meter {self.meter_id}: {self._outage(now)}")
            topic = self._topic("grid")
            raise MqttMeterError(f"meter {self.meter_id}: no value yet on grid topic {topic!r}")
        age = now - grid.arrived_s
        if age > self.settings.max_age_s:
            why = f" ({self._outage(now)})" if self._down_since_s is not None else ""
            raise MqttMeterError(f"meter {self.meter_id}: grid value is {age:.0f} s old{why}")
        return MeterReading(
            meter_id=self.meter_id,
            read_at_s=grid.arrived_s,
            grid_power_w=grid.value,
            pv_power_w=self._optional("pv", now),
            battery_power_w=self._optional("battery", now),
            house_power_w=self._optional("house", now),
            battery_soc_pct=self._optional("battery_soc", now),
        )

    def _optional(self, role: str, now: float) -> float | None:
        latest = self._latest.get(role)
        if latest is None or latest.error is not None or latest.value is None:
            return None
        return latest.value if now - latest.arrived_s <= self.settings.max_age_s else None

    def _topic(self, role: str) -> str:
        return next(s.topic for s in self.settings.sources if s.role == role)

    def _outage(self, now: float) -> str:
        since = self._down_since_s if self._down_since_s is not None else now
        return f"broker {self.broker} unreachable for {now - since:.0f} s ({self._down_reason})"

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except Exception as exc:  # any failure means: reconnect later, never die
                s = self.settings
                self._went_down(self._paho_log.reason(exc, s.timeout_s, "the meter's ca_file", tls=s.tls))
                self.failures += 1
            await self._clock.sleep(self.settings.reconnect_s)

    async def _session(self) -> None:
        s = self.settings
        self._paho_log = _PahoLog(__name__)  # this attempt's socket error only
        client = aiomqtt.Client(
            s.host,
            port=s.port,
            username=s.username,
            password=s.password,
            identifier=s.client_id,
            timeout=s.timeout_s,
            keepalive=KEEPALIVE_S,
            tls_context=_tls_context(s.tls, s.ca_file),
            logger=self._paho_log.logger,
        )
        # paho connects in an executor thread that only its own timeout can end.
        paho = getattr(client, "_client", None)
        if paho is not None and hasattr(paho, "connect_timeout"):
            paho.connect_timeout = s.timeout_s
        try:
            async with contextlib.AsyncExitStack() as stack:
                await _connect(client)
                stack.push_async_exit(client)
                for topic in self._by_topic:
                    await client.subscribe(topic, qos=0, timeout=s.timeout_s)
                self._came_up()
                async for message in client.messages:
                    self._on_message(message.topic.value, message.payload)
                raise MqttMeterError("the message stream ended")
        finally:
            await _helper_ended(client, s.timeout_s)

    def _came_up(self) -> None:
        now = self._clock.now()
        self._connected = True
        if self._down_since_s is not None:
            log.info(
                "meter %s: broker %s is back after %.0f s",
                self.meter_id,
                self.broker,
                now - self._down_since_s,
            )
        elif not self._ever_connected:
            log.info(
                "meter %s: subscribed to %s on %s", self.meter_id, ", ".join(self._by_topic), self.broker
            )
        self._down_since_s = None
        self._ever_connected = True

    def _went_down(self, reason: str) -> None:
        self._connected = False
        self._down_reason = reason
        if self._down_since_s is None:  # one line per outage, not per attempt
            self._down_since_s = self._clock.now()
            log.warning(
                "meter %s: broker %s unreachable (%s); retrying every %g s",
                self.meter_id,
                self.broker,
                reason,
                self.settings.reconnect_s,
            )

    def _on_message(self, topic: str, payload: object) -> None:
        now = self._clock.now()
        for source in self._by_topic.get(topic, ()):
            latest = self._latest[source.role]
            try:
                value = parse_payload(payload, source.path) * source.factor + 0.0  # no -0.0
            except ValueError as exc:
                error = f"bad payload on {source.role} topic {topic!r}: {exc}"
                if latest.error is None:  # once per streak of bad payloads
                    log.warning("meter %s: %s", self.meter_id, error)
                latest.error = error
                continue
            latest.value, latest.arrived_s, latest.error = value, now, None


def make_mqtt(meter_id: str, options: Mapping[str, Any], env: MeterEnv) -> Meter:
    """Build an MQTT meter (validates options; no I/O)."""
    return MqttMeter(meter_id, env, settings_from_options(meter_id, options))


@hookimpl
def surplus_register_meters(register: RegisterMeter) -> None:
    register(
        "mqtt",
        make_mqtt,
        summary="values from MQTT topics (numbers or JSON with a path)",
        options={
            name: {
                "port": 1883,
                "scale": 1.0,
                "tls": False,
                "invert_grid": False,
                "invert_battery": False,
                "max_age_s": 10.0,
                "timeout_s": 2.0,
                "reconnect_s": 5.0,
            }.get(name)
            for name in OPTIONS
        },
    )
