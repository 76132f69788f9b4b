"""The session state machine: from the box's readings to charging sessions, without I/O.

A session runs from the car being connected until it is disconnected, as the
box reports it (EVSE state; the CP state while the box is in an error, so an
error 200 after a restart does not end a session). An unplug shorter than
``REPLUG_S`` does not end it: a quick replug (or a new session the box starts
without us seeing the unplug) continues the same row. Rows of one charger
never overlap in time.

What a session records:

- energy: what the box's lifetime counter (CHARGED_ENERGY_TOTAL) rose by from
  the session's start to its end. The driver reads that counter every 5 s
  (with the control read); in between the car's power is integrated on top of the last
  reading, and the estimate never runs backwards. The start of a session is
  the end of the previous one on the same scale, so the sessions of a day add
  up to what the box's counter rose by, whatever the replugs and restarts (the
  counter keeps counting while surplus is down). Each row keeps the counter
  value it started at, so a session continued after a crash counts on from
  there. Boxes without that counter (register layout < 1.0.2) get the power
  integrated instead;
- sun energy, an approximation from the grid meter: per tick the part of the
  car's power that was not imported, ``min(P_car, max(0, P_car - P_grid))``.
  The house is served from the sun first, and a home battery discharging into
  the car counts as sun (the grid meter cannot tell them apart). While there
  is no fresh grid reading (or surplus was down) the car's energy is
  "unmetered": not counted as sun; ``sun_wh`` is clamped to ``energy_wh``;
- the highest phase current measured, the phase counts used while charging,
  and the modes in effect while the car was connected ("override" when a
  person overrode the mode).

An open session is due for the file when it starts, at an unplug, every
``flush_every_s``, when it ends and at shutdown. At start-up an open row continues if the box still
runs that session (car connected, same CHARGING_SESSIONS_TOTAL); otherwise it
is closed at its last save with the energy the box counted up to the end of
that session (the counter stands still while no car is connected, and a
session the box started meanwhile is subtracted with its own session energy).

The SQL file is :mod:`surplus.history_store`; :mod:`surplus.history` feeds this
machine from the controller's ticks and hands its writes to the store.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .session_record import (
    ENERGY_SLACK_WH,
    MAX_RATE_W,
    EnergyCounter,
    Live,
    RowWrite,
    SessionRecord,
    StoredRow,
)
from .types import ChargerState, EvseState

__all__ = ["REPLUG_S", "Live", "RowWrite", "SessionRecord", "Sessions", "StoredRow", "vehicle_present"]

log = logging.getLogger("surplus.history")

#: An unplug shorter than this does not end the session (a quick replug continues it).
REPLUG_S = 10.0
#: One step of the box's energy registers (10 Wh): a reading is up to this below the truth.
REGISTER_STEP_WH = 10.0
#: A longer session duration is garbled (word order), not a start time.
MAX_SESSION_S = 30 * 86400
_CP_NO_EV = (10, 26)
_CP_EV = (11, 12, 13, 27, 28, 29)


def vehicle_present(state: ChargerState) -> bool | None:
    """Whether a car is connected; None when the box cannot tell (error, initialising, service)."""
    if state.evse_state == EvseState.IDLE:
        return False
    if state.vehicle_connected:
        return True
    if state.cp_state in _CP_NO_EV:
        return False
    if state.cp_state in _CP_EV:
        return True
    return None


@dataclass(slots=True)
class _Tracker:
    open: Live | None = None
    #: An open row from before the start, until the box's first reading says whether it continues.
    pending: Live | None = None
    #: A reading of this charger arrived since the start (the first one is a full, fresh read).
    seen: bool = False
    #: CHARGING_SESSIONS_TOTAL while no car was connected (a live start shows it until refreshed).
    idle_sessions: int | None = None
    last_read_at_s: float = -math.inf
    counter: EnergyCounter = field(default_factory=EnergyCounter)
    #: The end of this charger's latest session: the next one never starts before it.
    last_end: float = -math.inf
    #: The counter value the latest session ended at: the next one never counts from below it,
    #: so no energy is in two sessions (a restart's reading may be up to a step lower).
    floor_wh: float = -math.inf
    #: The counter's first reading since the start has been matched with what the file says.
    lifted: bool = False


class Sessions:
    """Every charger's session, followed reading by reading; what is due for the file comes back as writes.

    No I/O and no clock: the caller passes the times, the modes in effect and the
    rows the file holds, and stores the :class:`RowWrite` s it gets back (the
    store fills in a new row's id).
    """

    def __init__(self, charger_ids: Sequence[str], *, flush_every_s: float = 60.0) -> None:
        self._flush_every_s = flush_every_s
        self._trackers = {cid: _Tracker() for cid in charger_ids}

    def restore(
        self, last_ends: Mapping[str, tuple[float, float | None]], open_rows: Sequence[StoredRow]
    ) -> list[RowWrite]:
        """Take up what the file holds: each charger's last end, and its open row (decided at its
        first reading); rows of chargers no longer configured come back closed."""
        for cid, (end, end_wh) in last_ends.items():
            if cid in self._trackers:
                self._trackers[cid].last_end = end
                self._trackers[cid].floor_wh = -math.inf if end_wh is None else end_wh
        orphans = []
        for row in open_rows:
            live = Live.from_row(row)
            tracker = self._trackers.get(row.record.charger_id)
            if tracker is None:
                orphans.append(
                    RowWrite.of(live, ended_at=row.record.updated_at, end_reason="charger not configured")
                )
            else:
                tracker.pending = live
        return orphans

    def observe(
        self,
        cid: str,
        state: ChargerState,
        *,
        at_s: float,
        wall: float,
        grid: float | None,
        modes: Callable[[], Sequence[str]],
        now_wall: float,
    ) -> list[RowWrite]:
        """One reading of ``cid`` (ignored when it is not new): the writes that are due.

        ``wall`` is the reading's Unix time, ``now_wall`` the Unix time now (they differ
        when a tick is late); ``modes`` names the modes in effect (asked only when needed).
        """
        tracker = self._trackers.get(cid)
        if tracker is None or state.read_at_s <= tracker.last_read_at_s:
            return []
        tracker.last_read_at_s = state.read_at_s
        writes: list[RowWrite] = []
        self._observe(cid, tracker, state, at_s, wall, grid, writes, modes, now_wall)
        return writes

    def close(self) -> list[RowWrite]:
        """The final save at a stop: open sessions (they continue after a restart), and one whose
        car is unplugged ends (no replug before the stop)."""
        writes: list[RowWrite] = []
        for t in self._trackers.values():
            live = t.open
            if live is not None and live.unplugged is not None:
                self._end(t, live, live.unplugged[0], "unplugged", writes)
            elif live is not None:
                writes.append(RowWrite.of(live))
        return writes

    def open_sessions(self) -> list[Live]:
        """The sessions open now, as they stand."""
        return [t.open for t in self._trackers.values() if t.open is not None]

    def _observe(
        self,
        cid: str,
        t: _Tracker,
        state: ChargerState,
        at_s: float,
        wall: float,
        grid: float | None,
        writes: list[RowWrite],
        modes: Callable[[], Sequence[str]],
        now_wall: float,
    ) -> None:
        present = vehicle_present(state)
        shift = t.counter.update(state, at_s)
        if shift and t.lifted:
            t.floor_wh += shift  # the counter's scale moved: the sessions' energies do not
            if t.open is not None:
                t.open.start_wh += shift
        if not t.lifted and t.counter.from_box:
            self._lift(t)
        if t.pending is not None:
            if present is None:
                return  # wait until the box says whether the car is there
            row, t.pending = t.pending, None
            self._resolve(cid, t, row, state, present, wall, writes, now_wall)
        live = t.open
        restarted = False
        if live is not None and live.unplugged is not None:
            if present:
                log.info("%s: car connected again within %g s: the session continues", cid, REPLUG_S)
                live.unplugged = None
            elif at_s - live.unplugged[1] >= REPLUG_S:
                self._end(t, live, live.unplugged[0], "unplugged", writes)
                live = None
        elif live is not None and present is False:
            # Maybe a quick replug: the session ends only if the car stays away REPLUG_S.
            live.update(state, at_s, wall, grid, t.counter)
            live.unplugged = (wall, at_s)
            writes.append(RowWrite.of(live))
            live.saved_at_s = at_s
        if live is not None and present and self._new_on_box(live, state):
            if live.last_at_s is not None and at_s - live.last_at_s > REPLUG_S:
                # Not seen for longer than a replug (a read outage): the box's new session is a new one.
                end_wh = t.counter.before_session(state)
                self._end(t, live, live.updated_at, "new session on the box", writes, at_wh=end_wh)
                live, restarted = None, True
            else:
                log.debug("%s: the box began a new session (a quick replug): ours continues", cid)
                if state.sessions_total and state.sessions_total != t.idle_sessions:
                    live.box_sessions = state.sessions_total
                live.box_session_wh = None
                live.saved_at_s = -math.inf  # saved below: after a crash the box's session is known ours
        if live is None and present:
            # Seen for the first time, or caught by its counters: the box's session registers are fresh.
            live = t.open = self._start(cid, t, state, wall, fresh=restarted or not t.seen)
            writes.append(RowWrite.of(live))
            live.saved_at_s = at_s
        if present is False:
            t.idle_sessions = state.sessions_total or None
        t.seen = True
        if live is None or live.unplugged is not None:
            return
        if live.box_sessions is None and state.sessions_total and state.sessions_total != t.idle_sessions:
            live.box_sessions = state.sessions_total
        live.update(state, at_s, wall, grid, t.counter)
        self._note_modes(live, modes())
        if at_s - live.saved_at_s >= self._flush_every_s:
            writes.append(RowWrite.of(live))
            live.saved_at_s = at_s

    @staticmethod
    def _lift(t: _Tracker) -> None:
        """At the first counter reading: what the file's sessions already hold, if within a step above it.

        The register shows whole 10 Wh steps, the last process knew the value finer; starting
        from the step below would count up to 10 Wh twice (or, for a continued session, not at all).
        """
        t.lifted = True
        counter = t.counter
        assert counter.read_wh is not None
        known = [t.floor_wh]
        row = t.pending
        if row is not None and row.start_from_box and math.isfinite(row.start_wh):
            known.append(row.start_wh + row.energy_wh)
        best = max(known)
        if counter.read_wh <= best <= counter.read_wh + REGISTER_STEP_WH + 1.0:  # 1 Wh: integration
            counter.value_wh = max(counter.value_wh, best)
        elif best > counter.read_wh:
            t.floor_wh = -math.inf  # above the box's counter: another box, or a reset counter

    def _start(self, cid: str, t: _Tracker, state: ChargerState, wall: float, *, fresh: bool) -> Live:
        counter = t.counter
        if fresh:
            # A full read: the box's session registers tell when the session began and what it charged.
            duration = state.session_duration_s
            start = wall - duration if 0 <= duration <= MAX_SESSION_S else wall
            live = Live(
                charger_id=cid,
                started_at=max(start, t.last_end),
                updated_at=wall,
                start_wh=min(counter.value_wh, max(counter.before_session(state), t.floor_wh)),
                box_sessions=state.sessions_total or None,
            )
            live.take(counter)
            live.unmetered_wh = live.energy_wh  # charged before we watched
            if math.isfinite(state.session_energy_wh):
                live.box_session_wh = state.session_energy_wh
        else:
            live = Live(
                charger_id=cid,
                started_at=max(wall, t.last_end),
                updated_at=wall,
                start_wh=min(counter.value_wh, max(counter.before_wh, t.floor_wh)),
            )
            live.start_from_box = counter.from_box
        log.info("%s: session started (car connected)", cid)
        return live

    def _resolve(
        self,
        cid: str,
        t: _Tracker,
        row: Live,
        state: ChargerState,
        present: bool,
        wall: float,
        writes: list[RowWrite],
        now_wall: float,
    ) -> None:
        """An open row from before the start: continue it if the box still runs it, else close it."""
        counter = t.counter
        same = present and self._same_on_box(row, state, wall)
        energy = state.session_energy_wh
        if same:
            end_wh = counter.value_wh
        else:
            # The counter stood still since that session ended, except for the box's current session.
            end_wh = counter.before_session(state) if present else counter.value_wh
        counted = end_wh - row.start_wh
        down_s = max(0.0, now_wall - row.updated_at)
        usable = (
            row.start_from_box
            and counter.from_box
            and row.energy_wh - ENERGY_SLACK_WH
            <= counted
            <= row.energy_wh + MAX_RATE_W * down_s / 3600.0 + ENERGY_SLACK_WH
        )
        if not usable:
            # No start on this counter: count on from what was saved (and what the box's register shows).
            known = max(row.energy_wh, energy) if same and math.isfinite(energy) else row.energy_wh
            row.start_wh = end_wh - known
        before = row.energy_wh
        row.take(counter, at_wh=end_wh)
        row.unmetered_wh += max(0.0, row.energy_wh - before)  # charged while nobody watched the grid
        if same:
            t.open = row
            if math.isfinite(energy):
                row.box_session_wh = energy
            log.info("%s: session %s continues after the restart", cid, row.row_id)
        else:
            self._end(t, row, row.updated_at, "not running after restart", writes, at_wh=end_wh)
            log.info(
                "%s: session %s from before the restart closed: the box no longer runs it", cid, row.row_id
            )

    def _end(
        self,
        t: _Tracker,
        live: Live,
        ended_at: float,
        reason: str,
        writes: list[RowWrite],
        *,
        at_wh: float | None = None,
    ) -> None:
        live.take(t.counter, at_wh=at_wh)
        live.unplugged = None
        ended_at = max(ended_at, live.started_at)
        writes.append(RowWrite.of(live, ended_at=ended_at, end_reason=reason))
        t.last_end = max(t.last_end, ended_at)
        t.floor_wh = max(t.floor_wh, live.start_wh + live.energy_wh)
        if t.open is live:
            t.open = None
        self._log_end(live)

    @staticmethod
    def _same_on_box(row: Live, state: ChargerState, wall: float) -> bool:
        """Does the box still run the session of an open row from before the start?"""
        duration = state.session_duration_s
        if 0 <= duration <= MAX_SESSION_S and wall - duration <= row.updated_at + 2.0:
            # The box's session began before our last save: the one we followed (a quick replug
            # merged into it before the crash may have left an older session counter in the row).
            return True
        if row.box_sessions and state.sessions_total:
            return state.sessions_total == row.box_sessions
        energy = state.session_energy_wh
        return not (math.isfinite(energy) and energy + ENERGY_SLACK_WH < row.energy_wh)

    @staticmethod
    def _new_on_box(live: Live, state: ChargerState) -> bool:
        """The box began a new session without an unplug seen (a quick replug, a read outage)."""
        if live.box_sessions and state.sessions_total and state.sessions_total != live.box_sessions:
            return True
        energy = state.session_energy_wh
        return (
            live.box_session_wh is not None and math.isfinite(energy) and energy + 1.0 < live.box_session_wh
        )

    @staticmethod
    def _note_modes(live: Live, names: Sequence[str]) -> None:
        for name in names:
            if name not in live.modes:
                live.modes.append(name)

    @staticmethod
    def _log_end(live: Live) -> None:
        rec = live.record()
        log.info(
            "%s: session ended: %.2f kWh, %.2f kWh of it from the sun",
            live.charger_id,
            rec.energy_wh / 1000,
            rec.sun_wh / 1000,
        )
