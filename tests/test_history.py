"""Session history: the real loop, driver and AMTRON model on a fake clock, into a real SQLite file."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import aiohttp
import jsonschema
import pytest
from surplus_plugins.pv_sun import FULL_CAR_WEIGHT, SESSIONS_KEPT

from surplus.clock import FakeClock
from surplus.config import ConfigError, load_config
from surplus.history import (
    REPLUG_S,
    History,
    HistoryError,
    SessionRecord,
    SessionStore,
    attach,
    vehicle_present,
)
from surplus.history_store import SCHEMA_VERSION
from surplus.meter import Meter, MeterEnv
from surplus.plugins import collect_meters, make_plugin_manager
from surplus.sim.model import AmtronModel, EvProfile
from surplus.strategy import IDLE_S
from surplus.types import ChargerReading, ChargerState, EvseState, MeterReading, Snapshot

from .factories import charger_state
from .loop_support import build_controller
from .rpc_support import STACK_CONFIG, FakeController, full_stack

SUNNY = {"seed": 1, "start_hour": 11.0, "pv_peak_w": 8000, "cloudiness": 0.3}
BIG_CAR = EvProfile(soc=0.2, capacity_wh=200_000)


def rows(path: Path) -> list[dict[str, Any]]:
    """The sessions table as another process would read it, oldest first."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM sessions ORDER BY id")]
    finally:
        conn.close()


def grid_meter(clock: FakeClock, model: AmtronModel) -> Meter:
    simulated = collect_meters(make_plugin_manager(load_entrypoints=False))["simulated"]
    return simulated("grid", SUNNY, MeterEnv(clock=clock, charger_power_w=lambda: model.charging_power_w))


class Run:
    """A controller with a history on ``path``, ticking on the fake clock."""

    def __init__(
        self,
        clock: FakeClock,
        model: AmtronModel,
        path: Path,
        *,
        mode: str = "pv",
        flush_every_s: float = 60.0,
        fixed_current_a: float = 10,
    ) -> None:
        meters = [grid_meter(clock, model)] if mode == "pv" else []
        self.clock = clock
        self.controller, self.bus = build_controller(
            clock, model, meters=meters, mode=mode, fixed_current_a=fixed_current_a
        )
        self.history = attach(self.controller, SessionStore.open(str(path)), flush_every_s=flush_every_s)
        self.task = asyncio.ensure_future(self.controller.run())

    async def stop(self, *, crash: bool = False) -> None:
        """Stop the loop; a crash skips the history's last save (only what was flushed survives)."""
        self.controller.stop()
        await self.clock.advance(20)
        await self.task
        await self.history.close(save=not crash)
        await self.bus.close()


async def test_one_session_in_pv_mode(tmp_path: Path) -> None:
    clock = FakeClock()
    model = AmtronModel(clock)  # no car yet
    db = tmp_path / "state" / "sessions.db"  # the directory is created
    run = Run(clock, model, db)
    await clock.advance(60)
    plugged = clock.wall()
    model.plug_in(BIG_CAR)
    await clock.advance(3600)
    model.unplug()
    unplugged = clock.wall()
    await clock.advance(30)
    await run.stop()

    (row,) = rows(db)
    box_wh = model.session_energy_wh
    assert box_wh > 3000  # it really charged
    assert row["energy_wh"] == pytest.approx(box_wh, rel=0.01)
    assert 0 < row["sun_wh"] <= row["energy_wh"]
    assert row["sun_wh"] + row["unmetered_wh"] <= row["energy_wh"] + 1e-6
    assert plugged <= row["started_at"] <= plugged + 2
    assert unplugged <= row["ended_at"] <= unplugged + 2
    assert row["end_reason"] == "unplugged" and row["modes"] == "pv"
    assert 6 <= row["max_current_a"] <= 16.5 and row["phases"] in ("1", "3", "1,3")
    assert row["box_sessions_total"] == model.sessions_total


async def test_a_crash_loses_at_most_one_flush_and_the_session_continues(tmp_path: Path) -> None:
    clock = FakeClock()
    model = AmtronModel(clock, ev=BIG_CAR)  # plugged in before the controller starts
    db = tmp_path / "sessions.db"
    first = Run(clock, model, db, mode="fixed", flush_every_s=60)
    await clock.advance(1000)
    crashed_at, at_crash_wh = clock.wall(), model.session_energy_wh
    power_w = model.charging_power_w
    await first.stop(crash=True)

    (row,) = rows(db)  # what the file holds after the crash
    assert row["ended_at"] is None
    assert row["updated_at"] >= crashed_at - 60 - 1
    assert at_crash_wh - power_w * 61 / 3600 <= row["energy_wh"] <= at_crash_wh + 1
    started = row["started_at"]
    assert started <= crashed_at - 990

    await clock.advance(30)  # down for half a minute; the car stays plugged in
    second = Run(clock, model, db, mode="fixed", flush_every_s=60)
    await clock.advance(600)
    assert [r.id for r in second.history.open_sessions()] == [row["id"]]
    model.unplug()
    await clock.advance(10)
    await second.stop()

    (final,) = rows(db)  # still one session, ended
    assert final["id"] == row["id"] and final["started_at"] == started
    assert final["end_reason"] == "unplugged"
    assert final["energy_wh"] == pytest.approx(model.session_energy_wh, rel=0.01)
    assert final["energy_wh"] > at_crash_wh + 500  # it kept counting after the restart
    # Fixed mode without a meter: all of it unmetered, including what the lost minute held.
    assert final["unmetered_wh"] == pytest.approx(final["energy_wh"], rel=0.01) and final["sun_wh"] == 0


async def test_a_session_that_ended_while_down_is_closed_with_its_last_values(tmp_path: Path) -> None:
    clock = FakeClock()
    model = AmtronModel(clock, ev=BIG_CAR)
    db = tmp_path / "sessions.db"
    first = Run(clock, model, db, mode="fixed", flush_every_s=60)
    await clock.advance(300)
    await first.stop(crash=True)
    (saved,) = rows(db)

    model.unplug()  # unplugged and plugged in again while surplus was down
    await clock.advance(5)
    model.plug_in(BIG_CAR)
    await clock.advance(60)
    second = Run(clock, model, db, mode="fixed", flush_every_s=60)
    await clock.advance(120)
    await second.stop()

    old, new = rows(db)
    assert old["id"] == saved["id"] and old["end_reason"] == "not running after restart"
    assert old["ended_at"] == saved["updated_at"] and old["energy_wh"] == saved["energy_wh"]
    assert new["ended_at"] is None and new["started_at"] > old["ended_at"]
    assert new["box_sessions_total"] == old["box_sessions_total"] + 1


# -- scripted plug patterns: the rows add up to the box's counter ------------------------------

#: (step, seconds): "plug", "unplug", "wait" s, "crash" (the history's last save is lost), "restart".
Pattern = tuple[tuple[str, float], ...]
QUICK = (("unplug", 0), ("wait", 0.5), ("plug", 0))


async def play(db: Path, pattern: Pattern) -> tuple[list[dict[str, Any]], float]:
    """Run ``pattern`` (fixed 16 A) on the real driver, model and file; the rows and the box's counter rise."""
    clock = FakeClock()
    model = AmtronModel(clock)
    run: Run | None = Run(clock, model, db, mode="fixed", fixed_current_a=16)
    counter_at_start = model.energy_total_wh
    for step, seconds in pattern:
        if step == "plug":
            model.plug_in(BIG_CAR)
        elif step == "unplug":
            model.unplug()
        elif step == "wait":
            await clock.advance(seconds)
        elif step == "crash":
            assert run is not None
            await run.stop(crash=True)
            run = None
        else:
            assert step == "restart" and run is None
            run = Run(clock, model, db, mode="fixed", fixed_current_a=16)
    assert run is not None
    await run.stop()
    return rows(db), model.energy_total_wh - counter_at_start


def assert_sane(found: list[dict[str, Any]], box_wh: float) -> None:
    """Closed, not overlapping, and adding up to the box's counter within 1 %."""
    assert box_wh > 1000  # it really charged
    assert all(r["ended_at"] is not None for r in found)
    for a, b in itertools.pairwise(found):
        assert a["started_at"] <= a["ended_at"] <= b["started_at"], (a, b)
    assert sum(r["energy_wh"] for r in found) == pytest.approx(box_wh, rel=0.01)


@pytest.mark.parametrize(
    ("pattern", "reasons"),
    [
        pytest.param(
            (("wait", 30), ("plug", 0), ("wait", 900.3), *QUICK, ("wait", 900), ("unplug", 0), ("wait", 30)),
            ["unplugged"],
            id="replug within a second: one session",
        ),
        pytest.param(
            (("plug", 0), ("wait", 600), ("unplug", 0), ("wait", 4), ("plug", 0), ("wait", 600),
             ("unplug", 0), ("wait", 30)),
            ["unplugged"],
            id="unplug seen, back within REPLUG_S: one session",
        ),
        pytest.param(
            (("plug", 0), ("wait", 600), ("unplug", 0), ("wait", 300), ("plug", 0), ("wait", 600),
             ("unplug", 0), ("wait", 30)),
            ["unplugged", "unplugged"],
            id="unplugged during charging for 5 min: two sessions",
        ),
        pytest.param(
            (("plug", 0), ("wait", 700), ("crash", 0), ("wait", 120), ("restart", 0), ("wait", 600),
             ("unplug", 0), ("wait", 30)),
            ["unplugged"],
            id="crash with an open row, restart: it continues",
        ),
        pytest.param(
            (("wait", 30), ("plug", 0), ("wait", 70), *QUICK, ("wait", 20), ("crash", 0), ("wait", 2),
             ("restart", 0), ("wait", 600), ("unplug", 0), ("wait", 30)),
            ["unplugged"],
            id="crash soon after a replug too quick to see: still one session",
        ),
        pytest.param(
            (("plug", 0), ("wait", 700), ("crash", 0), ("unplug", 0), ("wait", 120), ("restart", 0),
             ("wait", 30)),
            ["not running after restart"],
            id="crash, unplugged while down: closed with what the box counted",
        ),
        pytest.param(
            (("plug", 0), ("wait", 700), ("crash", 0), ("wait", 100), *QUICK, ("wait", 100), ("restart", 0),
             ("wait", 600), ("unplug", 0), ("wait", 30)),
            ["not running after restart", "unplugged"],
            id="crash, replugged while down: two sessions, no overlap",
        ),
        pytest.param(
            (("plug", 0), ("wait", 700), *QUICK, ("wait", 2), ("crash", 0), ("wait", 60), ("restart", 0),
             ("wait", 300), *QUICK, ("wait", 300), ("unplug", 0), ("wait", 3), ("crash", 0), ("wait", 60),
             ("restart", 0), ("wait", 30)),
            # The session register is read with the EVSE state's change, so the replug 2 s
            # before the first crash is seen and continues the row: one session.
            ["not running after restart"],
            id="crashes right after replugs and unplugs",
        ),
    ],
)  # fmt: skip
async def test_plug_patterns_add_up_to_the_box_counter(
    tmp_path: Path, pattern: Pattern, reasons: list[str]
) -> None:
    found, box_wh = await play(tmp_path / "s.db", pattern)
    assert [r["end_reason"] for r in found] == reasons
    assert_sane(found, box_wh)


async def test_the_old_way_double_counted_a_quick_replug(tmp_path: Path) -> None:
    """The reported case: the session register's reset made three rows (two overlapping)."""
    pattern = (("plug", 0), ("wait", 1800.3), *QUICK, ("wait", 1800), ("unplug", 0), ("wait", 30))
    found, box_wh = await play(tmp_path / "s.db", pattern)
    (row,) = found
    assert row["energy_wh"] == pytest.approx(box_wh, rel=0.01)
    assert row["ended_at"] - row["started_at"] == pytest.approx(3600, abs=3)


async def two_sessions(db: Path, *, wall_start: float = 1_764_000_000.0) -> list[float]:
    """Charge twice (fixed 16 A), unplugging in between; returns the box's energy per session."""
    clock = FakeClock(wall_start=wall_start)
    model = AmtronModel(clock)
    run = Run(clock, model, db, mode="fixed", fixed_current_a=16)
    energies = []
    for minutes in (20, 10):
        await clock.advance(30)
        model.plug_in(BIG_CAR)
        await clock.advance(minutes * 60)
        model.unplug()
        energies.append(model.session_energy_wh)
    await clock.advance(30)
    newest_two = await run.history.sessions(limit=2)
    newest_one = await run.history.sessions(charger_id="wallbox", limit=1)
    await run.stop()
    assert [r.id for r in newest_two] == [2, 1] and [r.id for r in newest_one] == [2]
    return energies


async def test_two_sessions(tmp_path: Path) -> None:
    db = tmp_path / "sessions.db"
    energies = await two_sessions(db)
    first, second = rows(db)
    assert first["end_reason"] == second["end_reason"] == "unplugged"
    assert first["ended_at"] < second["started_at"]
    assert first["energy_wh"] == pytest.approx(energies[0], rel=0.01)
    assert second["energy_wh"] == pytest.approx(energies[1], rel=0.01)
    assert first["ended_at"] - first["started_at"] == pytest.approx(1200, abs=2)
    assert first["max_current_a"] == pytest.approx(16, abs=0.2) and first["phases"] == "3"


# -- the bookkeeping on hand-made snapshots ----------------------------------------------------


class Feed:
    """Hand-made readings for charger "wb1", one per second, into a History on a FakeController."""

    def __init__(self, db: Path, **history: Any) -> None:
        self.ctl = FakeController()
        self.history = History(SessionStore.open(str(db)), self.ctl, **history)
        self.t = self.ctl.clock.now()

    def tick(
        self, state: ChargerState | None, grid_w: float | None = None, *, error: str | None = None
    ) -> None:
        self.t += 1.0
        self.ctl.clock.set(self.t)
        meters = {}
        if grid_w is not None:
            meters["grid"] = MeterReading(meter_id="grid", read_at_s=self.t, grid_power_w=grid_w)
        reading = ChargerReading(
            charger_id="wb1",
            state=None if state is None else replace(state, read_at_s=self.t),
            age_s=0.0,
            connected=True,
            error=error,
        )
        snapshot = Snapshot(
            at_s=self.t, chargers=MappingProxyType({"wb1": reading}), meters=MappingProxyType(meters)
        )
        self.history.on_state(dataclasses.replace(self.ctl.published(), snapshot=snapshot))

    async def sessions(self) -> list[SessionRecord]:
        return list(reversed(await self.history.sessions(limit=10)))


IDLE = charger_state(
    evse_state=1, cp_state=10, power_total_w=0.0, session_energy_wh=900.0, session_duration_s=5000
)


def charging(power_w: float, energy_wh: float, duration_s: int, **changes: Any) -> ChargerState:
    return charger_state(
        power_total_w=power_w, session_energy_wh=energy_wh, session_duration_s=duration_s, **changes
    )


@pytest.mark.parametrize(
    ("grid_w", "sun_per_s", "unmetered_per_s"),
    [
        (-3000.0, 7000.0, 0.0),  # exporting: all of the car's power is sun
        (2000.0, 5000.0, 0.0),  # importing 2 kW: that part is not
        (9000.0, 0.0, 0.0),  # importing more than the car draws: none
        (None, 0.0, 7000.0),  # no meter reading: unknown, counted as not sun
    ],
)
async def test_sun_energy_is_the_power_not_imported(
    tmp_path: Path, grid_w: float | None, sun_per_s: float, unmetered_per_s: float
) -> None:
    feed = Feed(tmp_path / "s.db")
    feed.tick(IDLE)
    for s in range(61):
        feed.tick(charging(7000.0, 7000.0 * s / 3600, s), grid_w)
    (rec,) = await feed.sessions()
    assert rec.sun_wh == pytest.approx(min(sun_per_s * 60 / 3600, rec.energy_wh))
    assert rec.unmetered_wh == pytest.approx(unmetered_per_s * 60 / 3600)
    # The car connected between the idle read and the first: half that interval is counted too.
    assert rec.energy_wh == pytest.approx(7000.0 * 60.5 / 3600)
    await feed.history.close()


async def test_energy_follows_the_box_lifetime_counter_not_its_session_register(tmp_path: Path) -> None:
    feed = Feed(tmp_path / "s.db")
    total = IDLE.energy_total_wh
    feed.tick(IDLE)
    # The state says "connected" at once, the session block (read every few s) still shows the last session.
    for _ in range(3):
        feed.tick(replace(IDLE, evse_state=5, cp_state=28, power_total_w=3600.0))
    (rec,) = await feed.sessions()
    # Integrated (trapezoids: from the idle read on), not the old 900 Wh.
    assert rec.energy_wh == pytest.approx(2.5 * 3600.0 / 3600)
    feed.tick(charging(3600.0, 4.0, 4, energy_total_wh=total + 4.0))  # the counter was read again
    (rec,) = await feed.sessions()
    assert rec.energy_wh == pytest.approx(4.0)  # the box's own count replaces ours
    feed.tick(charging(3600.0, 4.0, 4, energy_total_wh=total + 4.0))  # not read this second: ours is added
    (rec,) = await feed.sessions()
    assert rec.energy_wh == pytest.approx(5.0)
    feed.tick(charging(3600.0, 0.0, 0, energy_total_wh=total + 4.5))  # lower than ours: never backwards
    (rec,) = await feed.sessions()
    assert rec.energy_wh == pytest.approx(5.0)
    feed.tick(charging(3600.0, 0.0, 0, energy_total_wh=total + 9e6))  # garbled: not this session's
    (rec,) = await feed.sessions()
    assert rec.energy_wh == pytest.approx(5.5)
    await feed.history.close()


async def test_an_error_does_not_end_a_session_and_a_box_reset_after_an_outage_starts_one(
    tmp_path: Path,
) -> None:
    feed = Feed(tmp_path / "s.db")
    total = IDLE.energy_total_wh
    feed.tick(IDLE)
    feed.tick(charging(7000.0, 0.0, 0))
    feed.tick(charging(7000.0, 2.0, 1, energy_total_wh=total + 2.0))
    feed.tick(charging(0.0, 2.0, 2, evse_state=6, cp_state=27, error_code=200))  # EM lost: car still there
    feed.tick(charging(0.0, 2.0, 3), error="read failed")  # skipped
    feed.tick(charging(7000.0, 2.0, 4))
    feed.tick(charging(7000.0, 0.5, 1, sessions_total=157))  # a new session on the box: a quick replug
    assert len(await feed.sessions()) == 1
    for _ in range(12):  # a read outage longer than a replug
        feed.tick(None, error="read failed")
    feed.tick(charging(7000.0, 0.3, 1, sessions_total=158, energy_total_wh=total + 40.0))
    old, new = await feed.sessions()
    assert old.end_reason == "new session on the box" and new.ended_at is None
    assert old.ended_at is not None and old.ended_at <= new.started_at
    assert old.energy_wh + new.energy_wh == pytest.approx(40.0)  # the counter's rise, split at the box's
    assert new.energy_wh == pytest.approx(0.3)
    for _ in range(11):  # unplugged, and not back within REPLUG_S
        feed.tick(replace(IDLE, sessions_total=158))
    _, new = await feed.sessions()
    assert new.end_reason == "unplugged" and new.ended_at == pytest.approx(feed.ctl.clock.wall() - 10)
    await feed.history.close()


@pytest.mark.parametrize(
    ("evse", "cp", "present"),
    [
        (1, 10, False),
        (2, 11, True),
        (5, 28, True),
        (6, 27, True),
        (6, 10, False),
        (6, 14, None),
        (0, 0, None),
    ],
)
def test_vehicle_present(evse: int, cp: int, present: bool | None) -> None:
    assert vehicle_present(charger_state(evse_state=evse, cp_state=cp)) is present


async def test_modes_and_an_override_are_recorded(tmp_path: Path) -> None:
    from surplus.api import Override

    feed = Feed(tmp_path / "s.db")
    feed.tick(charging(7000.0, 0.0, 0))  # already connected at the start: adopted
    feed.ctl.modes["wb1"] = "fixed"
    feed.ctl.current_override["wb1"] = Override(current_a=10)
    feed.tick(charging(7000.0, 2.0, 1))
    (rec,) = await feed.sessions()
    assert rec.modes == ("pv", "fixed", "override")
    assert rec.started_at == pytest.approx(feed.ctl.clock.wall() - 1)
    await feed.history.close()


# -- the file ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: (p / "file").write_text("x") and p / "file" / "sessions.db",
            "cannot create its directory",
        ),
        (lambda p: p, "is a directory"),
        (lambda p: (p / "x.db").write_text("not sqlite " * 200) and p / "x.db", "not a database"),
    ],
)
def test_unusable_files_are_one_line_errors(tmp_path: Path, make: Any, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(HistoryError, match=message) as err:
        SessionStore.open(str(path))
    assert "\n" not in str(err.value) and str(err.value).startswith(f"history.path {path}: ")


def test_a_newer_schema_or_a_foreign_database_is_refused(tmp_path: Path) -> None:
    newer, foreign = tmp_path / "newer.db", tmp_path / "foreign.db"
    SessionStore.open(str(newer)).close()
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version = 7")
    with pytest.raises(HistoryError, match="schema version 7 is newer than this surplus knows"):
        SessionStore.open(str(newer))
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(HistoryError, match="not a surplus session history"):
        SessionStore.open(str(foreign))
    store = SessionStore.open(str(tmp_path / "fresh.db"))  # and a good one opens, in WAL mode
    store.close()
    with sqlite3.connect(tmp_path / "fresh.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3


async def test_a_version_1_file_is_upgraded_and_its_open_row_continues(tmp_path: Path) -> None:
    db = tmp_path / "v1.db"
    with sqlite3.connect(db) as conn:  # the schema as version 1 made it, with an open session
        conn.execute(
            "CREATE TABLE sessions (id INTEGER PRIMARY KEY, charger_id TEXT NOT NULL, started_at REAL NOT NULL,"
            " ended_at REAL, updated_at REAL NOT NULL, energy_wh REAL NOT NULL, sun_wh REAL NOT NULL,"
            " unmetered_wh REAL NOT NULL, max_current_a REAL NOT NULL, phases TEXT NOT NULL,"
            " modes TEXT NOT NULL, box_sessions_total INTEGER, end_reason TEXT)"
        )
        conn.execute(
            "INSERT INTO sessions VALUES (1, 'wb1', 100.0, NULL, 900.0, 5000.0, 0, 0, 16, '3', 'pv', 156, NULL)"
        )
        conn.execute("PRAGMA user_version = 1")
    feed = Feed(db)
    feed.tick(charging(7000.0, 5200.0, 3000))  # still the same session on the box
    (rec,) = await feed.sessions()
    assert rec.id == 1 and rec.ended_at is None
    assert rec.energy_wh == pytest.approx(5200.0)  # what the box counted meanwhile is added
    assert rec.unmetered_wh == pytest.approx(200.0)
    assert rec.car_full is False  # the car draws now (the old row did not say)
    await feed.history.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        (start, full) = conn.execute("SELECT box_energy_start_wh, car_full FROM sessions").fetchone()
    assert full == 0
    assert start == pytest.approx(IDLE.energy_total_wh - 5200.0)  # counted on from the box's counter now


def test_config_history_section(tmp_path: Path) -> None:
    assert load_config(None, {}).history.path is None  # the demo keeps no history
    cfg = tmp_path / "c.yaml"
    cfg.write_text("history:\n  path: /var/lib/surplus/sessions.db\n")
    h = load_config(str(cfg), {}).history
    assert h.path == "/var/lib/surplus/sessions.db" and h.flush_every_s == 60
    cfg.write_text("history:\n  path: s.db\n  flush_every_s: 0\n")
    with pytest.raises(ConfigError, match=r"c.yaml:3: history.flush_every_s: 0 s must be greater than 0 s"):
        load_config(str(cfg), {})


def test_an_unwritable_path_stops_the_start_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("in the way")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"history:\n  path: {tmp_path / 'file' / 'sessions.db'}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "surplus.cli", "run", "-c", str(cfg), "--no-rpc"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "history.path" in errors[0] and "a file is in the way" in errors[0]
    assert "Traceback" not in proc.stderr


# -- the tick observer -------------------------------------------------------------------------


async def test_a_failing_tick_observer_is_logged_once_and_isolated(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    model = AmtronModel(clock, ev=EvProfile())
    controller, bus = build_controller(clock, model)
    seen: list[float] = []

    def broken(_snapshot: Snapshot) -> None:
        raise RuntimeError("boom")

    controller.add_tick_observer(broken)
    controller.add_tick_observer(lambda s: seen.append(s.at_s))
    with caplog.at_level(logging.ERROR, logger="surplus.loop"):
        task = asyncio.ensure_future(controller.run(duration_s=10))
        await clock.advance(11)
        await task
    await bus.close()
    assert len([r for r in caplog.records if "tick observer failed" in r.message]) == 1
    assert len(seen) >= 9 and controller.ticks >= 9


# -- getSessions over the real stack -----------------------------------------------------------


async def test_get_sessions_over_the_real_rpc_stack(tmp_path: Path) -> None:
    db = tmp_path / "sessions.db"
    await two_sessions(db, wall_start=time.time() - 86400)  # yesterday's two sessions
    config = STACK_CONFIG + f"history:\n  path: {db}\n  flush_every_s: 1\n"
    async with full_stack(config) as (stack, _model, url), aiohttp.ClientSession() as http:

        async def call(params: Any) -> dict[str, Any]:
            req = {"jsonrpc": "2.0", "method": "getSessions", "params": params, "id": 1}
            async with http.post(url, data=json.dumps(req)) as resp:
                reply: dict[str, Any] = await resp.json()
                return reply

        async with asyncio.timeout(10):  # the tick that read the charger may still be writing
            while not stack.history.open_sessions():  # noqa: ASYNC110  (polling the loop's state)
                await asyncio.sleep(0.05)
        reply = await call({})
        discover = {"jsonrpc": "2.0", "method": "rpc.discover", "id": 2}
        async with http.post(url, data=json.dumps(discover)) as resp:
            doc = (await resp.json())["result"]
        (spec,) = [m for m in doc["methods"] if m["name"] == "getSessions"]
        jsonschema.validate(reply["result"], spec["result"]["schema"])  # the documented shape
        sessions = reply["result"]["data"]
        # The simulator's car is plugged in: its session is open, and the newest.
        assert [s["id"] for s in sessions] == [3, 2, 1]
        live = sessions[0]
        assert live["open"] is True and live["end"] is None and live["modes"] == ["fixed"]
        assert live["chargerId"] == "wallbox" and live["start"].endswith("Z")
        done = sessions[1]
        assert done["open"] is False and done["endReason"] == "unplugged" and done["end"] > done["start"]
        assert done["durationSeconds"] == pytest.approx(600, abs=2)
        assert done["energyWh"] > 1000 and done["sunEnergyWh"] == 0 and done["sunShare"] == 0
        assert done["phases"] == [3] and done["maxCurrent"] == pytest.approx(16, abs=0.2)
        assert [s["id"] for s in (await call({"limit": 1, "chargerId": "wallbox"}))["result"]["data"]] == [3]
        assert [s["id"] for s in (await call([None, 2]))["result"]["data"]] == [3, 2]

        for bad in (
            {"limit": 0},
            {"limit": 1001},
            {"limit": "3"},
            {"limit": 1.5},
            {"chargerId": "nope"},
            {"x": 1},
        ):
            error = (await call(bad))["error"]
            assert error["code"] == -32602, (bad, error)
            assert "\n" not in error["message"]
    # Shut down: the open session was saved and stays open (it continues after a restart).
    live_row = rows(db)[-1]
    assert live_row["ended_at"] is None and live_row["energy_wh"] >= 0


@pytest.mark.integration
async def test_a_quick_replug_on_the_real_stack_stays_one_session(tmp_path: Path) -> None:
    """Simulator over RTU-over-TCP, driver, loop and a SQLite file on the system clock: unplug for 0.3 s."""
    db = tmp_path / "sessions.db"
    fast = STACK_CONFIG.replace("current_a: 10", "current_a: 16")  # 11 kW: the session register moves
    config = fast + f"history:\n  path: {db}\n  flush_every_s: 1\n"
    async with full_stack(config) as (stack, model, _url):
        counter_at_start = model.energy_total_wh
        async with asyncio.timeout(10):
            while not stack.history.open_sessions():  # noqa: ASYNC110  (polling the loop's state)
                await asyncio.sleep(0.05)
            while model.charging_power_w <= 0:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await asyncio.sleep(5.0)  # over 10 Wh: the box's session register shows it
        model.unplug()
        await asyncio.sleep(0.3)
        model.plug_in(EvProfile())
        await asyncio.sleep(6.0)  # the box's session registers are read again (every 5 s): reset
        box_wh = model.energy_total_wh - counter_at_start
        assert model.sessions_total == 43  # the box counts two sessions
    (row,) = rows(db)  # we count one, saved open at the stop, with what the box counted
    assert row["ended_at"] is None and row["box_sessions_total"] in (42, 43)
    assert box_wh > 5
    assert row["energy_wh"] == pytest.approx(box_wh, abs=10.0 + 0.01 * box_wh)


# -- whether the car was found full, and the strategies' past sessions -------------------------

OFFERED_NOTHING_DRAWN = {"evse_state": EvseState.READY, "cp_state": 27}


def session(feed: Feed, *, drawn_s: int, idle_s: int, released: bool = True) -> None:
    """Plug in: the car draws 7 kW for ``drawn_s``, then takes nothing while offered 16 A
    (or, not ``released``, is not offered) for ``idle_s``; unplugged for longer than a replug."""
    for s in range(drawn_s):
        feed.tick(charging(7000.0, 7000.0 * s / 3600, s))
    for s in range(idle_s):
        feed.tick(
            charging(
                0.0, 7000.0 * drawn_s / 3600, drawn_s + s, charging_release=released, **OFFERED_NOTHING_DRAWN
            )
        )
    for _ in range(int(REPLUG_S) + 2):
        feed.tick(IDLE)


async def test_a_session_records_whether_the_car_was_found_full_and_that_outlives_a_restart(
    tmp_path: Path,
) -> None:
    db = tmp_path / "s.db"
    feed = Feed(db)
    feed.tick(IDLE)
    assert feed.history.past_sessions("wb1") == ()
    session(feed, drawn_s=600, idle_s=int(IDLE_S + 30) + 5)  # full: 5 min and the box's 30 s pause
    session(feed, drawn_s=600, idle_s=int(IDLE_S + 30) - 5)  # unplugged 10 s too soon to tell
    session(feed, drawn_s=0, idle_s=600, released=False)  # never drew, never offered: says nothing
    first, second, third = await feed.sessions()
    assert (first.car_full, second.car_full, third.car_full) == (True, False, None)
    past = feed.history.past_sessions("wb1")
    assert [p.car_full for p in past] == [True, False]
    assert [p.ended_at for p in past] == [first.ended_at, second.ended_at]
    assert past[0].energy_wh == pytest.approx(first.energy_wh)
    await feed.history.close()
    assert [r["car_full"] for r in rows(db)] == [1, 0, None]

    again = Feed(db)  # a restart: the strategies get the same sessions from the file
    assert again.history.past_sessions("wb1") == past
    assert again.history.past_sessions("elsewhere") == ()
    await again.history.close()


async def test_pv_weighs_imports_by_the_history_s_sessions_after_a_restart(tmp_path: Path) -> None:
    """Five sessions that ended full are in the file: the pv started on it weighs an import 10."""
    db = tmp_path / "s.db"
    feed = Feed(db)
    feed.tick(IDLE)
    for _ in range(SESSIONS_KEPT):
        session(feed, drawn_s=60, idle_s=int(IDLE_S + 30) + 5)
    await feed.history.close()
    with sqlite3.connect(db) as conn:  # the sessions of the controller's charger
        conn.execute("UPDATE sessions SET charger_id = 'wallbox'")

    clock = FakeClock()
    weights = []
    for history in (True, False):
        model = AmtronModel(clock, ev=BIG_CAR)
        meters = [grid_meter(clock, model)]
        controller, bus = build_controller(clock, model, meters=meters, mode="pv")
        kept = attach(controller, SessionStore.open(str(db))) if history else None
        task = asyncio.ensure_future(controller.run())
        await clock.advance(30)
        record = controller.last_decision("wallbox")
        assert record is not None
        weights.append(dict(record.decision.figures)["import_weight"])
        controller.stop()
        await clock.advance(20)
        await task
        if kept is not None:
            await kept.close()
        await bus.close()
    assert weights == [FULL_CAR_WEIGHT, 3.0]  # without the history it knows no session
