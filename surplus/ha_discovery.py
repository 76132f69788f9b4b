"""Home Assistant MQTT discovery: the config messages that make the entities appear.

Pure functions of the configured chargers and meters and of what the box
reports about itself (manufacturer data from its registers, the governor's
current ceiling); :mod:`surplus.mqtt_bridge` publishes them retained under
``<discovery_prefix>/<component>/<node id>/<object id>/config``.

Ids are stable across restarts: the node id is ``<topic_prefix>_<charger id>``
and every ``unique_id`` is ``<node id>_<key>``, so renaming nothing keeps every
entity (and its history) in Home Assistant. A charger or meter that leaves the
config has its configs replaced by empty retained messages, which is how Home
Assistant removes an entity; the bridge keeps the list of what it announced in
a retained message of its own to know what to remove.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import __version__
from .types import MIN_CURRENT_A, DeviceInfo

#: ``true``/``false`` on the state topics of binary values (also what Node-RED and ioBroker like).
ON, OFF = "true", "false"
#: The bridge's availability payloads (its last will is the second).
ONLINE, OFFLINE = "online", "offline"
#: What ``health`` calls a charger (the ``status`` topic).
CHARGER_STATUSES = ("healthy", "stale", "error", "disconnected")
#: The governor's outcomes (the ``verdict`` topic).
VERDICTS = ("applied", "scheduled", "unchanged", "refused")
#: Home Assistant keeps at most 255 characters of a state.
MAX_STATE_CHARS = 255


@dataclass(frozen=True, slots=True, kw_only=True)
class Topics:
    """Where things are published."""

    prefix: str
    discovery_prefix: str

    @property
    def availability(self) -> str:
        """The bridge's own ``online``/``offline`` (retained; the last will says ``offline``)."""
        return f"{self.prefix}/availability"

    @property
    def announced(self) -> str:
        """The retained list of discovery topics this bridge has announced."""
        return f"{self.prefix}/bridge/announced"

    def charger(self, charger_id: str, name: str) -> str:
        return f"{self.prefix}/{charger_id}/{name}"

    def meter(self, meter_id: str, name: str) -> str:
        return f"{self.prefix}/meters/{meter_id}/{name}"

    def command(self, charger_id: str, what: str) -> str:
        return f"{self.prefix}/{charger_id}/{what}/set"

    def reply(self, charger_id: str, what: str) -> str:
        return f"{self.prefix}/{charger_id}/{what}/reply"

    def node(self, charger_id: str) -> str:
        return f"{self.prefix}_{charger_id}"

    def config_topic(self, component: str, node: str, key: str) -> str:
        return f"{self.discovery_prefix}/{component}/{node}/{key}/config"


@dataclass(frozen=True, slots=True, kw_only=True)
class Entity:
    """One Home Assistant entity of a charger: its platform, key (object id) and config fields."""

    component: str
    key: str
    name: str
    fields: Mapping[str, Any]
    #: Needs commands on (select, number, switch, button).
    command: bool = False
    diagnostic: bool = False


def _sensor(key: str, name: str, **fields: Any) -> Entity:
    return Entity(component="sensor", key=key, name=name, fields={"state_topic": key, **fields})


def _measure(key: str, name: str, device_class: str, unit: str, precision: int) -> Entity:
    return _sensor(
        key,
        name,
        device_class=device_class,
        state_class="measurement",
        unit_of_measurement=unit,
        suggested_display_precision=precision,
    )


def _energy(key: str, name: str) -> Entity:
    # The energy dashboard takes device_class energy with state_class total_increasing in kWh;
    # a session counter that drops to 0 at the next plug-in starts a new cycle, as HA expects.
    return _sensor(
        key,
        name,
        device_class="energy",
        state_class="total_increasing",
        unit_of_measurement="kWh",
        suggested_display_precision=2,
    )


def _binary(key: str, name: str, device_class: str) -> Entity:
    return Entity(
        component="binary_sensor",
        key=key,
        name=name,
        fields={"state_topic": key, "device_class": device_class, "payload_on": ON, "payload_off": OFF},
    )


#: Every entity of a charger; ``state_topic``/``command_topic`` values are sub-topic names here.
CHARGER_ENTITIES: tuple[Entity, ...] = (
    _measure("power", "Charging power", "power", "W", 0),
    _measure("setpoint", "Current setpoint", "current", "A", 2),
    _measure("current_l1", "Current L1", "current", "A", 1),
    _measure("current_l2", "Current L2", "current", "A", 1),
    _measure("current_l3", "Current L3", "current", "A", 1),
    _measure("temperature", "Temperature", "temperature", "°C", 1),
    _energy("session_energy", "Session energy"),
    _energy("energy_total", "Total energy"),
    _sensor("phases", "Phases", state_class="measurement", icon="mdi:sine-wave"),
    _binary("car_connected", "Car connected", "plug"),
    _binary("charging", "Charging", "battery_charging"),
    _sensor("reason", "Decision", icon="mdi:head-lightbulb-outline"),
    Entity(
        component="sensor",
        key="verdict",
        name="Governor verdict",
        fields={"state_topic": "verdict", "device_class": "enum", "options": list(VERDICTS)},
        diagnostic=True,
    ),
    Entity(
        component="sensor",
        key="status",
        name="Status",
        fields={"state_topic": "status", "device_class": "enum", "options": list(CHARGER_STATUSES)},
        diagnostic=True,
    ),
    Entity(
        component="sensor",
        key="evse_state",
        name="EVSE state",
        fields={"state_topic": "evse_state"},
        diagnostic=True,
    ),
    Entity(
        component="sensor",
        key="cp_state",
        name="CP state",
        fields={"state_topic": "cp_state"},
        diagnostic=True,
    ),
    # With commands off, the mode is only shown.
    _sensor("mode_state", "Mode", state_topic="mode", icon="mdi:solar-power"),
    Entity(
        component="select",
        key="mode",
        name="Mode",
        fields={
            "state_topic": "mode",
            "command_topic": "mode",
            "icon": "mdi:solar-power",
        },
        command=True,
    ),
    Entity(
        component="select",
        key="phases_select",
        name="Phases",
        fields={"state_topic": "phases", "command_topic": "phases", "options": ["1", "3"]},
        command=True,
    ),
    Entity(
        component="number",
        key="current",
        name="Current override",
        fields={
            "state_topic": "setpoint",
            "command_topic": "current",
            "device_class": "current",
            "unit_of_measurement": "A",
            "step": 1,
            "mode": "box",
        },
        command=True,
    ),
    Entity(
        component="switch",
        key="lock",
        name="Lock",
        fields={
            "state_topic": "lock",
            "command_topic": "lock",
            "payload_on": "ON",
            "payload_off": "OFF",
            "state_on": ON,
            "state_off": OFF,
            "icon": "mdi:lock",
        },
        command=True,
    ),
    Entity(
        component="button",
        key="clear_override",
        name="Clear override",
        fields={"command_topic": "clear_override", "payload_press": "clear", "icon": "mdi:restore"},
        command=True,
    ),
)


def charger_entities(commands: bool) -> tuple[Entity, ...]:
    """The entities a charger has: with commands, the controls replace the read-only mode sensor."""
    if commands:
        return tuple(e for e in CHARGER_ENTITIES if e.key != "mode_state")
    return tuple(e for e in CHARGER_ENTITIES if not e.command)


def _origin() -> dict[str, Any]:
    return {"name": "surplus", "sw_version": __version__}


def charger_device(topics: Topics, charger_id: str, info: DeviceInfo | None) -> dict[str, Any]:
    """The Home Assistant device of a charger, from its own registers (as far as read)."""
    device: dict[str, Any] = {
        "identifiers": [topics.node(charger_id)],
        "name": f"AMTRON {charger_id}",
        "manufacturer": "MENNEKES",
        "model": "AMTRON",
    }
    if info is not None:
        if info.article_number:
            device["model"] = f"AMTRON {info.article_number}"
        if info.firmware_version:
            device["sw_version"] = info.firmware_version
        if info.serial_number:
            device["serial_number"] = info.serial_number
        device["hw_version"] = f"Modbus layout {info.layout_text}"
    return device


def _availability(topics: Topics, own: str | None) -> dict[str, Any]:
    entries = [{"topic": topics.availability}]
    if own is not None:
        entries.append({"topic": own})
    return {
        "availability": [
            {**e, "payload_available": ONLINE, "payload_not_available": OFFLINE} for e in entries
        ],
        "availability_mode": "all",
    }


def charger_configs(
    topics: Topics,
    charger_id: str,
    *,
    commands: bool,
    info: DeviceInfo | None,
    ceiling_a: float,
    modes: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """Config topic -> config payload for every entity of one charger (``modes``: the loaded
    strategies, the mode select's options)."""
    node = topics.node(charger_id)
    device = charger_device(topics, charger_id, info)
    out: dict[str, dict[str, Any]] = {}
    for e in charger_entities(commands):
        payload: dict[str, Any] = {"name": e.name, "unique_id": f"{node}_{e.key}"}
        for name, value in e.fields.items():
            if name == "state_topic":
                value = topics.charger(charger_id, value)
            elif name == "command_topic":
                value = topics.command(charger_id, value)
            payload[name] = value
        if e.key == "mode":
            payload["options"] = list(modes)
        if e.component == "number":
            payload["min"] = MIN_CURRENT_A
            payload["max"] = max(MIN_CURRENT_A, float(ceiling_a))
        if e.diagnostic:
            payload["entity_category"] = "diagnostic"
        payload |= _availability(topics, topics.charger(charger_id, "available"))
        payload["device"] = device
        payload["origin"] = _origin()
        out[topics.config_topic(e.component, node, e.key)] = payload
    return out


def controller_device(topics: Topics) -> dict[str, Any]:
    """The device the meters' entities belong to: surplus itself."""
    return {
        "identifiers": [topics.node("controller")],
        "name": "surplus",
        "manufacturer": "surplus",
        "model": "solar-surplus controller",
        "sw_version": __version__,
    }


def meter_configs(topics: Topics, meter_id: str) -> dict[str, dict[str, Any]]:
    """Config topic -> payload for a grid meter's power and health."""
    node = topics.node("controller")
    common = {"device": controller_device(topics), "origin": _origin()}
    power = {
        "name": f"Grid power {meter_id}",
        "unique_id": f"{node}_meter_{meter_id}_power",
        "state_topic": topics.meter(meter_id, "power"),
        "device_class": "power",
        "state_class": "measurement",
        "unit_of_measurement": "W",
        "suggested_display_precision": 0,
        **_availability(topics, topics.meter(meter_id, "available")),
        **common,
    }
    health = {
        "name": f"Meter {meter_id} health",
        "unique_id": f"{node}_meter_{meter_id}_health",
        "state_topic": topics.meter(meter_id, "health"),
        "entity_category": "diagnostic",
        **_availability(topics, None),
        **common,
    }
    return {
        topics.config_topic("sensor", node, f"meter_{meter_id}_power"): power,
        topics.config_topic("sensor", node, f"meter_{meter_id}_health"): health,
    }


def all_config_topics(
    topics: Topics, charger_ids: Iterable[str], meter_ids: Iterable[str], *, commands: bool
) -> list[str]:
    """Every discovery topic of this configuration (what the bridge announces), sorted."""
    out = [
        topics.config_topic(e.component, topics.node(cid), e.key)
        for cid in charger_ids
        for e in charger_entities(commands)
    ]
    for mid in meter_ids:
        out += list(meter_configs(topics, mid))
    return sorted(out)


def stale_topics(announced: Sequence[str], current: Iterable[str], discovery_prefix: str) -> list[str]:
    """Topics announced earlier that this configuration no longer has (to be emptied).

    Only topics under ``discovery_prefix`` ending in ``/config`` count: a garbled
    record must not make the bridge empty topics that are not discovery configs.
    """
    keep = set(current)
    return sorted(
        {
            t
            for t in announced
            if isinstance(t, str)
            and t.startswith(f"{discovery_prefix}/")
            and t.endswith("/config")
            and not any(c in t for c in "+#")
            and t not in keep
        }
    )
