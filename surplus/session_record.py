"""What one charging session counts: the stored record, the open session adding up to it, the box's counter.

The rules (energy from the box's lifetime counter, the sun share from the grid
meter, phases and modes) are described in :mod:`surplus.sessions`, the state
machine that starts and ends sessions; this module only counts. No I/O.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from .strategy import IdleCar, car_draws
from .types import ChargerState

log = logging.getLogger("surplus.history")

#: Ticks further apart than this are not integrated (a read outage, a restart).
MAX_GAP_S = 10.0
#: Reads of the box's counters may be this much lower than before (word order, rounding)
#: without being a new session or a reset counter.
ENERGY_SLACK_WH = 50.0
#: The most a box can charge (a 22 kW box plus margin): a faster rise of its counter is garbled.
MAX_RATE_W = 25_000.0
#: A phase carrying at least this current is in use.
PHASE_USED_A = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRecord:
    """One charging session as stored (times are Unix seconds)."""

    id: int
    charger_id: str
    started_at: float
    #: None while the session is open.
    ended_at: float | None
    #: When its values were last saved (for an open session read live: now).
    updated_at: float
    energy_wh: float
    sun_wh: float
    #: Energy charged while no fresh grid reading existed (its sun share is unknown).
    unmetered_wh: float
    max_current_a: float
    phases: tuple[int, ...]
    modes: tuple[str, ...]
    #: "unplugged", "new session on the box", "not running after restart", "charger not configured".
    end_reason: str | None = None
    #: Whether the car was found to take nothing at some time (offered 6 A or more, it drew
    #: nothing for 5 minutes: full, or waiting on a timer of its own); None while it has not
    #: drawn in this session (and for rows from before surplus recorded it).
    car_full: bool | None = None


def _finite(value: float, default: float = 0.0) -> float:
    return value if math.isfinite(value) else default


@dataclass(slots=True)
class EnergyCounter:
    """The box's lifetime energy counter, followed between its reads (one per full read, ~60 s).

    ``value_wh`` is the last reading plus the car's power integrated since, and
    never runs backwards. Without the register (old layouts read 0) it is the
    integrated power alone. A jump no charging explains (a garbled read, a new
    box) is taken as a new scale: :meth:`update` returns how far the scale
    moved, and open sessions move their start with it.
    """

    value_wh: float = 0.0
    read_wh: float | None = None
    read_at_s: float = -math.inf
    since_wh: float = 0.0
    last_at_s: float | None = None
    last_power_w: float = 0.0
    #: ``value_wh`` at the read before (a car that connected since counts from there).
    before_wh: float = 0.0

    @property
    def from_box(self) -> bool:
        return self.read_wh is not None

    def update(self, state: ChargerState, at_s: float) -> float:
        self.before_wh = self.value_wh
        power = max(0.0, _finite(state.power_total_w))
        if self.last_at_s is not None and 0 < at_s - self.last_at_s <= MAX_GAP_S:
            # Trapezoids: a car starting or stopping between two reads counts half the interval.
            self.since_wh += (self.last_power_w + power) / 2 * (at_s - self.last_at_s) / 3600.0
        self.last_at_s, self.last_power_w = at_s, power
        total = state.energy_total_wh
        shift = 0.0
        estimate = max(self.value_wh, (self.read_wh or 0.0) + self.since_wh)
        if math.isfinite(total) and total > 0 and total != self.read_wh:
            if self.read_wh is None:
                shift = total - estimate  # the first reading: onto the box's scale
                self.value_wh = total
                self.before_wh += shift
            else:
                rise = total - self.read_wh
                allowed = MAX_RATE_W * max(0.0, at_s - self.read_at_s) / 3600.0 + ENERGY_SLACK_WH
                if -ENERGY_SLACK_WH <= rise <= allowed:
                    self.value_wh = max(self.value_wh, total)
                else:
                    log.warning(
                        "the box's energy counter jumped from %.2f to %.2f kWh; counting on from there",
                        self.read_wh / 1000,
                        total / 1000,
                    )
                    shift = total - estimate
                    self.value_wh = total
                    self.before_wh += shift
            self.read_wh, self.read_at_s, self.since_wh = total, at_s, 0.0
        else:
            self.value_wh = estimate
        return shift

    def before_session(self, state: ChargerState) -> float:
        """The counter when the box's current session began (its session energy back from now)."""
        energy = state.session_energy_wh
        if self.from_box and math.isfinite(energy) and 0 <= energy <= self.value_wh:
            return self.value_wh - energy
        return self.value_wh


@dataclass(slots=True, kw_only=True)
class Live:
    """An open session in memory (loop thread only, except ``row_id``, set by the writer)."""

    charger_id: str
    started_at: float
    updated_at: float
    row_id: int | None = None
    #: The box's counter (:class:`EnergyCounter` scale) at the start; energy is what it rose by since.
    start_wh: float = 0.0
    #: ``start_wh`` is on the box's own counter (stored; a restart counts on from it).
    start_from_box: bool = False
    energy_wh: float = 0.0
    sun_wh: float = 0.0
    unmetered_wh: float = 0.0
    max_current_a: float = 0.0
    phases: set[int] = field(default_factory=set)
    modes: list[str] = field(default_factory=list)
    #: CHARGING_SESSIONS_TOTAL of the box's (latest) session in this one.
    box_sessions: int | None = None
    #: The box's session energy last read (a drop: the box began a new session).
    box_session_wh: float | None = None
    last_at_s: float | None = None
    last_power_w: float = 0.0
    last_grid_w: float | None = None
    saved_at_s: float = -math.inf
    #: Set while the car is unplugged (wall, monotonic); the session ends if it stays away REPLUG_S.
    unplugged: tuple[float, float] | None = None
    #: The car has drawn in this session; it has been found to take nothing (``idle``'s verdict).
    drew: bool = False
    full: bool = False
    idle: IdleCar = field(default_factory=IdleCar)

    def update(
        self, state: ChargerState, at_s: float, wall: float, grid_w: float | None, counter: EnergyCounter
    ) -> None:
        """Integrate the interval since the last tick (at that tick's power) for the sun share; take the counter."""
        if self.last_at_s is not None and 0 < at_s - self.last_at_s <= MAX_GAP_S:
            hours = (at_s - self.last_at_s) / 3600.0
            power = max(0.0, self.last_power_w)
            if self.last_grid_w is None:
                self.unmetered_wh += power * hours
            else:
                self.sun_wh += min(power, max(0.0, power - self.last_grid_w)) * hours
        self.last_at_s, self.last_power_w, self.last_grid_w = at_s, _finite(state.power_total_w), grid_w
        self.take(counter)
        if math.isfinite(state.session_energy_wh):
            self.box_session_wh = state.session_energy_wh
        self.updated_at = wall
        self.drew = self.drew or car_draws(state)
        self.full = self.idle.update(state, at_s) or self.full
        if state.charging:
            currents = [c for c in (state.current_l1_a, state.current_l2_a, state.current_l3_a) if c >= 0]
            self.max_current_a = max([self.max_current_a, *currents])
            used = sum(1 for c in currents if c >= PHASE_USED_A)
            if used:
                self.phases.add(used)

    def take(self, counter: EnergyCounter, *, at_wh: float | None = None) -> None:
        """Energy up to the counter's value now (or ``at_wh``); it never shrinks."""
        end = counter.value_wh if at_wh is None else at_wh
        self.energy_wh = max(self.energy_wh, end - self.start_wh)
        self.start_from_box = counter.from_box

    def record(self, *, ended_at: float | None = None, end_reason: str | None = None) -> SessionRecord:
        energy = max(0.0, self.energy_wh)
        return SessionRecord(
            id=-1 if self.row_id is None else self.row_id,
            charger_id=self.charger_id,
            started_at=self.started_at,
            ended_at=ended_at,
            updated_at=self.updated_at if ended_at is None else ended_at,
            energy_wh=energy,
            sun_wh=min(self.sun_wh, energy),
            unmetered_wh=min(self.unmetered_wh, energy),
            max_current_a=self.max_current_a,
            phases=tuple(sorted(self.phases)),
            modes=tuple(self.modes),
            end_reason=end_reason,
            car_full=self.full if self.drew or self.full else None,
        )

    @classmethod
    def from_row(cls, row: StoredRow) -> Live:
        rec = row.record
        return cls(
            charger_id=rec.charger_id,
            started_at=rec.started_at,
            updated_at=rec.updated_at,
            row_id=rec.id,
            start_wh=math.nan if row.start_wh is None else row.start_wh,
            start_from_box=row.start_wh is not None,
            energy_wh=rec.energy_wh,
            sun_wh=rec.sun_wh,
            unmetered_wh=rec.unmetered_wh,
            max_current_a=rec.max_current_a,
            phases=set(rec.phases),
            modes=list(rec.modes),
            box_sessions=row.box_sessions,
            drew=rec.car_full is not None,
            full=bool(rec.car_full),
        )


@dataclass(frozen=True, slots=True)
class StoredRow:
    """A stored row with what only the file keeps: the box's session counter and counter at its start."""

    record: SessionRecord
    box_sessions: int | None
    start_wh: float | None


@dataclass(frozen=True, slots=True)
class RowWrite:
    """One row's values, taken on the loop thread; the writer inserts or updates ``live``'s row."""

    live: Live
    values: tuple[object, ...]
    #: The row as written.
    record: SessionRecord

    @classmethod
    def of(cls, live: Live, *, ended_at: float | None = None, end_reason: str | None = None) -> RowWrite:
        r = live.record(ended_at=ended_at, end_reason=end_reason)
        values = (
            r.charger_id,
            r.started_at,
            r.ended_at,
            r.updated_at,
            r.energy_wh,
            r.sun_wh,
            r.unmetered_wh,
            r.max_current_a,
            ",".join(str(p) for p in r.phases),
            ",".join(r.modes),
            live.box_sessions,
            r.end_reason,
            live.start_wh if live.start_from_box and math.isfinite(live.start_wh) else None,
            None if r.car_full is None else int(r.car_full),
        )
        return cls(live, values, r)
