"""YAML config -> validated, frozen dataclasses.

Every setting has its default here, once, as a dataclass field default. Errors
are one line naming the file line and the key path::

    config/demo.yaml:12: chargers[0].limits.fuse_limit_a: 40 A is above the 32 A the AMTRON allows

Environment variables with the Node server's names (``MODBUS_PORT``,
``RPC_PORT``, ...) override the file; a bad value names the variable. Strategy
names and meter types are checked against the loaded plugins by
:func:`validate_plugins`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from .checks import fmt
from .config_schema import (
    ConfigError as ConfigError,
)
from .config_schema import (
    Raw,
    Spec,
    Where,
    build,
    convert,
    empty_mapping,
    from_python,
    parse_file,
    setting,
)
from .meter import MeterEnv, MeterFactory
from .options import OptionError, did_you_mean
from .strategy import StrategyFactory, StrategyInfo
from .types import MAX_CURRENT_A, MIN_CURRENT_A, SOFT_PAUSE_MAX_A, SOFT_PAUSE_MIN_A, PauseKind

if TYPE_CHECKING:
    from .circuits import CircuitTree
    from .governor import Limits

BUILTIN_SOURCE = "<built-in defaults>"

#: Baud rates the AMTRON's configuration tool offers.
BAUDRATES = (9600, 14400, 19200, 28800, 38400, 56000, 57600)
#: Spacing the design fixes for every charger (not configurable).
CURRENT_CHANGE_INTERVAL_S = 5.0
RELEASE_TOGGLE_INTERVAL_S = 5.0
_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")

_AMPS = {
    "unit": "A",
    "lo": MIN_CURRENT_A,
    "hi": MAX_CURRENT_A,
    "above": "the 32 A the AMTRON allows",
    "below": "the 6 A minimum charging current (IEC 61851)",
}
_FROZEN = {"frozen": True, "slots": True, "kw_only": True}


@dataclass(**_FROZEN)
class LogConfig:
    level: str = setting("info", choices=("debug", "info", "warning", "warn", "error", "critical"))
    file: str | None = None


@dataclass(**_FROZEN)
class BusSection:
    """The `bus:` section as the user writes it (ms, "none"); `runner.bus_config` turns it into
    the bus's own :class:`surplus.modbus.bus.BusConfig` (s, "N")."""

    #: "sim" (built-in simulator, RTU over TCP on 127.0.0.1), a device path, or tcp://host:port.
    port: str = "sim"
    baudrate: int = setting(57600, choices=BAUDRATES)
    bytesize: int = setting(8, choices=(8,))
    parity: str = setting("none", choices=("none", "even", "odd"))
    stopbits: int = setting(2, choices=(1, 2))
    # At most 3 s: one timed-out transaction (plus the quiet time after it) must
    # still let the heartbeat out within its 5 s deadline.
    timeout_ms: int = setting(1000, lo=50, hi=3000, unit="ms")
    retries: int = setting(3, lo=0, hi=10)
    reconnect_interval_ms: int = setting(5000, lo=100, hi=600_000, unit="ms")
    word_order: Literal["big", "little"] = "big"

    @property
    def parity_code(self) -> str:
        """Parity as pyserial/pymodbus spell it: "N", "E" or "O"."""
        return self.parity[0].upper()


@dataclass(**_FROZEN)
class BusEntry(BusSection):
    """One line of ``buses:`` (several RS485 lines or gateways): the bus settings and an id."""

    id: str = "bus"


#: The id of the single ``bus:`` (chargers name it as their ``bus`` only when there are ``buses:``).
SINGLE_BUS_ID = "bus"


@dataclass(**_FROZEN)
class HeartbeatConfig:
    enabled: bool = True
    interval_s: float = setting(
        3.0,
        gt=0,
        hi=5,
        unit="s",
        above="the 5 s limit (the AMTRON treats its energy manager as lost after 10 s without one)",
    )


@dataclass(**_FROZEN)
class ControlConfig:
    tick_s: float = setting(1.0, gt=0, hi=60, unit="s")
    #: What a charger does when its strategy or data fails: hold 6 A, or pause.
    fallback: str = setting("hold_min", choices=("hold_min", "pause"))
    stale_after_s: float = setting(10.0, gt=0, hi=3600, unit="s")
    full_read_every_s: float = setting(60.0, gt=0, hi=86400, unit="s")
    #: A meter read that takes longer is abandoned (counted as a failure); meters are read on
    #: their own cadence (every tick_s), so a slow meter never holds up a tick.
    meter_timeout_s: float = setting(3.0, gt=0, hi=60, unit="s")
    #: The house connection's fuse per phase: a meter reading beyond what it can carry
    #: (3 phases x 230 V x this, with a 50 % margin) is implausible and counts as a failed read.
    site_fuse_a: float = setting(63.0, gt=0, hi=4000, unit="A")
    #: The governor's memory (what was sent when) is kept in this file, so its rules hold
    #: across restarts and kill -9; null keeps it in memory only.
    state_path: str | None = None
    #: Opt-in: write the box's heartbeat-loss fallback (0x073A) at start and read it back
    #: (0x030E): 1 = pause when surplus goes silent, 6..32 = charge on at that many amps.
    #: null leaves the box's setting alone (a box on 0 keeps charging: see the README).
    box_fallback_a: int | None = setting(None, lo=1, hi=32, unit="A")


@dataclass(**_FROZEN)
class LimitsConfig:
    fuse_limit_a: float = setting(16.0, **_AMPS)
    cable_max_a: float = setting(32.0, **_AMPS)
    #: Written to CHARGING_CURRENT_EM for a soft pause; never 0 ("no limit").
    soft_pause_a: float = setting(1.0, lo=SOFT_PAUSE_MIN_A, hi=SOFT_PAUSE_MAX_A, unit="A")
    pause: PauseKind = PauseKind.RELEASE
    phase_switch_interval_min: float = setting(5.0, lo=1, hi=1440, unit="min")
    #: A person's switches (setPhases over JSON-RPC) too: the contactors wear.
    person_phase_switch_interval_min: float = setting(1.0, lo=1, hi=1440, unit="min")
    pause_resume_interval_min: float = setting(
        5.0, lo=5, hi=1440, unit="min", below="the 5 min the manufacturer requires between pause and resume"
    )


@dataclass(**_FROZEN)
class ChargerEntry:
    id: str = "wallbox"
    #: None: probe 50 (satellite default), then 1.
    device_id: int | None = setting(None, lo=1, hi=247)
    #: The strategy that drives this charger (a strategy plugin's name).
    mode: str = "fixed"
    #: Options per strategy name, e.g. ``{"fixed": {"current_a": 10}}``.
    strategies: Mapping[str, Mapping[str, Any]] = field(default_factory=empty_mapping)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    #: The circuit (``circuits[].id``) the box hangs under; None: under the only root circuit,
    #: or under none when there are no circuits (then only its own limits.fuse_limit_a applies).
    circuit: str | None = None
    #: Sharing the surplus: a higher number is served first.
    priority: int = setting(1, lo=0, hi=99)
    #: The line the box is on (``buses[].id``); None: the single ``bus:``, or the only one of ``buses:``.
    bus: str | None = None
    #: The grid phases the box's L1, L2 and L3 are wired to (a single-phase car loads the first).
    phase_rotation: tuple[str, ...] = setting(("L1", "L2", "L3"), choices=("L1", "L2", "L3"))


@dataclass(**_FROZEN)
class CircuitEntry:
    """One node of the circuit tree: a current limit per phase for all chargers beneath it."""

    id: str
    limit_a: float = field(metadata={"spec": Spec(gt=0, hi=4000, unit="A")})
    #: The circuit this one hangs under (None: a root, e.g. the house connection).
    parent: str | None = None
    #: A meter (``meters[].id``) measuring the current on each phase of everything on this
    #: circuit, the chargers included; its other loads then take their share of the limit.
    meter: str | None = None
    #: The other loads counted while that meter fails (default: the whole limit: the
    #: chargers beneath pause until it answers again).
    meter_lost_load_a: float | None = setting(None, lo=0, hi=4000, unit="A")


@dataclass(**_FROZEN)
class MeterEntry:
    id: str
    type: str
    options: Mapping[str, Any] = field(default_factory=empty_mapping)
    #: False: the meter measures a circuit only (named by ``circuits[].meter``), so its
    #: power is not part of the grid power the surplus is computed from.
    grid: bool = True


@dataclass(**_FROZEN)
class RpcConfig:
    host: str = "127.0.0.1"
    port: int = setting(8080, lo=0, hi=65535)
    token: str | None = None
    #: Require the token for reads too (writes always need it when a token is set).
    auth_reads: bool = False
    max_body_bytes: int = setting(65536, lo=1024, hi=16 * 1024 * 1024, unit="bytes")
    max_batch: int = setting(50, lo=1, hi=1000)
    #: Open connections at most; at the limit a new one pushes out the longest-waiting idle one.
    max_connections: int = setting(64, lo=1, hi=4096)
    #: A new connection must send its complete request headers within this.
    header_timeout_s: float = setting(5.0, gt=0, hi=300, unit="s")
    #: A request body must be complete within this.
    read_timeout_s: float = setting(10.0, gt=0, hi=300, unit="s")
    #: An idle keep-alive connection is closed after this.
    keepalive_timeout_s: float = setting(15.0, gt=0, hi=3600, unit="s")


@dataclass(**_FROZEN)
class SimulatorConfig:
    profile: str = "11kw"
    ev: bool = True
    seed: int = 1
    device_ids: tuple[int, ...] = setting((50,), lo=1, hi=247)


@dataclass(**_FROZEN)
class HistoryConfig:
    #: SQLite file of the charging-session history (its directory is created); null keeps none.
    path: str | None = None
    #: How often an open session is written: a crash loses at most this much of it.
    flush_every_s: float = setting(60.0, gt=0, hi=3600, unit="s")


@dataclass(**_FROZEN)
class PluginsConfig:
    #: Plugin names (as ``surplus plugins`` lists them) not to load.
    blocked: tuple[str, ...] = ()


@dataclass(**_FROZEN)
class MqttConfig:
    """Publishing state to an MQTT broker, taking commands, Home Assistant discovery.

    The section being there turns it on (``enabled: false`` keeps it for later)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = setting(1883, lo=1, hi=65535)
    #: TLS to the broker (port 8883 usually); ``ca_file`` is a PEM bundle (null: the system's).
    tls: bool = False
    ca_file: str | None = None
    username: str | None = None
    password: str | None = None
    client_id: str = "surplus"
    #: State topics are ``<topic_prefix>/<charger id>/<name>``.
    topic_prefix: str = "surplus"
    #: Home Assistant's discovery prefix; null: no discovery messages.
    discovery_prefix: str | None = "homeassistant"
    #: State messages are retained (a new subscriber sees the latest at once).
    retain: bool = True
    #: Take ``.../set`` commands. null: only when the broker is on loopback or a username is set.
    commands: bool | None = None
    #: A topic is published at most this often (and only when its value changed).
    interval_s: float = setting(1.0, lo=1, hi=3600, unit="s")
    #: Waiting for the broker, per step (connect, subscribe, publish).
    timeout_s: float = setting(5.0, gt=0, hi=60, unit="s")
    #: Reconnect back-off: first wait, doubling up to the longest.
    reconnect_min_s: float = setting(1.0, gt=0, hi=3600, unit="s")
    reconnect_max_s: float = setting(60.0, gt=0, hi=3600, unit="s")

    def __repr__(self) -> str:  # never show the password
        return f"MqttConfig(host={self.host!r}, port={self.port}, topic_prefix={self.topic_prefix!r})"

    @property
    def commands_on(self) -> bool:
        """Commands are taken: explicitly, or by default on a loopback broker or with a username."""
        if self.commands is not None:
            return self.commands
        return is_loopback(self.host) or self.username is not None


@dataclass(**_FROZEN)
class Config:
    log: LogConfig = field(default_factory=LogConfig)
    bus: BusSection = field(default_factory=BusSection)
    #: Several lines (serial devices, tcp:// gateways), each with its own bus owner; instead of bus:.
    buses: tuple[BusEntry, ...] = ()
    heartbeat: HeartbeatConfig = field(default_factory=HeartbeatConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    chargers: tuple[ChargerEntry, ...] = (ChargerEntry(),)
    #: The shared fuses (see surplus.circuits); none: each charger has only its own fuse limit.
    circuits: tuple[CircuitEntry, ...] = ()
    meters: tuple[MeterEntry, ...] = ()
    rpc: RpcConfig = field(default_factory=RpcConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    #: None (no ``mqtt:`` section): nothing is published.
    mqtt: MqttConfig | None = None
    #: Where it came from (a path or "<built-in defaults>").
    source: str = field(default=BUILTIN_SOURCE, compare=False, repr=False, metadata={"internal": True})
    #: Line of each key path in the file, for errors found later (plugins).
    lines: Mapping[str, int] = field(
        default_factory=empty_mapping, compare=False, repr=False, metadata={"internal": True}
    )

    def line_of(self, key: str) -> int | None:
        return self.lines.get(key)


#: What ``load_config(None)`` adds to the defaults: the demo of config/demo.yaml.
#: A test keeps the two equal.
DEMO: Mapping[str, Any] = {
    "chargers": [
        {
            "id": "wallbox",
            "strategies": {
                "fixed": {"current_a": 10, "phases": None},
                "off": {},
                "pv": {},
                "minpv": {},
                "schedule": {},
            },
        }
    ],
    "meters": [
        {
            "id": "grid",
            "type": "simulated",
            "options": {
                "pv_peak_w": 8000,
                "base_load_w": 400,
                "seed": 1,
                "start_hour": 11.0,
                "cloudiness": 0.3,
            },
        }
    ],
}

# --- environment ------------------------------------------------------------------------------------

#: Node server variable -> key path (``0`` = the first list item).
ENV_VARS: Mapping[str, tuple[str | int, ...]] = {
    "MODBUS_PORT": ("bus", "port"),
    "MODBUS_BAUDRATE": ("bus", "baudrate"),
    "MODBUS_DATABITS": ("bus", "bytesize"),
    "MODBUS_STOPBITS": ("bus", "stopbits"),
    "MODBUS_PARITY": ("bus", "parity"),
    "MODBUS_SLAVE_ID": ("chargers", 0, "device_id"),
    "MODBUS_TIMEOUT": ("bus", "timeout_ms"),
    "MODBUS_RECONNECT_INTERVAL": ("bus", "reconnect_interval_ms"),
    "MODBUS_MAX_RETRIES": ("bus", "retries"),
    "HEARTBEAT_ENABLED": ("heartbeat", "enabled"),
    "RPC_PORT": ("rpc", "port"),
    "RPC_HOST": ("rpc", "host"),
    "RPC_TOKEN": ("rpc", "token"),
    "LOG_LEVEL": ("log", "level"),
    "LOG_FILE": ("log", "file"),
}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _env_value(variable: str, text: str, tp: Any, key: str, where: Where) -> Any:
    if isinstance(tp, types.UnionType):
        (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
    raw = Raw(text, variable=variable)
    text = text.strip()
    if tp is bool:
        if text.lower() not in _TRUE + _FALSE:
            raise where.error(raw, key, f"{text!r} is not true or false")
        return text.lower() in _TRUE
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise where.error(raw, key, f"{text!r} is not a whole number") from None
    if tp is str and key in ("bus.parity", "log.level"):
        return text.lower()
    return text


def _apply_env(config: Config, environ: Mapping[str, str], where: Where) -> Config:
    def replace(obj: Any, path: tuple[str | int, ...], variable: str, text: str, key: str) -> Any:
        step, rest = path[0], path[1:]
        if isinstance(step, int):
            items = list(obj)
            items[step] = replace(items[step], rest, variable, text, key)
            return tuple(items)
        if not rest:
            f = next(f for f in dataclasses.fields(obj) if f.name == step)
            tp = typing.get_type_hints(type(obj))[step]
            value = _env_value(variable, text, tp, key, where)
            checked = convert(tp, f.metadata.get("spec", Spec()), Raw(value, variable=variable), key, where)
            return dataclasses.replace(obj, **{step: checked})
        return dataclasses.replace(obj, **{step: replace(getattr(obj, step), rest, variable, text, key)})

    for variable, path in ENV_VARS.items():
        text = environ.get(variable)
        if text is None or text == "":  # empty = unset, as with docker-compose defaults
            continue
        key = ".".join(f"[{p}]" if isinstance(p, int) else p for p in path).replace(".[", "[")
        if path[0] == "chargers" and not config.chargers:
            raise where.error(Raw(text, variable=variable), key, "there is no charger to apply it to")
        config = replace(config, path, variable, text, key)
        where.from_env[key] = variable
    return config


# --- checks across keys ----------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check(config: Config, where: Where) -> None:
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
            if not _ID.match(entry.id):
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
    if m.reconnect_max_s < m.reconnect_min_s:
        raise err(
            "mqtt.reconnect_max_s",
            f"{fmt(m.reconnect_max_s, 's')} is shorter than reconnect_min_s ({fmt(m.reconnect_min_s, 's')})",
        )
    if any(c in m.client_id for c in "+#/"):
        raise err("mqtt.client_id", f"{m.client_id!r} must not contain '+', '#' or '/'")


# --- public API ----------------------------------------------------------------------------------


def load_config(path: str | None, environ: Mapping[str, str]) -> Config:
    """Read, validate and return the config; ``path=None`` gives the demo defaults.

    :raises ConfigError: with a one-line message naming the line and key (or the
        environment variable) of the first problem.
    """
    if path is None:
        where = Where(BUILTIN_SOURCE)
        raw = from_python(DEMO)
    else:
        raw, where = parse_file(path)
    config: Config = build(Config, raw, "", where)
    config = _apply_env(config, environ, where)
    _check(config, where)
    return dataclasses.replace(config, source=where.source, lines=MappingProxyType(dict(where.lines)))


def _error_at(config: Config, key: str, message: str) -> ConfigError:
    """An error at ``key``'s line; a key that is missing from the file points at its parent's line."""
    line, parent = None, key
    while line is None and parent:
        line = config.line_of(parent)
        parent = parent.rpartition(".")[0]
    at = f"{config.source}:{line}" if line is not None else config.source
    return ConfigError(f"{at}: {key}: {message}", key=key, line=line, source=config.source)


def validate_plugins(
    config: Config,
    strategies: Mapping[str, StrategyFactory],
    meters: Mapping[str, MeterFactory],
    strategy_infos: Mapping[str, StrategyInfo] | None = None,
) -> None:
    """Check modes, strategy options and meter entries against the loaded plugins.

    Builds each configured strategy and meter once (factories do no I/O), so bad
    plugin options are reported with their line too. A mode whose strategy said
    ``needs_meter`` (``strategy_infos``; default: the built-ins') needs a meter.
    """
    from .clock import SystemClock

    if strategy_infos is None:
        from .plugins import builtin_strategy_infos

        strategy_infos = builtin_strategy_infos()
    meter_modes = {name for name, info in strategy_infos.items() if info.needs_meter}

    known_s = sorted(strategies)
    for i, ch in enumerate(config.chargers):
        if ch.mode not in strategies:
            raise _error_at(
                config,
                f"chargers[{i}].mode",
                f"unknown strategy {ch.mode!r}{did_you_mean(ch.mode, known_s)}; loaded: {', '.join(known_s)}",
            )
        if ch.mode in meter_modes and not any(m.grid for m in config.meters):
            raise _error_at(
                config,
                f"chargers[{i}].mode",
                f"{ch.mode} charges from the PV surplus and needs a grid meter: add one under meters:",
            )
        for name, options in ch.strategies.items():
            key = f"chargers[{i}].strategies.{name}"
            if name not in strategies:
                raise _error_at(
                    config,
                    key,
                    f"unknown strategy{did_you_mean(name, known_s)}; loaded: {', '.join(known_s)}",
                )
            try:
                strategies[name](options)
            except OptionError as exc:
                raise _error_at(config, f"{key}.{exc.option}", exc.message) from None
            except ValueError as exc:
                raise _error_at(config, key, str(exc)) from None
    known_m = sorted(meters)
    env = MeterEnv(clock=SystemClock())
    for i, m in enumerate(config.meters):
        if m.type not in meters:
            raise _error_at(
                config,
                f"meters[{i}].type",
                f"unknown meter type {m.type!r}{did_you_mean(m.type, known_m)}; loaded: {', '.join(known_m)}",
            )
        try:
            meters[m.type](m.id, m.options, env)
        except OptionError as exc:
            raise _error_at(config, f"meters[{i}].options.{exc.option}", exc.message) from None
        except ValueError as exc:
            raise _error_at(config, f"meters[{i}].options", str(exc)) from None


def to_circuits(config: Config) -> CircuitTree | None:
    """The circuit tree for the loop; None without ``circuits:`` (only each charger's own limits)."""
    if not config.circuits:
        return None
    from .circuits import Circuit, CircuitTree, Wiring, rotation_of

    roots = [c.id for c in config.circuits if c.parent is None]
    return CircuitTree(
        {
            c.id: Circuit(
                id=c.id,
                limit_a=c.limit_a,
                parent=c.parent,
                meter=c.meter,
                meter_lost_load_a=c.meter_lost_load_a,
            )
            for c in config.circuits
        },
        {
            ch.id: Wiring(circuit=ch.circuit or roots[0], rotation=rotation_of(ch.phase_rotation))
            for ch in config.chargers
        },
    )


def to_limits(charger: ChargerEntry, stale_after_s: float) -> Limits:
    """The governor's limits for one configured charger."""
    from .governor import Limits

    lim = charger.limits
    return Limits(
        fuse_limit_a=lim.fuse_limit_a,
        cable_max_a=lim.cable_max_a,
        min_current_a=MIN_CURRENT_A,
        soft_pause_a=lim.soft_pause_a,
        default_pause=lim.pause,
        current_change_interval_s=CURRENT_CHANGE_INTERVAL_S,
        release_toggle_interval_s=RELEASE_TOGGLE_INTERVAL_S,
        pause_resume_interval_s=lim.pause_resume_interval_min * 60.0,
        phase_switch_interval_s=lim.phase_switch_interval_min * 60.0,
        person_phase_switch_interval_s=lim.person_phase_switch_interval_min * 60.0,
        stale_after_s=stale_after_s,
    )
