"""The config's shape: every section and setting as a frozen dataclass, each default once.

:mod:`surplus.config` reads a file into these (with line numbers), applies the
environment and checks them (:mod:`surplus.config_checks`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .config_schema import (
    Spec,
    empty_mapping,
    setting,
)
from .types import MAX_CURRENT_A, MIN_CURRENT_A, SOFT_PAUSE_MAX_A, SOFT_PAUSE_MIN_A, PauseKind


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


BUILTIN_SOURCE = "<built-in defaults>"

#: Baud rates the AMTRON's configuration tool offers.
BAUDRATES = (9600, 14400, 19200, 28800, 38400, 56000, 57600)
#: Spacing the design fixes for every charger (not configurable).
CURRENT_CHANGE_INTERVAL_S = 5.0
RELEASE_TOGGLE_INTERVAL_S = 5.0
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,32}$")

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
