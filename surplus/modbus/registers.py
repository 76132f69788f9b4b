"""The AMTRON Compact 2.0s / 4You 300 / Start 2.0s register map, as data.

Source: MENNEKES "Modbus RTU Specification" rev. 2.0 (register layout v1.0.3),
cross-checked against the public implementations listed in
``shared/reference/amtron-registers.csv``. Names follow the specification;
code refers to registers by these names, never by number.

The table is validated at import (:func:`validate`): no overlaps, counts match
types, names unique. A broken table fails the import, not a poll.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


class RegType(enum.Enum):
    """Wire type of a register."""

    UINT16 = "uint16"
    UINT32 = "uint32"
    FLOAT32 = "float32"
    STRING = "string"

    @property
    def fixed_count(self) -> int:
        """Registers this type occupies, or 0 when the entry gives its own count."""
        return _FIXED_COUNT[self]


_FIXED_COUNT = {RegType.UINT16: 1, RegType.UINT32: 2, RegType.FLOAT32: 2, RegType.STRING: 0}


class Access(enum.Enum):
    """What the master may do with a register."""

    R = "R"
    W = "W"
    RW = "RW"

    @property
    def readable(self) -> bool:
        return self is not Access.W

    @property
    def writable(self) -> bool:
        return self is not Access.R


class Block(enum.Enum):
    """The specification's register blocks (start address)."""

    GENERAL = 0x0000
    STATUS = 0x0100
    CONFIGURATION = 0x0300
    OUTPUT_MEASUREMENTS = 0x0500
    SETTINGS = 0x0700
    INPUT_MEASUREMENTS = 0x0900
    CHARGING_SESSION = 0x0B00
    FUNCTIONS = 0x0D00
    DIAGNOSTICS = 0x0E00
    STATISTICS = 0x1000


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Register:
    """One entry of the register map (compared and hashed by identity: each is a singleton)."""

    name: str
    address: int
    type: RegType
    count: int
    access: Access
    unit: str = ""
    enum: Mapping[int, str] = field(default_factory=dict)
    #: Lowest register layout (value of MODBUS_LAYOUT_VERSION) that has it.
    since_layout: int = 0x0100
    description: str = ""

    @property
    def end(self) -> int:
        """First address after this register."""
        return self.address + self.count

    @property
    def block(self) -> Block:
        """The specification block this register belongs to."""
        starts = sorted(Block, key=lambda b: b.value)
        found = starts[0]
        for b in starts:
            if b.value <= self.address:
                found = b
        return found

    def text(self, value: int) -> str:
        """The enum meaning of ``value``, or ``"unknown (value)"``."""
        return self.enum.get(value, f"unknown ({value})")


def _r(
    name: str,
    address: int,
    type_: RegType,
    access: str,
    *,
    unit: str = "",
    enum: Mapping[int, str] | None = None,
    count: int | None = None,
    since: int = 0x0100,
    description: str = "",
) -> Register:
    return Register(
        name=name,
        address=address,
        type=type_,
        count=count if count is not None else type_.fixed_count,
        access=Access(access),
        unit=unit,
        enum=MappingProxyType(dict(enum or {})),
        since_layout=since,
        description=description,
    )


U16, U32, F32, STR = RegType.UINT16, RegType.UINT32, RegType.FLOAT32, RegType.STRING

EVSE_STATE_TEXT = {
    0: "Not initialized",
    1: "Idle (A1)",
    2: "EV connected (B1)",
    3: "Preconditions valid, not charging",
    4: "Ready to charge (B2)",
    5: "Charging (C2)",
    6: "Error",
    7: "Service mode",
}
CP_STATE_TEXT = {
    0: "init",
    10: "A1 (no EV)",
    11: "B1 (EV connected, no PWM)",
    12: "C1 (charging requested, no PWM)",
    13: "D1 (ventilation requested, no PWM)",
    14: "E (error)",
    15: "F (error)",
    26: "A2 (no EV, PWM)",
    27: "B2 (EV connected)",
    28: "C2 (charging)",
    29: "D2 (charging with ventilation)",
}
AUTHORIZATION_TEXT = {
    0: "Not used (idle)",
    1: "Authorized (charging released)",
    2: "Not authorized",
}
DOWNGRADE_TEXT = {
    0: "Not relevant (no EV)",
    1: "Charging current not downgraded",
    2: "Charging current downgraded",
}
PHASE_ROTATION_TEXT = {0: "L1-L2-L3", 1: "L2-L3-L1", 2: "L3-L1-L2"}
ERROR_CODE_TEXT = {
    0: "No error",
    200: "Energy manager unavailable (no heartbeat)",
    2011: "EV drew more current than signalled",
    2300: "Overvoltage L1",
    2301: "Overvoltage L2",
    2302: "Overvoltage L3",
    2303: "Undervoltage L1",
    2304: "Undervoltage L2",
    2305: "Undervoltage L3",
    2323: "Connected phases mismatch",
}
ENABLED_TEXT = {0: "disabled", 1: "enabled"}

#: Value the heartbeat register expects.
HEARTBEAT_VALUE = 0x55AA
#: Value that restarts the application (only while idle).
RESTART_VALUE = 0x00BB

# --- 0x0000 general information -------------------------------------------
MODBUS_LAYOUT_VERSION = _r(
    "MODBUS_LAYOUT_VERSION",
    0x0000,
    U16,
    "R",
    enum={0x0100: "1.0.0", 0x0101: "1.0.1", 0x0102: "1.0.2", 0x0103: "1.0.3"},
    description="Register layout version (not the firmware)",
)
FIRMWARE_VERSION = _r("FIRMWARE_VERSION", 0x0001, STR, "R", count=8)
SERIAL_NUMBER = _r("SERIAL_NUMBER", 0x0013, STR, "R", count=8, since=0x0102)
ARTICLE_NUMBER = _r("ARTICLE_NUMBER", 0x001B, STR, "R", count=8, since=0x0103)

# --- 0x0100 status --------------------------------------------------------
EVSE_STATE = _r("EVSE_STATE", 0x0100, U16, "R", enum=EVSE_STATE_TEXT)
AUTHORIZATION_STATUS = _r("AUTHORIZATION_STATUS", 0x0101, U16, "R", enum=AUTHORIZATION_TEXT)
DOWNGRADE_STATUS = _r("DOWNGRADE_STATUS", 0x0102, U16, "R", enum=DOWNGRADE_TEXT)
PHASE_ROTATION_STATUS = _r("PHASE_ROTATION_STATUS", 0x0103, U16, "R", enum=PHASE_ROTATION_TEXT)
CP_STATE = _r("CP_STATE", 0x0108, U16, "R", enum=CP_STATE_TEXT, since=0x0102)
SIGNALED_CURRENT = _r("SIGNALED_CURRENT", 0x0114, F32, "R", unit="A", since=0x0103)

# --- 0x0300 configuration -------------------------------------------------
DOWNGRADE_CURRENT = _r("DOWNGRADE_CURRENT", 0x0300, F32, "R", unit="A")
CHARGING_CURRENT_EM = _r(
    "CHARGING_CURRENT_EM",
    0x0302,
    F32,
    "RW",
    unit="A",
    description="EM current limit: 0 = no limit (!), 0.01-5.99 = soft pause, >= 6 = limit",
)
MAX_CURRENT_HOUSE = _r("MAX_CURRENT_HOUSE", 0x0304, F32, "R", unit="A")
MAX_CURRENT_EVSE = _r("MAX_CURRENT_EVSE", 0x0306, F32, "R", unit="A")
PHASE_SWITCHING_MODE = _r(
    "PHASE_SWITCHING_MODE",
    0x030A,
    U16,
    "R",
    enum={0: "solar 1-phase only", 1: "solar 3-phase only", 2: "solar dynamic 1/3"},
)
PHASE_OPTIONS_HW = _r(
    "PHASE_OPTIONS_HW",
    0x030C,
    U16,
    "R",
    enum={0: "HW 1-phase only", 1: "HW 3-phase only", 2: "HW 1 or 3 phases"},
    since=0x0101,
)
CABLE_LOCK_SETTING = _r("CABLE_LOCK_SETTING", 0x030D, U16, "R", enum=ENABLED_TEXT, since=0x0102)
MASTER_LOST_FALLBACK_CURRENT = _r(
    "MASTER_LOST_FALLBACK_CURRENT",
    0x030E,
    U16,
    "R",
    unit="A",
    since=0x0102,
    description="0 = keep last master values, 1 = pause, 6-32 = continue at this current",
)
GRID_IMBALANCE = _r("GRID_IMBALANCE", 0x030F, U16, "R", enum=ENABLED_TEXT, since=0x0102)
GRID_IMBALANCE_THRESHOLD = _r("GRID_IMBALANCE_THRESHOLD", 0x0310, U16, "R", unit="A", since=0x0102)
GRID_PHASES_CONNECTED = _r(
    "GRID_PHASES_CONNECTED", 0x0311, U16, "R", enum={0: "L1 only", 2: "L1, L2, L3"}, since=0x0102
)
AUTHORIZATION_ENABLED = _r("AUTHORIZATION_ENABLED", 0x0312, U16, "R", enum=ENABLED_TEXT, since=0x0102)
SOLAR_MIN_CURRENT = _r("SOLAR_MIN_CURRENT", 0x0313, U16, "R", unit="A", since=0x0102)
PHASE_SWITCHING_PAUSE = _r("PHASE_SWITCHING_PAUSE", 0x0314, U16, "R", unit="s", since=0x0102)

# --- 0x0500 output measurements -------------------------------------------
CURRENT_L1 = _r("CURRENT_L1", 0x0500, F32, "R", unit="A")
CURRENT_L2 = _r("CURRENT_L2", 0x0502, F32, "R", unit="A")
CURRENT_L3 = _r("CURRENT_L3", 0x0504, F32, "R", unit="A")
VOLTAGE_L1 = _r("VOLTAGE_L1", 0x0506, F32, "R", unit="V")
VOLTAGE_L2 = _r("VOLTAGE_L2", 0x0508, F32, "R", unit="V")
VOLTAGE_L3 = _r("VOLTAGE_L3", 0x050A, F32, "R", unit="V")
POWER_L1 = _r("POWER_L1", 0x050C, F32, "R", unit="W")
POWER_L2 = _r("POWER_L2", 0x050E, F32, "R", unit="W")
POWER_L3 = _r("POWER_L3", 0x0510, F32, "R", unit="W")
POWER_OVERALL = _r("POWER_OVERALL", 0x0512, F32, "R", unit="W")

# --- 0x0700 settings (persistent; never written cyclically) ---------------
SETTING_MAX_CURRENT_EVSE = _r(
    "SETTING_MAX_CURRENT_EVSE",
    0x0706,
    U16,
    "RW",
    since=0x0103,
    enum={
        0: "32 A (22 kW) / 16 A (11 kW)",
        1: "25 A / 16 A",
        2: "20 A / 16 A",
        3: "16 A",
        4: "13 A",
        5: "10 A",
        6: "6 A",
    },
)
SETTING_PHASE_ROTATION = _r("SETTING_PHASE_ROTATION", 0x070A, U16, "RW", since=0x0103)
SETTING_CONNECTED_PHASES = _r(
    "SETTING_CONNECTED_PHASES", 0x0710, U16, "RW", since=0x0103, enum={0: "L1", 2: "L1, L2, L3"}
)
SETTING_PHASE_USAGE_SOLAR = _r(
    "SETTING_PHASE_USAGE_SOLAR",
    0x071A,
    U16,
    "RW",
    since=0x0103,
    enum={0: "by power class", 1: "always 1 phase", 2: "always 3 phases", 3: "dynamic"},
)
SETTING_FALLBACK_CURRENT = _r("SETTING_FALLBACK_CURRENT", 0x073A, U16, "RW", unit="A", since=0x0103)
SETTING_SOLAR_CHARGING_ACTIVE = _r(
    "SETTING_SOLAR_CHARGING_ACTIVE", 0x073C, U16, "RW", enum=ENABLED_TEXT, since=0x0103
)
SETTING_PHASE_SWITCHING_PAUSE = _r("SETTING_PHASE_SWITCHING_PAUSE", 0x078C, U16, "RW", unit="s", since=0x0103)

# --- 0x0900 input measurements --------------------------------------------
TEMPERATURE = _r("TEMPERATURE", 0x0900, F32, "R", unit="degC", since=0x0102)

# --- 0x0B00 charging session ----------------------------------------------
SESSION_MAX_CURRENT = _r("SESSION_MAX_CURRENT", 0x0B00, F32, "R", unit="A")
CHARGED_ENERGY_SESSION = _r("CHARGED_ENERGY_SESSION", 0x0B02, F32, "R", unit="kWh")
SESSION_DURATION = _r("SESSION_DURATION", 0x0B04, U32, "R", unit="s")
DETECTED_EV_PHASES = _r(
    "DETECTED_EV_PHASES",
    0x0B06,
    U16,
    "R",
    since=0x0102,
    enum={0: "not initialized", 1: "1 phase", 2: "2 phases", 3: "3 phases"},
)

# --- 0x0D00 functions -----------------------------------------------------
HEARTBEAT_EM = _r("HEARTBEAT_EM", 0x0D00, U16, "W", description="write 0x55AA at least every 10 s")
CABLE_LOCK_STATUS = _r(
    "CABLE_LOCK_STATUS",
    0x0D02,
    U16,
    "R",
    enum={0: "unknown", 1: "unlocked", 2: "locked", 3: "fixed cable"},
)
SOLAR_CHARGING_MODE = _r(
    "SOLAR_CHARGING_MODE",
    0x0D03,
    U16,
    "RW",
    enum={0: "off", 1: "fast (standard)", 2: "Sunshine", 3: "Sunshine+"},
)
REQUESTED_PHASES = _r("REQUESTED_PHASES", 0x0D04, U16, "RW", enum={0: "all available phases", 1: "1 phase"})
CHARGING_RELEASE_EM = _r("CHARGING_RELEASE_EM", 0x0D05, U16, "RW", enum={0: "not allowed", 1: "allowed"})
LOCK_EVSE = _r("LOCK_EVSE", 0x0D06, U16, "RW", enum={0: "not locked", 1: "locked"})
SYSTEM_RESTART = _r("SYSTEM_RESTART", 0x0D19, U16, "W", since=0x0103)

# --- 0x0E00 diagnostics ---------------------------------------------------
ACTIVE_ERROR_CODE = _r("ACTIVE_ERROR_CODE", 0x0E00, U16, "R", enum=ERROR_CODE_TEXT)
MASTER_LOST_FALLBACK_STATE = _r(
    "MASTER_LOST_FALLBACK_STATE", 0x0E01, U16, "R", since=0x0102, enum={0: "not active", 1: "active"}
)
SWITCHED_PHASES = _r(
    "SWITCHED_PHASES", 0x0E02, U16, "R", since=0x0102, enum={0: "all available phases", 1: "1 phase"}
)

# --- 0x1000 statistics ----------------------------------------------------
CHARGED_ENERGY_TOTAL = _r("CHARGED_ENERGY_TOTAL", 0x1000, F32, "R", unit="kWh", since=0x0102)
CHARGING_SESSIONS_TOTAL = _r("CHARGING_SESSIONS_TOTAL", 0x1002, U32, "R", since=0x0102)


REGISTERS: tuple[Register, ...] = tuple(
    sorted((v for v in dict(globals()).values() if isinstance(v, Register)), key=lambda r: r.address)
)
BY_NAME: Mapping[str, Register] = MappingProxyType({r.name: r for r in REGISTERS})


class RegisterMapError(ValueError):
    """The register table is inconsistent."""


def validate(registers: Iterable[Register]) -> None:
    """Check a register table: unique names, counts match types, no overlaps."""
    regs = sorted(registers, key=lambda r: r.address)
    names: set[str] = set()
    prev: Register | None = None
    for reg in regs:
        if reg.name in names:
            raise RegisterMapError(f"duplicate register name {reg.name}")
        names.add(reg.name)
        fixed = reg.type.fixed_count
        if fixed and reg.count != fixed:
            raise RegisterMapError(f"{reg.name}: {reg.type.name} needs {fixed} registers, not {reg.count}")
        if not fixed and reg.count < 1:
            raise RegisterMapError(f"{reg.name}: a string needs at least one register")
        if not 0 <= reg.address <= 0xFFFF or reg.end > 0x10000:
            raise RegisterMapError(f"{reg.name}: address 0x{reg.address:04X} out of range")
        if prev is not None and reg.address < prev.end:
            raise RegisterMapError(
                f"{reg.name} at 0x{reg.address:04X} overlaps {prev.name} "
                f"(0x{prev.address:04X}..0x{prev.end - 1:04X})"
            )
        prev = reg


validate(REGISTERS)
