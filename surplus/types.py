"""Data that crosses module boundaries: frozen, slotted, keyword-only.

Units are in the field names (``_a`` amperes, ``_v`` volts, ``_w`` watts,
``_wh`` watt-hours, ``_s`` seconds, ``_c`` degrees Celsius). Grid power is
positive for import and negative for export. Times (``*_at_s``) are readings of
the injected :class:`surplus.clock.Clock` (monotonic seconds).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

_FROZEN = {"frozen": True, "slots": True, "kw_only": True}

#: The IEC 61851 minimum charging current.
MIN_CURRENT_A = 6.0
#: The AMTRON's absolute maximum.
MAX_CURRENT_A = 32.0
#: ACTIVE_ERROR_CODE after the heartbeat was missed: "energy manager unavailable".
ERROR_EM_UNAVAILABLE = 200
#: The soft-pause band of CHARGING_CURRENT_EM: the EVSE signals 0 A but stays released
#: (0 itself means "no limit"). The AMTRON's constants live here; the simulator keeps its
#: own copy on purpose, so a wrong constant here cannot agree with itself in the tests.
SOFT_PAUSE_MIN_A = 0.01
SOFT_PAUSE_MAX_A = 5.99


class EvseState(enum.IntEnum):
    """EVSE_STATE (0x0100) values."""

    NOT_INITIALIZED = 0
    IDLE = 1
    CONNECTED = 2
    PRECONDITIONS = 3
    READY = 4
    CHARGING = 5
    ERROR = 6
    SERVICE = 7


@dataclass(**_FROZEN)
class DeviceInfo:
    """General information block (0x0000), read once per connection."""

    layout_version: int
    firmware_version: str
    serial_number: str
    article_number: str
    device_id: int

    @property
    def layout_text(self) -> str:
        """Layout version as ``"1.0.3"``."""
        v = self.layout_version
        return f"{v >> 8}.{(v >> 4) & 0xF}.{v & 0xF}"


@dataclass(**_FROZEN)
class ChargerConfig:
    """Installer configuration (0x0300 block), read-only for the master."""

    downgrade_current_a: float
    max_current_house_a: float
    max_current_evse_a: float
    phase_switching_mode: int
    phase_options_hw: int
    cable_lock_setting: bool
    master_lost_fallback_current_a: int
    grid_imbalance: bool
    grid_imbalance_threshold_a: int
    grid_phases_connected: int
    authorization_enabled: bool
    solar_min_current_a: int
    phase_switching_pause_s: int


#: Layout from which the box has a heartbeat-loss fallback (0x030E); older boxes go to error 200.
FALLBACK_SINCE_LAYOUT = 0x0102


def current_text(amps: float) -> str:
    """A setpoint as it was set, for people: "10.0", "7.3", "7.35" (``pv`` moves in 0.05 A on
    three phases), to 2 decimals with a trailing 0 dropped."""
    text = f"{round(amps, 2) + 0.0:.2f}"  # + 0.0: no "-0.00"
    return text[:-1] if text.endswith("0") else text


def box_fallback_risk(info: DeviceInfo, config: ChargerConfig) -> str | None:
    """Why the box would go on charging by itself if surplus went silent (None: it would not).

    Fallback 0 (the spec: "fallback disabled, the EVSE keeps the last master values")
    leaves a car charging at the last current, from the grid too, until someone
    notices. 1 pauses, 6..32 is a current the installer chose on purpose.
    """
    if info.layout_version < FALLBACK_SINCE_LAYOUT or config.master_lost_fallback_current_a != 0:
        return None
    return (
        "the box's heartbeat-loss fallback (0x030E) is 0: if surplus stops, a charging car goes on "
        "at the last current, also from the grid; set it to 1 (pause) with the configuration tool "
        "or with control.box_fallback_a: 1"
    )


@dataclass(**_FROZEN)
class Capabilities:
    """What the device can do, derived from its own registers, never assumed."""

    #: PHASE_OPTIONS_HW == 2: the box can switch 1p/3p via REQUESTED_PHASES.
    phase_switching: bool
    #: Highest current the device itself will signal (MAX_CURRENT_EVSE).
    max_current_a: float
    #: Phases wired to the box (1 or 3).
    grid_phases: int
    #: Layout <= 1.0.2 rejects exactly 6.0 A; the driver writes 6.01 instead.
    exact_6a_rejected: bool
    #: The box's own pause during a phase switch (PHASE_SWITCHING_PAUSE).
    phase_switch_pause_s: float


def _frozen_map() -> Mapping[str, object]:
    return MappingProxyType({})


class ReadGroup(enum.StrEnum):
    """How often a part of the box is read: each value's age is its group's.

    ``measurements`` every tick (EVSE and CP state, currents, voltages, power, errors);
    ``control`` every few seconds and right after every write (what the writes change:
    release, EM current, phases, lock; the session, the temperature, the energy counters);
    ``configuration`` on each full read (identity and installer settings).
    """

    MEASUREMENTS = "measurements"
    CONTROL = "control"
    CONFIGURATION = "configuration"


@dataclass(**_FROZEN)
class ChargerState:
    """A read of a charger: the measurements of this tick, the rest as last read.

    ``read_at_s`` is when the measurements were read; ``read_at_by_group`` says when
    each :class:`ReadGroup` was (a group missing from it was read with the measurements).
    """

    charger_id: str
    read_at_s: float
    info: DeviceInfo
    config: ChargerConfig
    capabilities: Capabilities
    evse_state: int
    cp_state: int
    authorization_status: int
    downgrade_status: int
    phase_rotation: int
    signaled_current_a: float
    #: Read back from CHARGING_CURRENT_EM (0 = "no limit" on the device!).
    current_limit_a: float
    current_l1_a: float
    current_l2_a: float
    current_l3_a: float
    voltage_l1_v: float
    voltage_l2_v: float
    voltage_l3_v: float
    power_l1_w: float
    power_l2_w: float
    power_l3_w: float
    power_total_w: float
    temperature_c: float
    session_max_current_a: float
    session_energy_wh: float
    session_duration_s: int
    detected_phases: int
    energy_total_wh: float
    sessions_total: int
    cable_lock_status: int
    solar_charging_mode: int
    #: REQUESTED_PHASES register value: 0 = all phases, 1 = one phase.
    requested_phases: int
    charging_release: bool
    locked: bool
    error_code: int
    master_lost_fallback: bool
    #: SWITCHED_PHASES register value: 0 = all phases, 1 = one phase.
    switched_phases: int
    read_at_by_group: Mapping[ReadGroup, float] = field(default_factory=_frozen_map)  # type: ignore[arg-type]

    def read_at(self, group: ReadGroup) -> float:
        """When ``group``'s registers were read."""
        return self.read_at_by_group.get(group, self.read_at_s)

    @property
    def vehicle_connected(self) -> bool:
        return self.evse_state in (
            EvseState.CONNECTED,
            EvseState.PRECONDITIONS,
            EvseState.READY,
            EvseState.CHARGING,
        )

    @property
    def charging(self) -> bool:
        return self.evse_state == EvseState.CHARGING

    @property
    def has_error(self) -> bool:
        """The box reports an error (EVSE state 6, an error code, or the master-lost fallback)."""
        return self.evse_state == EvseState.ERROR or self.error_code != 0 or self.master_lost_fallback

    @property
    def em_lost(self) -> bool:
        """The box has lost its energy manager (missed heartbeat): it needs the recovery writes."""
        return self.error_code == ERROR_EM_UNAVAILABLE or self.master_lost_fallback

    @property
    def active_phases(self) -> int:
        """Phases the box uses now (1 or 3)."""
        return 1 if self.switched_phases == 1 or self.capabilities.grid_phases == 1 else 3


@dataclass(**_FROZEN)
class ChargerReading:
    """A charger as the snapshot sees it: the last good state and how old it is."""

    charger_id: str
    state: ChargerState | None
    age_s: float = math.inf
    connected: bool = False
    error: str | None = None


@dataclass(**_FROZEN)
class MeterReading:
    """One grid-meter reading. Positive grid power = import."""

    meter_id: str
    read_at_s: float
    grid_power_w: float
    pv_power_w: float | None = None
    house_power_w: float | None = None
    #: A home battery's power: positive while it charges, negative while it discharges.
    battery_power_w: float | None = None
    #: A home battery's state of charge in percent (0..100), where the meter reports it.
    battery_soc_pct: float | None = None
    #: The current on each grid phase (L1, L2, L3) in A, where the meter measures it: a
    #: circuit's meter (``circuits[].meter``) gives what every load on the circuit draws.
    phase_currents_a: tuple[float, float, float] | None = None
    #: False for a meter that only measures a circuit (``meters[].grid: false``): it is not
    #: part of the grid power. Set by the loop.
    grid: bool = True
    #: Filled in by the loop when the reading enters a snapshot.
    age_s: float = 0.0
    error: str | None = None


@dataclass(**_FROZEN)
class Snapshot:
    """Everything one tick knows, taken at ``at_s``."""

    at_s: float
    chargers: Mapping[str, ChargerReading] = field(default_factory=_frozen_map)  # type: ignore[arg-type]
    meters: Mapping[str, MeterReading] = field(default_factory=_frozen_map)  # type: ignore[arg-type]
    #: Sum of the grid meters' power (a circuit's own meter, ``grid=False``, is not one);
    #: None unless every one is fresh. Several meters add up (e.g. two feeds); a partial
    #: sum would understate the import, so one stale or failed meter makes the total
    #: unknown. (Computed once.)
    grid_power_w: float | None = field(init=False, compare=False)

    def __post_init__(self) -> None:
        total: float | None = None
        if self.meters:  # this runs every tick: no work without meters
            grid = [m for m in self.meters.values() if m.grid]
            if grid and all(m.error is None for m in grid):
                total = sum(m.grid_power_w for m in grid)
        object.__setattr__(self, "grid_power_w", total)


class PauseKind(enum.StrEnum):
    """How a pause is carried out on the AMTRON."""

    #: CHARGING_RELEASE_EM = 0: relays open ("stopCharging").
    RELEASE = "release"
    #: CHARGING_CURRENT_EM = the soft-pause value (0.01-5.99 A, never 0): the
    #: EVSE signals 0 A but stays released ("pauseCharging").
    SOFT = "soft"


class Source(enum.StrEnum):
    """Who asked for a decision."""

    STRATEGY = "strategy"
    OVERRIDE = "override"
    FALLBACK = "fallback"
    SHUTDOWN = "shutdown"


@dataclass(**_FROZEN)
class Decision:
    """What someone wants a charger to do; the governor decides what is sent.

    ``charge=False`` means pause. ``current_a`` is the wanted current while
    charging (None keeps the present one). ``phases`` is 1 or 3 (None: no
    change). ``lock`` locks or unlocks the EVSE (None: no change).
    """

    charger_id: str
    source: Source
    charge: bool
    current_a: float | None = None
    phases: int | None = None
    lock: bool | None = None
    #: How to pause when ``charge`` is False (None: the configured default).
    pause_kind: PauseKind | None = None
    reason: str = ""

    #: For an override laid over a strategy's decision: which parts the person set
    #: ("charge", "phases", "lock"). Empty: the whole decision is the person's.
    person_parts: frozenset[str] = frozenset()

    #: The strategy's own numbers behind the decision, as (name, value) pairs; the name ends
    #: in its unit, as in Prometheus (pv: ``surplus_watts``, ``grid_meter_lag_seconds``).
    #: Exported as ``surplus_strategy_<name>`` and in ``getDecision``.
    figures: tuple[tuple[str, float], ...] = ()

    @property
    def by_person(self) -> bool:
        return self.source is Source.OVERRIDE

    def person_decides(self, part: str) -> bool:
        """A person chose this part ("charge", "phases" or "lock"), so rules that bind strategies give way."""
        return self.by_person and (not self.person_parts or part in self.person_parts)


@dataclass(**_FROZEN)
class Command:
    """What the governor allows the driver to write. None fields are left alone.

    ``current_a`` is the exact value for CHARGING_CURRENT_EM: at least 6 A, or
    the soft-pause value (0.01-5.99 A); never 0, which the AMTRON reads as
    "no limit".
    """

    charger_id: str
    current_a: float | None = None
    release: bool | None = None
    phases: int | None = None
    lock: bool | None = None
    reason: str = ""

    @property
    def empty(self) -> bool:
        return self.current_a is None and self.release is None and self.phases is None and self.lock is None


class Outcome(enum.StrEnum):
    """What the governor did with a decision."""

    #: The command may be sent now.
    APPLIED = "applied"
    #: Allowed, but a spacing rule holds it until ``retry_at_s``.
    SCHEDULED = "scheduled"
    #: Not allowed; ``reasons`` say why.
    REFUSED = "refused"
    #: The charger already does what was asked; nothing to send.
    UNCHANGED = "unchanged"


@dataclass(**_FROZEN)
class Verdict:
    """The governor's answer to one decision."""

    outcome: Outcome
    command: Command | None = None
    reasons: tuple[str, ...] = ()
    retry_at_s: float | None = None
    #: When a current was lowered to the ceiling: (asked A, allowed A, what sets the ceiling).
    clamp: tuple[float, float, str] | None = None
