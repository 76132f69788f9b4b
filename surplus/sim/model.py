"""The AMTRON as physics: register map, EVSE state machine, EV battery, energy.

Pure and deterministic: time comes from the injected :class:`~surplus.clock.Clock`,
noise from ``random.Random(seed)``; there is no I/O. Every ``read``/``write``
first advances the physics to ``clock.now()``, event by event (heartbeat
deadline, EV accepting the current, end of a phase-switch pause, battery full),
so the energy does not depend on how often anybody polls.

Behaviour follows the register notes (spec rev. 2.0, layout 1.0.3, plus the
quirks real units show), strictly enough that a wrong driver gets caught:
0 A means *no limit*, 0.01-5.99 A is a soft pause, exactly 6.0 A is refused on
layout <= 1.0.2, a missing heartbeat ends in error 200 that only the sequence
heartbeat -> release -> current clears, and reads crossing a gap are refused.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from surplus.clock import Clock
from surplus.modbus import registers as R
from surplus.modbus.base import ModbusExceptionReply
from surplus.modbus.codec import Value, WordOrder, decode, encode

ILLEGAL_FUNCTION = 1
ILLEGAL_ADDRESS = 2
ILLEGAL_VALUE = 3

ERROR_EM_UNAVAILABLE = 200
#: Amps the notes call the IEC minimum; below it (but above 0) is a soft pause.
MIN_CURRENT_A = 6.0
MAX_EM_CURRENT_A = 32.0
MAX_READ_COUNT = 125
#: Resolution of the energy registers (10 Wh).
ENERGY_STEP_KWH = 0.01
#: Measurement noise is held this long (simulated seconds) before it is redrawn: often
#: enough that drivers and strategies meet noisy readings every few polls, rarely enough
#: that a day's replay (86,400 polls) does not spend its time decoding new noise.
NOISE_HOLD_S = 5.0
AMBIENT_C = 25.0
#: Thermal time constant of the box and the rise per amp of total load.
THERMAL_TAU_S = 600.0
HEATING_C_PER_A = 0.5

_FC_WRITE_SINGLE = 0x06
_FC_WRITE_MULTIPLE = 0x10
#: 0x0706 setting -> maximum EVSE current (22 kW value, 11 kW value).
_MAX_CURRENT_SETTING = {
    0: (32, 16),
    1: (25, 16),
    2: (20, 16),
    3: (16, 16),
    4: (13, 13),
    5: (10, 10),
    6: (6, 6),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceProfile:
    """What kind of box this is. Defaults: an 11 kW Compact 2.0s set up for phase switching."""

    layout_version: int = 0x0103
    firmware_version: str = "5.22.3"
    serial_number: str = "SIM0000001"
    article_number: str = "1320221"
    max_current_evse_a: float = 16.0
    max_current_house_a: float = 32.0
    downgrade_current_a: float = 16.0
    phase_options_hw: int = 2
    phase_switching_mode: int = 2
    grid_phases_connected: int = 2
    master_lost_fallback_current_a: int = 1  # set up as the README's install steps say
    phase_switching_pause_s: int = 90
    voltage_v: float = 230.0
    heartbeat_timeout_s: float = 10.0
    solar_min_current_a: int = 6
    energy_total_kwh: float = 1234.5
    sessions_total: int = 41


PROFILE_11KW = DeviceProfile()
PROFILE_22KW = DeviceProfile(
    serial_number="SIM0000022",
    article_number="1320222",
    max_current_evse_a=32.0,
    phase_options_hw=1,
    phase_switching_mode=1,
)
PROFILES = {"11kw": PROFILE_11KW, "22kw": PROFILE_22KW}


def profile_by_name(name: str) -> DeviceProfile:
    """``"11kw"`` or ``"22kw"`` -> its profile; anything else is a ValueError."""
    try:
        return PROFILES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown simulator profile {name!r} (choose {', '.join(PROFILES)})") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class EvProfile:
    """The car: battery, onboard charger, and how long it takes to start drawing."""

    capacity_wh: float = 60000.0
    soc: float = 0.4
    max_current_a: float = 16.0
    phases: int = 3
    accept_delay_s: float = 2.0
    target_soc: float = 1.0


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


class AmtronModel:
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
        self._clock = clock
        #: False: ``record`` keeps only counts, no per-write lists (a day's replay needs no write log).
        self._keep = keep_record
        self.profile = profile
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
        self._t = clock.now()
        self._energy_total_wh = profile.energy_total_kwh * 1000.0
        self._sessions = profile.sessions_total
        self._temperature_c = AMBIENT_C
        self._device_error = 0
        self._downgrade_active = False
        self._settings: dict[str, int] = {
            R.SETTING_MAX_CURRENT_EVSE.name: 0,
            R.SETTING_PHASE_ROTATION.name: 0,
            R.SETTING_CONNECTED_PHASES.name: profile.grid_phases_connected,
            R.SETTING_PHASE_USAGE_SOLAR.name: 3 if profile.phase_switching_mode == 2 else 0,
            R.SETTING_FALLBACK_CURRENT.name: profile.master_lost_fallback_current_a,
            R.SETTING_SOLAR_CHARGING_ACTIVE.name: 0,
            R.SETTING_PHASE_SWITCHING_PAUSE.name: profile.phase_switching_pause_s,
        }
        self._solar_mode = 0
        self._lock = 0
        self._ev: EvProfile | None = None
        self._soc = 0.0
        self._session_energy_wh = 0.0
        self._session_s = 0.0
        self._session_max_a = 0.0
        self._detected_phases = 0
        # One measurement per instant: several block reads in one poll see the same sample.
        self._cache: dict[str, Value] | None = None
        self._cache_t = math.nan
        self._words: dict[tuple[str, Value], list[int]] = {}
        self._static: dict[str, Value] | None = None
        self._status: dict[str, Value] | None = None
        self._signal_a: float | None = None
        self._span_words: dict[tuple[int, tuple[Value, ...]], list[int]] = {}
        self._events: tuple[float, float] | None = None
        self._spans: dict[tuple[int, int, bool], tuple[R.Register, ...] | tuple[int, str]] = {}
        self._boot()
        if ev is not None:
            self.plug_in(ev)

    def _boot(self) -> None:
        """Volatile EM state after power-up or SYSTEM_RESTART."""
        self._hb_ref = self._t  # a reboot starts the heartbeat deadline, as on real units
        self._release = 0
        self._em_current = 0.0
        self._em_written = False
        self._lost = False
        self._em_error = False
        self._recovery_step = 0
        self._requested_phases = 0
        self._switched_phases = 0
        self._switch_until: float | None = None
        self._drawing = False
        self._accept_at: float | None = None

    # --- inputs from the outside world ------------------------------------

    def plug_in(self, ev: EvProfile) -> None:
        """Connect a car: a new session starts."""
        self._advance()
        self._ev = ev
        self._soc = ev.soc
        self._sessions += 1
        self._session_energy_wh = 0.0
        self._session_s = 0.0
        self._session_max_a = 0.0
        self._detected_phases = 0
        self._refresh()

    def unplug(self) -> None:
        """Disconnect the car (session values stay readable, like on the real box)."""
        self._advance()
        self._ev = None
        if self._lost and not self._em_error:
            self._em_error = True  # fallback only covers a connected car
        self._refresh()

    def set_error(self, code: int) -> None:
        """Raise a device error (e.g. 2011); 0 clears it."""
        self._advance()
        self._device_error = code
        self._refresh()

    def set_downgrade(self, active: bool) -> None:
        """Drive the downgrade input (XG1, §14a)."""
        self._advance()
        self._downgrade_active = active
        self._refresh()

    # --- read-only views for tests ----------------------------------------

    @property
    def ev(self) -> EvProfile | None:
        return self._ev

    @property
    def evse_state(self) -> int:
        """EVSE_STATE as the box would report it now."""
        self._advance()
        return self._evse_state()

    @property
    def cp_state(self) -> int:
        self._advance()
        return self._cp_state()

    @property
    def error_code(self) -> int:
        self._advance()
        return self._error_code()

    @property
    def signaled_current_a(self) -> float:
        self._advance()
        return self._signal()

    @property
    def charging_current_a(self) -> float:
        """Amps per phase the car draws now (no measurement noise)."""
        self._advance()
        return self._draw_a()

    @property
    def charging_phases(self) -> int:
        self._advance()
        return self._draw_phases() if self._drawing else 0

    @property
    def charging_power_w(self) -> float:
        self._advance()
        return self._power_w()

    @property
    def em_current_a(self) -> float:
        return self._em_current

    @property
    def release(self) -> int:
        return self._release

    @property
    def lock(self) -> int:
        return self._lock

    @property
    def requested_phases(self) -> int:
        return self._requested_phases

    @property
    def switched_phases(self) -> int:
        return self._switched_phases

    @property
    def master_lost(self) -> bool:
        self._advance()
        return self._lost

    @property
    def heartbeat_alive(self) -> bool:
        self._advance()
        return not self._lost

    @property
    def soc(self) -> float:
        self._advance()
        return self._soc

    @property
    def energy_total_wh(self) -> float:
        self._advance()
        return self._energy_total_wh

    @property
    def session_energy_wh(self) -> float:
        self._advance()
        return self._session_energy_wh

    @property
    def session_duration_s(self) -> float:
        self._advance()
        return self._session_s

    @property
    def sessions_total(self) -> int:
        return self._sessions

    @property
    def temperature_c(self) -> float:
        self._advance()
        return self._temperature_c

    @property
    def phase_switch_pause_active(self) -> bool:
        self._advance()
        return self._switch_until is not None

    # --- derived state ----------------------------------------------------

    def _error_code(self) -> int:
        if self._device_error:
            return self._device_error
        return ERROR_EM_UNAVAILABLE if self._em_error else 0

    def _max_evse_a(self) -> float:
        return float(self._static_values()[R.MAX_CURRENT_EVSE.name])

    def _max_evse_setting_a(self) -> float:
        big, small = _MAX_CURRENT_SETTING[self._settings[R.SETTING_MAX_CURRENT_EVSE.name]]
        setting = big if self.profile.max_current_evse_a > 16 else small
        return min(self.profile.max_current_evse_a, float(setting))

    def _fallback_a(self) -> int:
        return self._settings[R.SETTING_FALLBACK_CURRENT.name]

    def _limit_a(self, requested: float) -> float:
        """Clamp by the box's own limits ("automatically limited by the configuration")."""
        limit = min(requested, self._max_evse_a(), self.profile.max_current_house_a)
        if self._downgrade_active:
            limit = min(limit, self.profile.downgrade_current_a)
        return limit

    def _signal(self) -> float:
        """The current the box signals on CP now (cached until the next change: see ``_refresh``)."""
        if self._signal_a is None:
            self._signal_a = self._compute_signal()
        return self._signal_a

    def _compute_signal(self) -> float:
        if self._ev is None or self._error_code() or self._lock or self._switch_until is not None:
            return 0.0
        if self._lost:  # the box's own fallback (otherwise there would be error 200)
            fb = self._fallback_a()
            if fb == 1:
                return 0.0  # 1: pause charging
            if fb >= MIN_CURRENT_A:
                return self._limit_a(float(fb))  # 6..32: charge at the stored current
            # 0: fallback disabled, "the EVSE keeps the last received master values"
        if not self._release or not self._em_written:
            return 0.0
        if self._em_current == 0.0:
            return self._limit_a(math.inf)  # 0 = no limitation: the device maximum
        if self._em_current < MIN_CURRENT_A:
            return 0.0  # soft pause
        return self._limit_a(self._em_current)

    def _active_phases(self) -> int:
        if self._switched_phases == 1 or self._settings[R.SETTING_CONNECTED_PHASES.name] == 0:
            return 1
        return 3

    def _draw_phases(self) -> int:
        return min(self._ev.phases, self._active_phases()) if self._ev else 0

    def _draw_a(self) -> float:
        if not self._drawing or self._ev is None:
            return 0.0
        return min(self._signal(), self._ev.max_current_a)

    def _power_w(self) -> float:
        return self._draw_a() * self._draw_phases() * self.profile.voltage_v

    def _ev_full(self) -> bool:
        return self._ev is not None and self._soc >= self._ev.target_soc

    def _evse_state(self) -> int:
        if self._error_code():
            return 6
        if self._ev is None:
            return 1
        if self._lock:
            return 2
        if self._drawing:
            return 5
        if self._switch_until is not None or self._signal() > 0:
            return 4
        return 3

    def _cp_state(self) -> int:
        if self._device_error:
            return 14
        if self._ev is None:
            return 10
        if self._drawing:
            return 28
        return 27 if self._signal() > 0 else 11

    def _authorization(self) -> int:
        if self._ev is None:
            return 0
        return 1 if self._release and not self._lock and not self._em_error else 2

    # --- time -------------------------------------------------------------

    def _hb_deadline(self) -> float | None:
        return None if self._lost else self._hb_ref + self.profile.heartbeat_timeout_s

    def _full_at(self) -> float | None:
        power = self._power_w()
        if power <= 0 or self._ev is None:
            return None
        remaining_wh = (self._ev.target_soc - self._soc) * self._ev.capacity_wh
        return self._t + max(0.0, remaining_wh) * 3600.0 / power

    def _next_events(self) -> tuple[float, float]:
        """(heartbeat deadline, earliest other event); inf when none. Cached until the next change."""
        if self._events is None:
            deadline = self._hb_deadline()
            others = [at for at in (self._accept_at, self._switch_until, self._full_at()) if at is not None]
            self._events = (math.inf if deadline is None else deadline, min(others, default=math.inf))
        return self._events

    def _advance(self) -> None:
        """Run the physics from the last update to ``clock.now()``, event by event."""
        to = self._clock.now()
        if to == self._t and self._events is not None:
            return  # already there, and nothing changed since (several reads in one poll)
        while True:
            deadline, other = self._next_events()
            # "No heartbeat for more than 10 s": a beat at exactly the deadline still counts.
            nxt = min(deadline if deadline < to else math.inf, other if other <= to else math.inf)
            if nxt == math.inf:
                self._integrate(to - self._t)
                self._t = max(self._t, to)
                return
            self._integrate(nxt - self._t)
            self._t = max(self._t, nxt)
            self._fire_events()

    def _fire_events(self) -> None:
        t = self._t
        deadline = self._hb_deadline()
        if deadline is not None and deadline <= t:
            self._lost = True
            self._recovery_step = 0
            if self._ev is None or (self._fallback_a() == 0 and not self._em_written):
                # No car, or fallback 0 with no master values to keep: "energy manager unavailable".
                self._em_error = True
        if self._switch_until is not None and self._switch_until <= t:
            self._switch_until = None
        if self._accept_at is not None and self._accept_at <= t:
            self._accept_at = None
            self._drawing = True
        full = self._full_at()
        if full is not None and full <= t + 1e-6 and self._ev is not None:  # float residue
            self._soc = self._ev.target_soc
        self._refresh()

    def _integrate(self, dt: float) -> None:
        if dt <= 0:
            return
        draw = self._draw_a()
        power = self._power_w()
        wh = power * dt / 3600.0
        self._energy_total_wh += wh
        if self._ev is not None:
            self._session_s += dt
            self._session_energy_wh += wh
            self._soc = min(self._ev.target_soc, self._soc + wh / self._ev.capacity_wh)
            if draw > 0:
                self._session_max_a = max(self._session_max_a, draw)
                self._detected_phases = max(self._detected_phases, self._draw_phases())
        target = AMBIENT_C + HEATING_C_PER_A * draw * self._draw_phases()
        self._temperature_c = target + (self._temperature_c - target) * math.exp(-dt / THERMAL_TAU_S)

    def _refresh(self) -> None:
        """After any change: start or stop the car according to the signalled current."""
        self._cache = None
        self._status = None
        self._signal_a = None
        self._events = None
        if self._signal() > 0 and not self._ev_full():
            if not self._drawing and self._accept_at is None:
                assert self._ev is not None
                self._accept_at = self._t + self._ev.accept_delay_s
        else:
            self._drawing = False
            self._accept_at = None

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
