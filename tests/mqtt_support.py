"""A subscriber that keeps the latest message per topic, and a real stack with MQTT on."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from .mosquitto_support import Mosquitto
from .rpc_support import STACK_CONFIG, full_stack

_ids = itertools.count()


@dataclass
class Seen:
    """Messages as a subscriber saw them: the latest per topic, and every one in order."""

    latest: dict[str, bytes] = field(default_factory=dict)
    retained: dict[str, bool] = field(default_factory=dict)
    log: list[tuple[str, bytes]] = field(default_factory=list)

    def text(self, topic: str) -> str | None:
        raw = self.latest.get(topic)
        return None if raw is None else raw.decode()


@contextlib.asynccontextmanager
async def subscriber(broker: Mosquitto, topic: str = "#") -> AsyncIterator[Seen]:
    """Subscribe to ``topic`` on ``broker`` and collect what arrives until the block ends."""
    seen = Seen()
    async with aiomqtt.Client(
        broker.host,
        port=broker.port,
        identifier=f"test-sub-{next(_ids)}",
        timeout=5,
        tls_context=broker.client_tls(),
    ) as c:
        await c.subscribe(topic, qos=1)

        async def collect() -> None:
            async for m in c.messages:
                payload = m.payload if isinstance(m.payload, bytes) else str(m.payload or "").encode()
                seen.latest[m.topic.value] = payload
                seen.retained[m.topic.value] = bool(m.retain)
                seen.log.append((m.topic.value, payload))

        task = asyncio.create_task(collect())
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def retained_now(broker: Mosquitto, topic: str = "#", settle_s: float = 0.5) -> dict[str, bytes]:
    """What a new subscriber gets as retained messages (collected for ``settle_s``)."""
    async with subscriber(broker, topic) as seen:
        await asyncio.sleep(settle_s)
    return {t: p for t, p in seen.latest.items() if seen.retained.get(t) and p}


async def publish(broker: Mosquitto, topic: str, payload: str | bytes, *, retain: bool = False) -> None:
    async with aiomqtt.Client(
        broker.host,
        port=broker.port,
        identifier=f"test-pub-{next(_ids)}",
        timeout=5,
        tls_context=broker.client_tls(),
    ) as c:
        await c.publish(topic, payload, qos=1, retain=retain)


def mqtt_section(broker: Mosquitto, **extra: Any) -> str:
    lines = [
        "mqtt:",
        f"  host: {broker.host}",
        f"  port: {broker.port}",
        "  client_id: surplus-test",
        "  reconnect_min_s: 0.2",
        "  reconnect_max_s: 1",
        "  timeout_s: 2",
    ]
    lines += [f"  {k}: {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


@contextlib.asynccontextmanager
async def mqtt_stack(
    broker: Mosquitto, config: str = STACK_CONFIG, **extra: Any
) -> AsyncIterator[tuple[Any, Any, str]]:
    """:func:`full_stack` with an ``mqtt:`` section pointing at ``broker``."""
    async with full_stack(config + mqtt_section(broker, **extra)) as (stack, model, url):
        yield stack, model, url
