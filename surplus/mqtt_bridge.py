"""MQTT: state out, commands in, Home Assistant discovery.

One background task keeps a connection to the broker (reconnecting with
back-off) and, once a second at most, publishes what changed in the latest
snapshot: per charger under ``<prefix>/<charger id>/<name>``, per meter under
``<prefix>/meters/<meter id>/<name>``. It reads the controller's snapshot and
never the bus, and the tick never waits for it: a dead or slow broker changes
nothing in charging.

Availability is the broker's last will: ``<prefix>/availability`` is
``online`` (retained) after connecting, ``offline`` when the process dies
(the will) or stops cleanly (published before disconnecting).

Commands arrive on ``<prefix>/<charger id>/<what>/set`` and are turned into
the JSON-RPC call that does the same thing (setMode, setOverride, setLock,
clearOverride), dispatched through the same method table as the HTTP server:
the governor decides, and the reply published on
``<prefix>/<charger id>/<what>/reply`` carries the RPC reply's wording. A bad
payload gets an error reply and changes nothing. Retained commands are
ignored: a command must not be replayed on every reconnect.
The payloads both ways (commands into calls, state into topics) are
:mod:`surplus.mqtt_payloads`.

Home Assistant discovery configs (:mod:`surplus.ha_discovery`) are published
retained; what was announced is kept in ``<prefix>/bridge/announced`` so that
entities of a charger or meter that left the config are removed.

The MQTT meter keeps a connection of its own, even to the same broker: it is a
plugin behind the :class:`~surplus.meter.Meter` protocol with its own
lifecycle, and sharing a client would tie the two together for the cost of
one extra TCP connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiomqtt

from . import __version__
from .api import ControllerAPI
from .config import MqttConfig
from .ha_discovery import (
    OFFLINE,
    ONLINE,
    Topics,
    all_config_topics,
    charger_configs,
    meter_configs,
    stale_topics,
)
from .jsonrpc import INVALID_PARAMS, Dispatcher
from .mqtt_client import PahoLog, connect, describe, helper_ended, tls_context
from .mqtt_payloads import CommandError, command_call, state_messages, within_deadband
from .rpc import build_methods
from .rpc_methods import CALLER
from .rpc_shapes import iso_utc
from .types import ChargerReading

log = logging.getLogger(__name__)

#: The broker notices a silently dead client (and we a dead broker) within ~1.5x this.
KEEPALIVE_S = 15


@dataclass
class BridgeStats:
    """Counters for tests and the bench."""

    published: int = 0
    connects: int = 0
    commands: int = 0
    failures: int = 0


class MqttBridge:
    """See the module docstring. ``start()`` launches it, ``close()`` ends it cleanly."""

    def __init__(
        self,
        controller: ControllerAPI,
        settings: MqttConfig,
        *,
        stale_after_s: float,
        ceiling_a: Callable[[ChargerReading], float],
        meter_ids: Sequence[str] = (),
    ) -> None:
        self.c = controller
        self.settings = settings
        self.clock = controller.clock
        self.stale_after_s = stale_after_s
        self._ceiling_a = ceiling_a
        self.meter_ids = tuple(meter_ids)
        self.topics = Topics(prefix=settings.topic_prefix, discovery_prefix=settings.discovery_prefix or "")
        self.commands = settings.commands_on
        self.discovery = settings.discovery_prefix is not None
        self._dispatcher = Dispatcher(
            build_methods(controller, stale_after_s=stale_after_s), title="surplus", version=__version__
        )
        #: Topic -> payload sent on this connection (cleared on each connect: all is sent again).
        self._sent: dict[str, str] = {}
        self._discovery_cache: dict[str, tuple[Any, dict[str, str]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._client: aiomqtt.Client | None = None
        self._paho_log = PahoLog(__name__)
        self._closing = False
        self._reset_backoff = False
        self.connected = False
        self._down_since_s: float | None = None
        self.stats = BridgeStats()

    @property
    def broker(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    async def start(self) -> None:
        """Launch the connection task (returns at once; the broker may still be unreachable)."""
        if not self.commands:
            why = (
                "mqtt.commands is false"
                if self.settings.commands is False
                else "no username on a non-loopback broker"
            )
            log.info("MQTT commands are off (%s)", why)
        self._task = asyncio.create_task(self._run(), name="mqtt bridge")

    async def close(self) -> None:
        """Publish ``offline``, disconnect cleanly (no last will), and stop; bounded in time."""
        self._closing = True
        client, timeout = self._client, self.settings.timeout_s
        if client is not None and self.connected:
            try:
                await client.publish(self.topics.availability, OFFLINE, qos=1, retain=True, timeout=timeout)
            except Exception as exc:
                log.warning("MQTT: could not publish offline: %s", describe(exc, timeout))
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=4 * timeout + 1)
            if not done:
                log.error("MQTT: the bridge task did not stop within %g s", 4 * timeout + 1)
        self.connected = False

    # -- connection -------------------------------------------------------

    async def _run(self) -> None:
        delay = self.settings.reconnect_min_s
        while not self._closing:
            self._reset_backoff = False
            try:
                await self._session()
            except Exception as exc:
                first: BaseException = exc
                while isinstance(first, BaseExceptionGroup) and first.exceptions:
                    first = first.exceptions[0]
                s = self.settings
                self._went_down(self._paho_log.reason(first, s.timeout_s, "mqtt.ca_file", tls=s.tls), delay)
            self.connected = False
            self._client = None
            if self._reset_backoff:  # that session was connected: start the back-off again
                delay = self.settings.reconnect_min_s
            await self.clock.sleep(delay)
            delay = min(delay * 2, self.settings.reconnect_max_s)

    def _client_for(self) -> aiomqtt.Client:
        s = self.settings
        self._paho_log = PahoLog(__name__)  # this attempt's socket error only
        client = aiomqtt.Client(
            s.host,
            port=s.port,
            username=s.username,
            password=s.password,
            identifier=s.client_id,
            timeout=s.timeout_s,
            keepalive=KEEPALIVE_S,
            will=aiomqtt.Will(self.topics.availability, OFFLINE, qos=1, retain=True),
            tls_context=tls_context(s.tls, s.ca_file),
            logger=self._paho_log.logger,
        )
        paho = getattr(client, "_client", None)
        if paho is not None and hasattr(paho, "connect_timeout"):
            paho.connect_timeout = s.timeout_s
        return client

    async def _session(self) -> None:
        client = self._client_for()
        t = self.topics
        timeout = self.settings.timeout_s
        try:
            async with contextlib.AsyncExitStack() as stack:
                await connect(client)
                stack.push_async_exit(client)
                self._client = client
                self._sent.clear()
                await client.publish(t.availability, ONLINE, qos=1, retain=True, timeout=timeout)
                if self.discovery:
                    # Subscribe before replacing the record: the broker sends the old one first.
                    await client.subscribe(t.announced, qos=1, timeout=timeout)
                    record = json.dumps(self._config_topics(), separators=(",", ":"))
                    await client.publish(t.announced, record, qos=1, retain=True, timeout=timeout)
                if self.commands:
                    await client.subscribe(f"{t.prefix}/+/+/set", qos=1, timeout=timeout)
                self._came_up()
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._publisher(client))
                    group.create_task(self._listener(client))
        finally:
            await helper_ended(client, timeout)

    def _came_up(self) -> None:
        self.connected = True
        self.stats.connects += 1
        self._reset_backoff = True
        if self._down_since_s is not None:
            log.info(
                "MQTT: broker %s is back after %.0f s", self.broker, self.clock.now() - self._down_since_s
            )
        else:
            log.info("MQTT: publishing to %s under %s/", self.broker, self.topics.prefix)
        self._down_since_s = None

    def _went_down(self, reason: str, delay: float) -> None:
        self.connected = False
        self.stats.failures += 1
        if self._closing:
            return
        if self._down_since_s is None:  # one line per outage, not per attempt
            self._down_since_s = self.clock.now()
            log.warning(
                "MQTT: broker %s unreachable (%s); retrying with back-off from %g s",
                self.broker,
                reason,
                delay,
            )

    # -- state out --------------------------------------------------------

    async def _publisher(self, client: aiomqtt.Client) -> None:
        while True:
            await self._publish_changes(client)
            await self.clock.sleep(self.settings.interval_s)

    async def _publish_changes(self, client: aiomqtt.Client) -> None:
        timeout = self.settings.timeout_s
        if self.discovery:
            for topic, payload in self.discovery_messages().items():
                if self._sent.get(topic) != payload:
                    await client.publish(topic, payload, qos=1, retain=True, timeout=timeout)
                    self._sent[topic] = payload
                    self.stats.published += 1
        for topic, payload in self.state_messages().items():
            last = self._sent.get(topic)
            if last != payload and not within_deadband(topic, last, payload):
                await client.publish(topic, payload, qos=0, retain=self.settings.retain, timeout=timeout)
                self._sent[topic] = payload
                self.stats.published += 1

    def state_messages(self) -> dict[str, str]:
        """Topic -> payload of every state value now."""
        return state_messages(self.c, self.topics, now=self.clock.now(), stale_after_s=self.stale_after_s)

    def discovery_messages(self) -> dict[str, str]:
        """Discovery topic -> config JSON for each charger read at least once, and each meter."""
        out: dict[str, str] = {}
        snap = self.c.published().snapshot
        for cid in self.c.charger_ids:
            reading = snap.chargers.get(cid)
            if reading is None or reading.state is None:
                continue  # the device block needs the box's own data
            ceiling = round(self._ceiling_a(reading), 1)
            key = (reading.state.info, ceiling)
            cached = self._discovery_cache.get(cid)
            if cached is None or cached[0] != key:
                configs = charger_configs(
                    self.topics,
                    cid,
                    commands=self.commands,
                    info=reading.state.info,
                    ceiling_a=ceiling,
                    modes=self.c.available_modes,
                )
                cached = (key, {k: json.dumps(v, separators=(",", ":")) for k, v in configs.items()})
                self._discovery_cache[cid] = cached
            out |= cached[1]
        for mid in self.meter_ids:
            out |= {
                k: json.dumps(v, separators=(",", ":")) for k, v in meter_configs(self.topics, mid).items()
            }
        return out

    def _config_topics(self) -> list[str]:
        return all_config_topics(self.topics, self.c.charger_ids, self.meter_ids, commands=self.commands)

    # -- commands in ------------------------------------------------------

    async def _listener(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = message.topic.value
            payload = message.payload
            data = payload if isinstance(payload, bytes) else str(payload or "").encode()
            if topic == self.topics.announced:
                await self._remove_stale(client, data)
            elif self.commands and topic.endswith("/set"):
                await self._command(client, topic, data, retained=bool(message.retain))

    async def _remove_stale(self, client: aiomqtt.Client, data: bytes) -> None:
        try:
            announced = json.loads(data) if data else []
        except ValueError:
            announced = []
        if not isinstance(announced, list):
            return
        for topic in stale_topics(announced, self._config_topics(), self.topics.discovery_prefix):
            log.info("MQTT: removing %s (no longer configured)", topic)
            await client.publish(topic, b"", qos=1, retain=True, timeout=self.settings.timeout_s)
            self.stats.published += 1

    async def _command(self, client: aiomqtt.Client, topic: str, data: bytes, *, retained: bool) -> None:
        rest = topic[len(self.topics.prefix) + 1 :].split("/")
        if len(rest) != 3:
            return
        cid, what, _set = rest
        reply = await self.execute(cid, what, data, retained=retained)
        await client.publish(
            self.topics.reply(cid, what),
            json.dumps(reply, separators=(",", ":")),
            qos=1,
            retain=False,
            timeout=self.settings.timeout_s,
        )
        self.stats.published += 1

    async def execute(
        self, charger_id: str, what: str, payload: bytes, *, retained: bool = False
    ) -> dict[str, Any]:
        """Run one command; the reply as published: the RPC reply's result, or ``success: false``
        with the RPC error object."""
        self.stats.commands += 1
        shown = payload[:64].decode("utf-8", "replace")
        try:
            if retained:
                raise CommandError(
                    INVALID_PARAMS, "retained commands are ignored (publish commands without the retain flag)"
                )
            method, params = command_call(what, payload, charger_id)
        except CommandError as exc:
            log.info("MQTT: %s/%s %r refused: %s", charger_id, what, shown, exc.message)
            return self._error(what, {"code": exc.code, "message": exc.message})
        token = CALLER.set("mqtt")  # overrides from here say "mqtt <method>"
        try:
            reply = await self._dispatcher.call(method, params, authorized=True)
        finally:
            CALLER.reset(token)
        if "error" in reply:
            log.info("MQTT: %s/%s %r: %s", charger_id, what, shown, reply["error"].get("message"))
            return self._error(what, reply["error"])
        result: dict[str, Any] = reply["result"]
        data = result.get("data")
        said = data.get("message") or data.get("status") if isinstance(data, dict) else None
        log.info("MQTT: %s/%s %r: %s", charger_id, what, shown, said or "ok")
        return {"command": what, **result}

    def _error(self, what: str, error: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "command": what,
            "success": False,
            "error": dict(error),
            "timestamp": iso_utc(self.clock.wall()),
        }


async def start_bridge(
    controller: ControllerAPI,
    settings: MqttConfig,
    *,
    stale_after_s: float,
    ceiling_a: Callable[[ChargerReading], float],
    meter_ids: Sequence[str] = (),
) -> MqttBridge:
    """Build and start a bridge (the broker may be down: it keeps trying)."""
    bridge = MqttBridge(
        controller, settings, stale_after_s=stale_after_s, ceiling_a=ceiling_a, meter_ids=meter_ids
    )
    await bridge.start()
    return bridge
