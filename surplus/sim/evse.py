"""The simulated AMTRON's physics: EVSE state machine, heartbeat and fallback, EV battery, energy.

Pure and deterministic: time comes from the injected :class:`~surplus.clock.Clock`;
there is no I/O. Every input first advances the physics to ``clock.now()``, event
by event (heartbeat deadline, EV accepting the current, end of a phase-switch
pause, battery full), so the energy does not depend on how often anybody polls.
The register side (words, addresses, validation, noise) is
:class:`surplus.sim.model.AmtronModel`, built on this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from surplus.clock import Clock
from surplus.modbus import registers as R

ERROR_EM_UNAVAILABLE = 200
#: Amps the notes call the IEC minimum; below it (but above 0) is a soft pause.
MIN_CURRENT_A = 6.0
MAX_EM_CURRENT_A = 32.0
AMBIENT_C = 25.0
#: Thermal time constant of the box and the rise per amp of total load.
THERMAL_TAU_S = 600.0
HEATING_C_PER_A = 0.5

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


class EvsePhysics:
    """The box's physics: EVSE state machine, heartbeat and fallback, the car, energy, heat.

    What it shows over Modbus is :class:`surplus.sim.model.AmtronModel`; this part
    knows nothing of words and addresses (its settings are keyed by register name).
    """

    def __init__(
        self,
        clock: Clock,
        *,
        profile: DeviceProfile = PROFILE_11KW,
        ev: EvProfile | None = None,
    ) -> None:
        self._clock = clock
        self.profile = profile
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
        self._signal_a: float | None = None
        self._events: tuple[float, float] | None = None
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
        return self._max_evse_setting_a()

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
        self._changed()
        self._signal_a = None
        self._events = None
        if self._signal() > 0 and not self._ev_full():
            if not self._drawing and self._accept_at is None:
                assert self._ev is not None
                self._accept_at = self._t + self._ev.accept_delay_s
        else:
            self._drawing = False
            self._accept_at = None

    def _changed(self) -> None:
        """Something changed that the register view may have cached (a subclass clears it)."""
