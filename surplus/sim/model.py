"""The simulated AMTRON as a Modbus device: the register map served word by word.

:class:`AmtronModel` adds the register side to the physics of
:class:`surplus.sim.evse.EvsePhysics`: spans and gaps, encoding, measurement
noise, write validation and what each write does, and a record of every write
for the tests. Pure and deterministic: noise comes from the seed; no I/O.

Behaviour follows the register notes (spec rev. 2.0, layout 1.0.3, plus the
quirks real units show), strictly enough that a wrong driver gets caught:
0 A means *no limit*, 0.01-5.99 A is a soft pause, exactly 6.0 A is refused on
layout <= 1.0.2, a missing heartbeat ends in the box's fallback or error 200 that
only the sequence heartbeat -> release -> current clears, and reads crossing a
gap are refused.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from surplus.clock import Clock
from surplus.modbus import registers as R
from surplus.modbus.base import ModbusExceptionReply
from surplus.modbus.codec import Value, WordOrder, decode, encode

from .evse import (
    ERROR_EM_UNAVAILABLE,
    MAX_EM_CURRENT_A,
    MIN_CURRENT_A,
    PROFILE_11KW,
    PROFILE_22KW,
    PROFILES,
    DeviceProfile,
    EvProfile,
    EvsePhysics,
    profile_by_name,
)

__all__ = [
    "ERROR_EM_UNAVAILABLE",
    "MIN_CURRENT_A",
    "PROFILES",
    "PROFILE_11KW",
    "PROFILE_22KW",
    "AmtronModel",
    "DeviceProfile",
    "EvProfile",
    "SimRecord",
    "WriteRecord",
    "profile_by_name",
]

ILLEGAL_FUNCTION = 1
ILLEGAL_ADDRESS = 2
ILLEGAL_VALUE = 3

MAX_READ_COUNT = 125
#: Resolution of the energy registers (10 Wh).
ENERGY_STEP_KWH = 0.01
#: Measurement noise is held this long (simulated seconds) before it is redrawn: often
#: enough that drivers and strategies meet noisy readings every few polls, rarely enough
#: that a day's replay (86,400 polls) does not spend its time decoding new noise.
NOISE_HOLD_S = 5.0
_FC_WRITE_SINGLE = 0x06
_FC_WRITE_MULTIPLE = 0x10


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteRecord:
    """One write the model received; ``exception_code`` is set when it was refused."""

    at_s: float
    register: str
    value: Value
    function_code: int
    exception_code: int | None = None


@dataclass(slots=True)
class SimRecord:
    """What a driver did to the box, for assertions in tests."""

    writes: list[WriteRecord] = field(default_factory=list)
    heartbeats: list[float] = field(default_factory=list)
    #: (at_s, amps) of every accepted CHARGING_CURRENT_EM write whose value differs from the last.
    current_changes: list[tuple[float, float]] = field(default_factory=list)
    reads: int = 0

    @property
    def worst_heartbeat_gap_s(self) -> float:
        """Largest gap between two consecutive valid heartbeats (0 with fewer than two)."""
        beats = self.heartbeats
        return max((b - a for a, b in itertools.pairwise(beats)), default=0.0)

    @property
    def current_writes(self) -> list[tuple[float, float]]:
        """(at_s, amps) of every accepted CHARGING_CURRENT_EM write."""
        return [
            (w.at_s, float(w.value))
            for w in self.writes
            if w.register == R.CHARGING_CURRENT_EM.name and w.exception_code is None
        ]

    @property
    def refused_writes(self) -> list[WriteRecord]:
        """Writes answered with a Modbus exception."""
        return [w for w in self.writes if w.exception_code is not None]


def _kwh(wh: float) -> float:
    """An energy register's reading: kWh in steps of ENERGY_STEP_KWH, like a meter chip's counter.

    (The model integrates exactly; only what it shows is stepped. Besides
    realism this keeps a fake-clock replay from encoding a new float each tick.)
    """
    steps = math.floor(wh / (ENERGY_STEP_KWH * 1000.0) + 1e-6)  # 1e-6: float residue of exact sums
    return steps / (1.0 / ENERGY_STEP_KWH)


_MASK64 = (1 << 64) - 1


def _unit_noise(n: int) -> float:
    """A fixed pseudo-random number in [-1, 1) for the integer ``n`` (splitmix64's finaliser)."""
    z = (n * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return z / 2.0**63 - 1.0


def _settings_range(name: str, value: int) -> bool:
    ok: dict[str, bool] = {
        R.SETTING_MAX_CURRENT_EVSE.name: 0 <= value <= 6,
        R.SETTING_PHASE_ROTATION.name: 0 <= value <= 2,
        R.SETTING_CONNECTED_PHASES.name: value in (0, 2),
        R.SETTING_PHASE_USAGE_SOLAR.name: 0 <= value <= 3,
        R.SETTING_FALLBACK_CURRENT.name: value in (0, 1) or 6 <= value <= 32,
        R.SETTING_SOLAR_CHARGING_ACTIVE.name: value in (0, 1),
        R.SETTING_PHASE_SWITCHING_PAUSE.name: 0 <= value <= 1200,
    }
    return ok.get(name, True)


class AmtronModel(EvsePhysics):
    """One simulated AMTRON wallbox, served word by word like the real firmware."""

    def __init__(
        self,
        clock: Clock,
        *,
        profile: DeviceProfile = PROFILE_11KW,
        seed: int = 0,
        ev: EvProfile | None = None,
        word_order: WordOrder = "big",
        keep_record: bool = True,
    ) -> None:
        #: False: ``record`` keeps only counts, no per-write lists (a day's replay needs no write log).
        self._keep = keep_record
        self.word_order: WordOrder = word_order
        self.record = SimRecord()
        self._seed = seed
        self._noise_bucket = -1
        self._noise_values: tuple[float, ...] = ()
        self._measured_key: tuple[float, int, int, int, float] | None = None
        self._measured: dict[str, Value] = {}
        self._regs = [r for r in R.REGISTERS if r.since_layout <= profile.layout_version]
        self._at: dict[int, tuple[R.Register, int]] = {}
        for reg in self._regs:
            for i in range(reg.count):
                self._at[reg.address + i] = (reg, i)
        # One measurement per instant: several block reads in one poll see the same sample.
        self._cache: dict[str, Value] | None = None
        self._cache_t = math.nan
        self._words: dict[tuple[str, Value], list[int]] = {}
        self._static: dict[str, Value] | None = None
        self._status: dict[str, Value] | None = None
        self._span_words: dict[tuple[int, tuple[Value, ...]], list[int]] = {}
        self._spans: dict[tuple[int, int, bool], tuple[R.Register, ...] | tuple[int, str]] = {}
        super().__init__(clock, profile=profile, ev=ev)

    def _changed(self) -> None:
        self._cache = None
        self._status = None

    # --- the register interface -------------------------------------------

    def _span(self, address: int, count: int, *, writing: bool) -> tuple[R.Register, ...]:
        """The whole registers covering ``address .. address+count``; exception 2 otherwise."""
        key = (address, count, writing)
        hit = self._spans.get(key)
        if hit is None:
            try:
                hit = self._find_span(address, count, writing=writing)
            except ModbusExceptionReply as exc:
                hit = (exc.code, str(exc))
            self._spans[key] = hit
        if isinstance(hit[0], int):
            raise ModbusExceptionReply(hit[0], str(hit[1]))
        return hit

    def _find_span(self, address: int, count: int, *, writing: bool) -> tuple[R.Register, ...]:
        regs: list[R.Register] = []
        a = address
        end = address + count
        while a < end:
            hit = self._at.get(a)
            if hit is None:
                raise ModbusExceptionReply(ILLEGAL_ADDRESS, f"no register at 0x{a:04X}")
            reg, offset = hit
            allowed = reg.access.writable if writing else reg.access.readable
            if not allowed:
                what = "read-only" if writing else "write-only"
                raise ModbusExceptionReply(ILLEGAL_ADDRESS, f"{reg.name} is {what}")
            if offset != 0 or reg.end > end:
                raise ModbusExceptionReply(ILLEGAL_ADDRESS, f"0x{a:04X} splits {reg.name}")
            regs.append(reg)
            a = reg.end
        return tuple(regs)

    def read(self, address: int, count: int) -> list[int]:
        """Serve ``count`` words from ``address`` (FC 0x03/0x04), as the firmware would."""
        if not 1 <= count <= MAX_READ_COUNT:
            raise ModbusExceptionReply(ILLEGAL_VALUE, f"cannot read {count} registers")
        regs = self._span(address, count, writing=False)
        self._advance()
        self.record.reads += 1
        values = self._sample()
        current = tuple(values[reg.name] for reg in regs)
        key = (address, current)
        words = self._span_words.get(key)
        if words is None:
            # Most spans (status, configuration, diagnostics) repeat their
            # values poll after poll; encode each distinct content once.
            if len(self._span_words) > 4096:
                self._span_words.clear()
            words = []
            for reg, value in zip(regs, current, strict=True):
                words.extend(self._encode(reg, value))
            self._span_words[key] = words
        return list(words)

    def values(self) -> dict[str, Value]:
        """Every readable register's value now (noise included), by name."""
        self._advance()
        return dict(self._sample())

    def _sample(self) -> dict[str, Value]:
        if self._cache is None or self._cache_t != self._t:
            self._cache = self._register_values()
            self._cache_t = self._t
        return self._cache

    def _encode(self, reg: R.Register, value: Value) -> list[int]:
        key = (reg.name, value)
        words = self._words.get(key)
        if words is None:
            if len(self._words) > 4096:
                self._words.clear()
            words = self._words[key] = encode(reg, value, self.word_order)
        return words

    def _noise(self) -> tuple[float, ...]:
        """Measurement noise, redrawn every NOISE_HOLD_S of simulated time.

        A hash of (seed, time bucket), so it does not depend on how often
        anyone polls, and a poll-heavy replay sees repeated words it can cache.
        """
        bucket = int(self._t // NOISE_HOLD_S)
        if bucket != self._noise_bucket:
            base = (self._seed * 1_000_003 + bucket) * 7
            self._noise_values = tuple(_unit_noise(base + i) for i in range(7))
            self._noise_bucket = bucket
        return self._noise_values

    def _measurements(self) -> dict[str, Value]:
        draw = self._draw_a()
        phases = self._draw_phases() if draw > 0 else 0
        grid = 3 if self._settings[R.SETTING_CONNECTED_PHASES.name] == 2 else 1
        noise = self._noise()
        temperature = round(self._temperature_c + 0.1 * noise[6], 1)
        key = (draw, phases, grid, self._noise_bucket, temperature)
        if key == self._measured_key:
            return self._measured
        out: dict[str, Value] = {}
        total = 0.0
        currents = (R.CURRENT_L1, R.CURRENT_L2, R.CURRENT_L3)
        voltages = (R.VOLTAGE_L1, R.VOLTAGE_L2, R.VOLTAGE_L3)
        powers = (R.POWER_L1, R.POWER_L2, R.POWER_L3)
        for i in range(3):
            amps = max(0.0, draw + 0.05 * noise[i]) if i < phases else 0.0
            volts = self.profile.voltage_v + noise[3 + i] if i < grid else 0.0
            out[currents[i].name] = round(amps, 2)
            out[voltages[i].name] = round(volts, 1)
            out[powers[i].name] = round(amps * volts, 1)
            total += round(amps * volts, 1)
        out[R.POWER_OVERALL.name] = round(total, 1)
        out[R.TEMPERATURE.name] = temperature
        self._measured_key, self._measured = key, out
        return out

    def _static_values(self) -> dict[str, Value]:
        """Identity and configuration: they change only on a write, so they are cached until one."""
        if self._static is None:
            p = self.profile
            s = self._settings
            self._static = {
                R.MODBUS_LAYOUT_VERSION.name: p.layout_version,
                R.FIRMWARE_VERSION.name: p.firmware_version,
                R.SERIAL_NUMBER.name: p.serial_number,
                R.ARTICLE_NUMBER.name: p.article_number,
                R.PHASE_ROTATION_STATUS.name: s[R.SETTING_PHASE_ROTATION.name],
                R.DOWNGRADE_CURRENT.name: p.downgrade_current_a,
                R.MAX_CURRENT_HOUSE.name: p.max_current_house_a,
                R.MAX_CURRENT_EVSE.name: self._max_evse_setting_a(),
                R.PHASE_SWITCHING_MODE.name: p.phase_switching_mode,
                R.PHASE_OPTIONS_HW.name: p.phase_options_hw,
                R.CABLE_LOCK_SETTING.name: 0,
                R.MASTER_LOST_FALLBACK_CURRENT.name: s[R.SETTING_FALLBACK_CURRENT.name],
                R.GRID_IMBALANCE.name: 0,
                R.GRID_IMBALANCE_THRESHOLD.name: 20,
                R.GRID_PHASES_CONNECTED.name: s[R.SETTING_CONNECTED_PHASES.name],
                R.AUTHORIZATION_ENABLED.name: 0,
                R.SOLAR_MIN_CURRENT.name: p.solar_min_current_a,
                R.PHASE_SWITCHING_PAUSE.name: s[R.SETTING_PHASE_SWITCHING_PAUSE.name],
                **s,
            }
        return self._static

    def _register_values(self) -> dict[str, Value]:
        if self._status is None:
            # What changes only with a write, an event or an input (cleared by _refresh).
            self._status = {
                **self._static_values(),
                R.EVSE_STATE.name: self._evse_state(),
                R.AUTHORIZATION_STATUS.name: self._authorization(),
                R.DOWNGRADE_STATUS.name: 0 if self._ev is None else (2 if self._downgrade_active else 1),
                R.CP_STATE.name: self._cp_state(),
                R.SIGNALED_CURRENT.name: self._signal(),
                R.CHARGING_CURRENT_EM.name: self._em_current,
                R.CABLE_LOCK_STATUS.name: 1 if self._ev is None else 2,
                R.SOLAR_CHARGING_MODE.name: self._solar_mode,
                R.REQUESTED_PHASES.name: self._requested_phases,
                R.CHARGING_RELEASE_EM.name: self._release,
                R.LOCK_EVSE.name: self._lock,
                R.ACTIVE_ERROR_CODE.name: self._error_code(),
                R.MASTER_LOST_FALLBACK_STATE.name: int(self._lost),
                R.SWITCHED_PHASES.name: self._switched_phases,
                R.CHARGING_SESSIONS_TOTAL.name: self._sessions,
            }
        values = dict(self._status)
        # What moves with time: the session and the energy counters, the measurements.
        values[R.SESSION_MAX_CURRENT.name] = round(self._session_max_a, 2)
        values[R.CHARGED_ENERGY_SESSION.name] = _kwh(self._session_energy_wh)
        values[R.SESSION_DURATION.name] = int(self._session_s)
        values[R.DETECTED_EV_PHASES.name] = self._detected_phases
        values[R.CHARGED_ENERGY_TOTAL.name] = _kwh(self._energy_total_wh)
        values.update(self._measurements())
        return values

    def write(self, address: int, values: list[int], function_code: int) -> None:
        """Apply a write (FC 0x06 one word, FC 0x10 several); all or nothing."""
        self._advance()
        try:
            if function_code not in (_FC_WRITE_SINGLE, _FC_WRITE_MULTIPLE):
                raise ModbusExceptionReply(ILLEGAL_FUNCTION, f"function code {function_code} cannot write")
            if function_code == _FC_WRITE_SINGLE and len(values) != 1:
                raise ModbusExceptionReply(ILLEGAL_VALUE, "FC 0x06 writes exactly one register")
            if not values or len(values) > 123 or any(not 0 <= v <= 0xFFFF for v in values):
                raise ModbusExceptionReply(ILLEGAL_VALUE, "bad register values")
            regs = self._span(address, len(values), writing=True)
        except ModbusExceptionReply as exc:
            self._record(
                f"0x{address:04X}", values[0] if len(values) == 1 else str(values), function_code, exc.code
            )
            raise
        decoded: list[tuple[R.Register, Value]] = []
        for reg in regs:
            lo = reg.address - address
            decoded.append((reg, decode(reg, values[lo : lo + reg.count], self.word_order)))
        for reg, value in decoded:
            try:
                self._validate(reg, value)
            except ModbusExceptionReply as exc:
                self._record(reg.name, value, function_code, exc.code)
                raise
        for reg, value in decoded:
            self._apply(reg, value)
            self._record(reg.name, value, function_code, None)
        self._refresh()

    def _record(self, name: str, value: Value, fc: int, code: int | None) -> None:
        if not self._keep:
            return
        self.record.writes.append(
            WriteRecord(at_s=self._t, register=name, value=value, function_code=fc, exception_code=code)
        )

    def _validate(self, reg: R.Register, value: Value) -> None:
        def refuse(why: str) -> ModbusExceptionReply:
            return ModbusExceptionReply(ILLEGAL_VALUE, f"{reg.name}: {why}")

        if reg is R.CHARGING_CURRENT_EM:
            amps = float(value)
            if math.isnan(amps) or not 0.0 <= amps <= MAX_EM_CURRENT_A:
                raise refuse(f"{amps} A out of 0..32")
            if amps == MIN_CURRENT_A and self.profile.layout_version <= 0x0102:
                raise refuse("exactly 6.0 A is refused by firmware <= 1.0.2")
            return
        assert isinstance(value, int)
        if reg is R.HEARTBEAT_EM and value != R.HEARTBEAT_VALUE:
            raise refuse(f"0x{value:04X} is not the heartbeat value")
        if reg is R.REQUESTED_PHASES:
            if self.profile.phase_options_hw != 2:
                raise refuse("this unit cannot switch phases")
            if value not in (0, 1):
                raise refuse(f"{value} not in 0/1")
        if reg in (R.CHARGING_RELEASE_EM, R.LOCK_EVSE) and value not in (0, 1):
            raise refuse(f"{value} not in 0/1")
        if reg is R.SOLAR_CHARGING_MODE and not 0 <= value <= 3:
            raise refuse(f"{value} not in 0..3")
        if reg is R.SYSTEM_RESTART and (value != R.RESTART_VALUE or self._ev is not None):
            raise refuse("restart needs 0xBB and an idle box")
        if not _settings_range(reg.name, value):
            raise refuse(f"{value} out of range")

    def _apply(self, reg: R.Register, value: Value) -> None:
        if reg is R.HEARTBEAT_EM:
            if self._keep:
                self.record.heartbeats.append(self._t)
            self._hb_ref = self._t
            if self._em_error:
                self._recovery_step = max(self._recovery_step, 1)
            self._lost = False
        elif reg is R.CHARGING_RELEASE_EM:
            self._release = int(value)
            if self._em_error and self._recovery_step >= 1:
                self._recovery_step = 2 if value == 1 else 1
        elif reg is R.CHARGING_CURRENT_EM:
            amps = float(value)
            changes = self.record.current_changes
            if self._keep and (not changes or changes[-1][1] != amps):
                changes.append((self._t, amps))
            self._em_current = amps
            self._em_written = True
            if self._em_error and self._recovery_step == 2 and not self._lost:
                self._em_error = False  # heartbeat, release, current: back to normal
                self._recovery_step = 0
        elif reg is R.REQUESTED_PHASES:
            self._request_phases(int(value))
        elif reg is R.LOCK_EVSE:
            self._lock = int(value)
        elif reg is R.SOLAR_CHARGING_MODE:
            self._solar_mode = int(value)
        elif reg is R.SYSTEM_RESTART:
            self._boot()
        elif reg.name in self._settings:
            self._settings[reg.name] = int(value)
            self._static = None

    def _request_phases(self, phases: int) -> None:
        if phases == self._requested_phases:
            return
        self._requested_phases = phases
        self._switched_phases = phases  # "to be used when the relay closes"
        if self._drawing or self._accept_at is not None:
            # The box runs its own CharIN pause: current to 0 (C2 -> B2), then back.
            self._switch_until = self._t + self._settings[R.SETTING_PHASE_SWITCHING_PAUSE.name]
            self._drawing = False
            self._accept_at = None
