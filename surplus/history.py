"""Charging-session history in SQLite: what each plug-in charged, and how much of it came from the sun.

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

Durability: WAL journal, ``synchronous=FULL``, one transaction per write, all
writes in one worker thread so a slow SD card never stalls the loop. An open
session is written when it starts, at an unplug, every ``flush_every_s``, when
it ends and at shutdown. At start-up an open row continues if the box still
runs that session (car connected, same CHARGING_SESSIONS_TOTAL); otherwise it
is closed at its last save with the energy the box counted up to the end of
that session (the counter stands still while no car is connected, and a
session the box started meanwhile is subtracted with its own session energy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import sqlite3
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .types import ChargerState, EvseState, Snapshot

if TYPE_CHECKING:
    from .api import ControllerAPI
    from .loop import Controller

log = logging.getLogger("surplus.history")

#: ``PRAGMA user_version`` of the schema below; a file with a higher one is refused.
SCHEMA_VERSION = 2
_SCHEMA = (
    """CREATE TABLE sessions (
        id INTEGER PRIMARY KEY,
        charger_id TEXT NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL,
        updated_at REAL NOT NULL,
        energy_wh REAL NOT NULL,
        sun_wh REAL NOT NULL,
        unmetered_wh REAL NOT NULL,
        max_current_a REAL NOT NULL,
        phases TEXT NOT NULL,
        modes TEXT NOT NULL,
        box_sessions_total INTEGER,
        end_reason TEXT,
        box_energy_start_wh REAL
    )""",
    "CREATE INDEX sessions_by_start ON sessions (started_at DESC, id DESC)",
    # At most one open session per charger.
    "CREATE UNIQUE INDEX sessions_open ON sessions (charger_id) WHERE ended_at IS NULL",
)
#: From each older schema version to the next.
_MIGRATIONS = {
    1: ("ALTER TABLE sessions ADD COLUMN box_energy_start_wh REAL",),
}
_COLUMNS = (
    "charger_id",
    "started_at",
    "ended_at",
    "updated_at",
    "energy_wh",
    "sun_wh",
    "unmetered_wh",
    "max_current_a",
    "phases",
    "modes",
    "box_sessions_total",
    "end_reason",
    "box_energy_start_wh",
)

#: Ticks further apart than this are not integrated (a read outage, a restart).
MAX_GAP_S = 10.0
#: An unplug shorter than this does not end the session (a quick replug continues it).
REPLUG_S = 10.0
#: Reads of the box's counters may be this much lower than before (word order, rounding)
#: without being a new session or a reset counter.
ENERGY_SLACK_WH = 50.0
#: The most a box can charge (a 22 kW box plus margin): a faster rise of its counter is garbled.
MAX_RATE_W = 25_000.0
#: One step of the box's energy registers (10 Wh): a reading is up to this below the truth.
REGISTER_STEP_WH = 10.0
#: A longer session duration is garbled (word order), not a start time.
MAX_SESSION_S = 30 * 86400
#: A phase carrying at least this current is in use.
PHASE_USED_A = 1.0
_CP_NO_EV = (10, 26)
_CP_EV = (11, 12, 13, 27, 28, 29)


class HistoryError(ValueError):
    """The history file cannot be used; the message is one line naming the path."""


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


def _finite(value: float, default: float = 0.0) -> float:
    return value if math.isfinite(value) else default


@dataclass(slots=True)
class _Counter:
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
class _Live:
    """An open session in memory (loop thread only, except ``row_id``, set by the writer)."""

    charger_id: str
    started_at: float
    updated_at: float
    row_id: int | None = None
    #: The box's counter (:class:`_Counter` scale) at the start; energy is what it rose by since.
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

    def update(
        self, state: ChargerState, at_s: float, wall: float, grid_w: float | None, counter: _Counter
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
        if state.charging:
            currents = [c for c in (state.current_l1_a, state.current_l2_a, state.current_l3_a) if c >= 0]
            self.max_current_a = max([self.max_current_a, *currents])
            used = sum(1 for c in currents if c >= PHASE_USED_A)
            if used:
                self.phases.add(used)

    def take(self, counter: _Counter, *, at_wh: float | None = None) -> None:
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
        )

    @classmethod
    def from_row(cls, row: _Row) -> _Live:
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
        )


@dataclass(frozen=True, slots=True)
class _Row:
    """A stored row with what only the file keeps: the box's session counter and counter at its start."""

    record: SessionRecord
    box_sessions: int | None
    start_wh: float | None


@dataclass(frozen=True, slots=True)
class _Write:
    """One row's values, taken on the loop thread; the writer inserts or updates ``live``'s row."""

    live: _Live
    values: tuple[object, ...]

    @classmethod
    def of(cls, live: _Live, *, ended_at: float | None = None, end_reason: str | None = None) -> _Write:
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
        )
        return cls(live, values)


def _split(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


class SessionStore:
    """The SQLite file. Not for concurrent use: :class:`History` calls it from one worker thread."""

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, path: str) -> SessionStore:
        """Open (creating the directory, file and schema) or raise :class:`HistoryError` (one line)."""
        where = f"history.path {path}"
        full = os.path.abspath(os.path.expanduser(path))
        folder = os.path.dirname(full)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            why = (
                "a file is in the way"
                if isinstance(exc, FileExistsError | NotADirectoryError)
                else exc.strerror
            )
            raise HistoryError(f"{where}: cannot create its directory {folder}: {why or exc}") from None
        if os.path.isdir(full):
            raise HistoryError(f"{where}: is a directory; name a file")
        probe = full if os.path.exists(full) else os.path.dirname(full)
        if not os.access(probe, os.W_OK):
            raise HistoryError(f"{where}: not writable by this user")
        try:
            conn = sqlite3.connect(full, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise HistoryError(f"{where}: cannot open: {exc}") from None
        store = cls(conn, full)
        try:
            store._prepare()
        except HistoryError as exc:
            conn.close()
            raise HistoryError(f"{where}: {exc}") from None
        except sqlite3.Error as exc:
            conn.close()
            raise HistoryError(f"{where}: {exc}") from None
        return store

    def _prepare(self) -> None:
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise HistoryError(
                f"schema version {version} is newer than this surplus knows ({SCHEMA_VERSION}):"
                " upgrade surplus or use another file"
            )
        mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("history: %s runs in %s journal mode, not WAL", self.path, mode)
        self._conn.execute("PRAGMA synchronous=FULL")
        if version == SCHEMA_VERSION:
            return
        if version:
            with self._transaction():
                for step in range(version, SCHEMA_VERSION):
                    for statement in _MIGRATIONS[step]:
                        self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            log.info("history: %s upgraded from schema version %d", self.path, version)
            return
        tables = self._conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        if tables:
            raise HistoryError("not a surplus session history (it has other tables); use another file")
        with self._transaction():
            for statement in _SCHEMA:
                self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def write(self, writes: Sequence[_Write]) -> None:
        """Insert or update each row, all in one transaction."""
        with self._transaction():
            for w in writes:
                if w.live.row_id is None:
                    names = ", ".join(_COLUMNS)
                    marks = ", ".join("?" * len(_COLUMNS))
                    cur = self._conn.execute(f"INSERT INTO sessions ({names}) VALUES ({marks})", w.values)
                    w.live.row_id = cur.lastrowid
                else:
                    sets = ", ".join(f"{c} = ?" for c in _COLUMNS)
                    self._conn.execute(f"UPDATE sessions SET {sets} WHERE id = ?", (*w.values, w.live.row_id))

    def _records(self, where: str, args: Sequence[object]) -> list[_Row]:
        rows = self._conn.execute(
            f"SELECT id, {', '.join(_COLUMNS)} FROM sessions {where}", tuple(args)
        ).fetchall()
        out = []
        for row in rows:
            rid, cid, start, end, updated, energy, sun, unmetered, max_a, phases, modes, box, reason, at = row
            rec = SessionRecord(
                id=int(rid),
                charger_id=str(cid),
                started_at=float(start),
                ended_at=None if end is None else float(end),
                updated_at=float(updated),
                energy_wh=float(energy),
                sun_wh=float(sun),
                unmetered_wh=float(unmetered),
                max_current_a=float(max_a),
                phases=tuple(int(p) for p in _split(phases)),
                modes=tuple(_split(modes)),
                end_reason=reason,
            )
            out.append(_Row(rec, None if box is None else int(box), None if at is None else float(at)))
        return out

    def open_rows(self) -> list[_Row]:
        """Sessions without an end, with what the box's counters showed for them."""
        return self._records("WHERE ended_at IS NULL ORDER BY id", ())

    def last_ends(self) -> dict[str, tuple[float, float | None]]:
        """Per charger, the end of its latest ended session (time, box counter if known)."""
        rows = self._conn.execute(
            "SELECT charger_id, ended_at, box_energy_start_wh + energy_wh FROM sessions s"
            " WHERE ended_at = (SELECT max(ended_at) FROM sessions t WHERE t.charger_id = s.charger_id)"
            " ORDER BY id"
        ).fetchall()
        return {str(cid): (float(end), None if wh is None else float(wh)) for cid, end, wh in rows}

    def recent(self, charger_id: str | None, limit: int) -> list[SessionRecord]:
        """The newest ``limit`` sessions (of one charger, or all), newest first."""
        if charger_id is None:
            rows = self._records("ORDER BY started_at DESC, id DESC LIMIT ?", (limit,))
        else:
            rows = self._records(
                "WHERE charger_id = ? ORDER BY started_at DESC, id DESC LIMIT ?", (charger_id, limit)
            )
        return [r.record for r in rows]

    def close(self) -> None:
        self._conn.close()


@dataclass(slots=True)
class _Tracker:
    open: _Live | None = None
    #: An open row from before the start, until the box's first reading says whether it continues.
    pending: _Live | None = None
    #: A reading of this charger arrived since the start (the first one is a full, fresh read).
    seen: bool = False
    #: CHARGING_SESSIONS_TOTAL while no car was connected (a live start shows it until refreshed).
    idle_sessions: int | None = None
    last_read_at_s: float = -math.inf
    counter: _Counter = field(default_factory=_Counter)
    #: The end of this charger's latest session: the next one never starts before it.
    last_end: float = -math.inf
    #: The counter value the latest session ended at: the next one never counts from below it,
    #: so no energy is in two sessions (a restart's reading may be up to a step lower).
    floor_wh: float = -math.inf
    #: The counter's first reading since the start has been matched with what the file says.
    lifted: bool = False


class History:
    """Follows the sessions tick by tick and keeps them in a :class:`SessionStore`."""

    def __init__(
        self, store: SessionStore, controller: ControllerAPI, *, flush_every_s: float = 60.0
    ) -> None:
        self._store = store
        self._controller = controller
        self._clock = controller.clock
        self._flush_every_s = flush_every_s
        self._trackers = {cid: _Tracker() for cid in controller.charger_ids}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="surplus-history")
        self._jobs: deque[Future[None]] = deque()
        self._failing = False
        self._closed = False
        for cid, (end, end_wh) in store.last_ends().items():
            if cid in self._trackers:
                self._trackers[cid].last_end = end
                self._trackers[cid].floor_wh = -math.inf if end_wh is None else end_wh
        orphans = []
        for row in store.open_rows():
            live = _Live.from_row(row)
            tracker = self._trackers.get(row.record.charger_id)
            if tracker is None:
                orphans.append(
                    _Write.of(live, ended_at=row.record.updated_at, end_reason="charger not configured")
                )
            else:
                tracker.pending = live
        if orphans:
            store.write(orphans)

    @property
    def path(self) -> str:
        return self._store.path

    # -- the tick ------------------------------------------------------------------------------
    def on_tick(self, snapshot: Snapshot) -> None:
        """Tick observer: follow each charger's session; write what is due (in the worker)."""
        self._reap()
        if self._closed:
            return
        wall = self._clock.wall() - (self._clock.now() - snapshot.at_s)
        grid = snapshot.grid_power_w
        writes: list[_Write] = []
        for cid, reading in snapshot.chargers.items():
            tracker = self._trackers.get(cid)
            state = reading.state
            if tracker is None or state is None or reading.error is not None:
                continue
            if state.read_at_s <= tracker.last_read_at_s:
                continue  # no new read this tick
            tracker.last_read_at_s = state.read_at_s
            self._observe(cid, tracker, state, snapshot.at_s, wall, grid, writes)
        if writes:
            self._submit(writes)

    def _observe(
        self,
        cid: str,
        t: _Tracker,
        state: ChargerState,
        at_s: float,
        wall: float,
        grid: float | None,
        writes: list[_Write],
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
            self._resolve(cid, t, row, state, present, wall, writes)
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
            writes.append(_Write.of(live))
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
            writes.append(_Write.of(live))
            live.saved_at_s = at_s
        if present is False:
            t.idle_sessions = state.sessions_total or None
        t.seen = True
        if live is None or live.unplugged is not None:
            return
        if live.box_sessions is None and state.sessions_total and state.sessions_total != t.idle_sessions:
            live.box_sessions = state.sessions_total
        live.update(state, at_s, wall, grid, t.counter)
        self._note_mode(cid, live)
        if at_s - live.saved_at_s >= self._flush_every_s:
            writes.append(_Write.of(live))
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

    def _start(self, cid: str, t: _Tracker, state: ChargerState, wall: float, *, fresh: bool) -> _Live:
        counter = t.counter
        if fresh:
            # A full read: the box's session registers tell when the session began and what it charged.
            duration = state.session_duration_s
            start = wall - duration if 0 <= duration <= MAX_SESSION_S else wall
            live = _Live(
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
            live = _Live(
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
        row: _Live,
        state: ChargerState,
        present: bool,
        wall: float,
        writes: list[_Write],
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
        down_s = max(0.0, self._clock.wall() - row.updated_at)
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
        live: _Live,
        ended_at: float,
        reason: str,
        writes: list[_Write],
        *,
        at_wh: float | None = None,
    ) -> None:
        live.take(t.counter, at_wh=at_wh)
        live.unplugged = None
        ended_at = max(ended_at, live.started_at)
        writes.append(_Write.of(live, ended_at=ended_at, end_reason=reason))
        t.last_end = max(t.last_end, ended_at)
        t.floor_wh = max(t.floor_wh, live.start_wh + live.energy_wh)
        if t.open is live:
            t.open = None
        self._log_end(live)

    @staticmethod
    def _same_on_box(row: _Live, state: ChargerState, wall: float) -> bool:
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
    def _new_on_box(live: _Live, state: ChargerState) -> bool:
        """The box began a new session without an unplug seen (a quick replug, a read outage)."""
        if live.box_sessions and state.sessions_total and state.sessions_total != live.box_sessions:
            return True
        energy = state.session_energy_wh
        return (
            live.box_session_wh is not None and math.isfinite(energy) and energy + 1.0 < live.box_session_wh
        )

    def _note_mode(self, cid: str, live: _Live) -> None:
        names = [self._controller.get_mode(cid)]
        if self._controller.get_override(cid) is not None:
            names.append("override")
        for name in names:
            if name not in live.modes:
                live.modes.append(name)

    @staticmethod
    def _log_end(live: _Live) -> None:
        rec = live.record()
        log.info(
            "%s: session ended: %.2f kWh, %.2f kWh of it from the sun",
            live.charger_id,
            rec.energy_wh / 1000,
            rec.sun_wh / 1000,
        )

    # -- the writer thread --------------------------------------------------------------------
    def _submit(self, writes: list[_Write]) -> None:
        self._jobs.append(self._executor.submit(self._store.write, writes))

    def _reap(self) -> None:
        """Log a failed write once per failure streak (the next write carries the full values again)."""
        # One worker: jobs finish in the order they were submitted.
        while self._jobs and self._jobs[0].done():
            exc = self._jobs.popleft().exception()
            if exc is not None and not self._failing:
                log.error("history: cannot write %s: %s (retrying with the next write)", self.path, exc)
                self._failing = True
            elif exc is None and self._failing:
                log.info("history: writes work again")
                self._failing = False

    async def drain(self) -> None:
        """Wait until every write handed to the worker is done."""
        for job in list(self._jobs):
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(job)
        self._reap()

    # -- reading --------------------------------------------------------------------------------
    async def sessions(self, *, charger_id: str | None = None, limit: int = 20) -> list[SessionRecord]:
        """The newest ``limit`` sessions, newest first; open ones with their values of now."""
        if self._closed:
            raise RuntimeError("the session history is closed")
        job = self._executor.submit(self._store.recent, charger_id, limit)
        records = await asyncio.wrap_future(job)
        live = {t.open.row_id: t.open for t in self._trackers.values() if t.open is not None}
        return [live[r.id].record() if r.ended_at is None and r.id in live else r for r in records]

    def open_sessions(self) -> list[SessionRecord]:
        """The sessions open now, as they stand (not waiting for the file)."""
        return [t.open.record() for t in self._trackers.values() if t.open is not None]

    async def close(self, *, save: bool = True) -> None:
        """Save the open sessions (they continue after a restart; one whose car is unplugged ends),
        finish the writes, close the file.

        ``save=False`` skips the final save: what a crash leaves behind (for tests).
        """
        if self._closed:
            return
        if save:
            writes: list[_Write] = []
            for t in self._trackers.values():
                live = t.open
                if live is not None and live.unplugged is not None:
                    self._end(t, live, live.unplugged[0], "unplugged", writes)  # no replug before the stop
                elif live is not None:
                    writes.append(_Write.of(live))
            if writes:
                self._submit(writes)
        self._closed = True
        await self.drain()
        self._executor.shutdown(wait=True)
        self._store.close()


def attach(controller: Controller, store: SessionStore, *, flush_every_s: float = 60.0) -> History:
    """A :class:`History` fed by ``controller``'s ticks and served by its ``getSessions``."""
    history = History(store, controller, flush_every_s=flush_every_s)
    controller.add_tick_observer(history.on_tick)
    controller.history = history
    return history
