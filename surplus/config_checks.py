"""Checks across keys: what one setting's own limits cannot say (ids, buses, circuits, MQTT).

Each raises :class:`~surplus.config_schema.ConfigError` naming the key and its line.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

from .checks import fmt
from .config_model import (
    ID_PATTERN,
    SINGLE_BUS_ID,
    BusEntry,
    BusSection,
    ChargerEntry,
    CircuitEntry,
    Config,
    MeterEntry,
    MqttConfig,
    is_loopback,
)
from .config_schema import ConfigError, Raw, Where
from .mqtt_client import ca_file_problem
from .options import did_you_mean
from .types import MIN_CURRENT_A

# --- checks across keys ----------------------------------------------------------------------------


def check_config(config: Config, where: Where) -> None:
    def err(key: str, message: str) -> ConfigError:
        line = where.lines.get(key)
        return where.error(Raw(None, line, where.from_env.get(key)), key, message)

    if not config.chargers:
        raise err("chargers", "at least one charger is needed")
    groups: tuple[tuple[str, tuple[ChargerEntry | MeterEntry | CircuitEntry | BusEntry, ...]], ...] = (
        ("chargers", config.chargers),
        ("meters", config.meters),
        ("circuits", config.circuits),
        ("buses", config.buses),
    )
    for kind, entries in groups:
        seen: dict[str, int] = {}
        for i, entry in enumerate(entries):
            key = f"{kind}[{i}].id"
            if not ID_PATTERN.match(entry.id):
                raise err(key, f"{entry.id!r} must be 1-32 letters, digits, '_' or '-'")
            if entry.id in seen:
                raise err(key, f"duplicate id {entry.id!r} (also {kind}[{seen[entry.id]}])")
            seen[entry.id] = i
    _check_circuits(config, err)
    c = config.control
    if c.stale_after_s <= c.tick_s:
        raise err(
            "control.stale_after_s",
            f"{fmt(c.stale_after_s, 's')} must be longer than tick_s ({fmt(c.tick_s, 's')})",
        )
    if c.box_fallback_a is not None and 1 < c.box_fallback_a < MIN_CURRENT_A:
        raise err(
            "control.box_fallback_a",
            f"{c.box_fallback_a} A is neither 1 (pause) nor a charging current of {MIN_CURRENT_A:g}-32 A",
        )
    if c.full_read_every_s < c.tick_s:
        raise err(
            "control.full_read_every_s",
            f"{fmt(c.full_read_every_s, 's')} is shorter than tick_s ({fmt(c.tick_s, 's')})",
        )
    _check_buses(config, where, err)
    port = config.bus.port
    for key, p in (("bus.port", port), *((f"buses[{i}].port", b.port) for i, b in enumerate(config.buses))):
        if p.startswith("tcp://"):
            m = re.fullmatch(r"tcp://([^:/]+):(\d{1,5})", p)
            if m is None or not 0 < int(m.group(2)) < 65536:
                raise err(key, f"{p!r} is not tcp://host:port")
    rpc = config.rpc
    if not is_loopback(rpc.host) and not rpc.token:
        raise err(
            "rpc.host",
            f"{rpc.host} reaches beyond this machine: set rpc.token (or RPC_TOKEN) so writes need it,"
            " or bind 127.0.0.1",
        )
    if config.mqtt is not None:
        _check_mqtt(config.mqtt, err)
        for i, ch in enumerate(config.chargers):
            if ch.id in MQTT_RESERVED_IDS:
                raise err(f"chargers[{i}].id", f"{ch.id!r} is taken by the MQTT topics; choose another id")
    sim_ids = config.simulator.device_ids
    if not sim_ids:
        raise err("simulator.device_ids", "at least one device id is needed")
    if len(set(sim_ids)) != len(sim_ids):
        raise err("simulator.device_ids", "duplicate device ids")
    if port == "sim" and not config.buses:
        for i, ch in enumerate(config.chargers):
            probed = (ch.device_id,) if ch.device_id is not None else (50, 1)
            if not set(probed) & set(sim_ids):
                raise err(
                    f"chargers[{i}].device_id",
                    f"device {probed[0]} is not simulated (simulator.device_ids: {list(sim_ids)})",
                )


def _check_buses(config: Config, where: Where, err: Callable[[str, str], ConfigError]) -> None:
    """``buses:`` replaces ``bus:``; each charger names a line that exists, or is on the only one."""
    ids = [b.id for b in config.buses]
    if config.buses and "bus" in where.lines:
        raise err("buses", "use either bus: (one line) or buses: (several), not both")
    for i, ch in enumerate(config.chargers):
        if ch.bus is not None and ch.bus not in ids:
            known = ", ".join(ids) if ids else "none are configured (the single bus: serves every charger)"
            raise err(
                f"chargers[{i}].bus", f"unknown bus {ch.bus!r}{did_you_mean(ch.bus, ids)}; buses: {known}"
            )
        if ch.bus is None and len(ids) > 1:
            raise err(
                f"chargers[{i}]",
                f"bus: missing; with several buses ({', '.join(ids)}) each charger names its own",
            )
    seen: dict[tuple[str, int], int] = {}
    for i, ch in enumerate(config.chargers):
        line, device = charger_bus(config, ch), ch.device_id
        if device is None:  # probed at start
            continue
        if (line, device) in seen:
            raise err(
                f"chargers[{i}].device_id",
                f"device {device} is already chargers[{seen[line, device]}] on the same line",
            )
        seen[line, device] = i


def charger_bus(config: Config, charger: ChargerEntry) -> str:
    """The id of the line ``charger`` is on."""
    if charger.bus is not None:
        return charger.bus
    return config.buses[0].id if config.buses else SINGLE_BUS_ID


def bus_sections(config: Config) -> tuple[BusEntry, ...]:
    """Every line: the ``buses:`` entries, or the single ``bus:`` (id "bus")."""
    if config.buses:
        return config.buses
    fields = {f.name: getattr(config.bus, f.name) for f in dataclasses.fields(BusSection)}
    return (BusEntry(id=SINGLE_BUS_ID, **fields),)


def _check_circuits(config: Config, err: Callable[[str, str], ConfigError]) -> None:
    """Parents that exist, no loops, chargers naming a circuit that exists, rotations of L1..L3.

    A circuit whose limit is above its parent's is allowed: the parent's limit binds.
    """
    by_id = {c.id: c for c in config.circuits}
    known = ", ".join(by_id) or "none are configured"
    for i, c in enumerate(config.circuits):
        if c.parent is not None and c.parent not in by_id:
            raise err(
                f"circuits[{i}].parent",
                f"unknown circuit {c.parent!r}{did_you_mean(c.parent, list(by_id))}; circuits: {known}",
            )
    for i, c in enumerate(config.circuits):
        chain = [c.id]
        parent = c.parent
        while parent is not None:
            chain.append(parent)
            if parent == c.id:
                raise err(f"circuits[{i}].parent", f"circuits loop: {' -> '.join(chain)}")
            parent = by_id[parent].parent
            if len(chain) > len(by_id) + 1:  # a loop above this circuit: reported at its own entry
                break
    meter_ids = [m.id for m in config.meters]
    for i, c in enumerate(config.circuits):
        if c.meter is not None and c.meter not in meter_ids:
            raise err(
                f"circuits[{i}].meter",
                f"unknown meter {c.meter!r}{did_you_mean(c.meter, meter_ids)}; "
                f"meters: {', '.join(meter_ids) or 'none are configured'}",
            )
        if c.meter is None and c.meter_lost_load_a is not None:
            raise err(
                f"circuits[{i}].meter_lost_load_a", "only means something with a meter: add circuits[].meter"
            )
    named = {c.meter for c in config.circuits}
    for i, m in enumerate(config.meters):
        if not m.grid and m.id not in named:
            raise err(
                f"meters[{i}].grid",
                "false, but no circuit names this meter (circuits[].meter): it would measure nothing",
            )
    roots = [c.id for c in config.circuits if c.parent is None]
    for i, ch in enumerate(config.chargers):
        rotation = ch.phase_rotation
        if sorted(rotation) != ["L1", "L2", "L3"]:
            raise err(
                f"chargers[{i}].phase_rotation",
                f"{list(rotation)} must name L1, L2 and L3 once each (the grid phases of the box's L1, L2, L3)",
            )
        if ch.circuit is not None and ch.circuit not in by_id:
            raise err(
                f"chargers[{i}].circuit",
                f"unknown circuit {ch.circuit!r}{did_you_mean(ch.circuit, list(by_id))}; circuits: {known}",
            )
        if ch.circuit is None and len(roots) > 1:
            raise err(
                f"chargers[{i}]",
                f"circuit: missing; with several root circuits ({', '.join(roots)}) each charger names its own",
            )


#: ``<prefix>/meters/...`` and ``<prefix>/bridge/...`` are the bridge's own topics.
MQTT_RESERVED_IDS = ("meters", "bridge")


def _check_topic(value: str, key: str, err: Callable[[str, str], ConfigError]) -> None:
    if any(c in value for c in "+#\0") or value.startswith("/") or value.endswith("/") or "//" in value:
        raise err(key, f"{value!r} must be a plain topic: no '+', '#', empty levels or leading/trailing '/'")
    if value.startswith("$"):
        raise err(key, f"{value!r}: topics starting with '$' are the broker's own")


def _check_mqtt(m: MqttConfig, err: Callable[[str, str], ConfigError]) -> None:
    _check_topic(m.topic_prefix, "mqtt.topic_prefix", err)
    if m.discovery_prefix is not None:
        _check_topic(m.discovery_prefix, "mqtt.discovery_prefix", err)
        if m.discovery_prefix == m.topic_prefix:
            raise err("mqtt.discovery_prefix", "must differ from topic_prefix")
    if m.password is not None and m.username is None:
        raise err("mqtt.password", "set username too")
    if m.ca_file is not None and not m.tls:
        raise err("mqtt.ca_file", "set tls: true too (a CA file is only used for TLS)")
    if m.ca_file is not None and (problem := ca_file_problem(m.ca_file)) is not None:
        raise err("mqtt.ca_file", problem)
    if m.reconnect_max_s < m.reconnect_min_s:
        raise err(
            "mqtt.reconnect_max_s",
            f"{fmt(m.reconnect_max_s, 's')} is shorter than reconnect_min_s ({fmt(m.reconnect_min_s, 's')})",
        )
    if any(c in m.client_id for c in "+#/"):
        raise err("mqtt.client_id", f"{m.client_id!r} must not contain '+', '#' or '/'")
