"""Session history: the real loop, driver and AMTRON model on a fake clock, into a real SQLite file."""

from __future__ import annotations

import asyncio
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

from surplus.clock import FakeClock
from surplus.config import ConfigError, load_config
from surplus.history import History, HistoryError, SessionRecord, SessionStore, attach, vehicle_present
from surplus.meter import Meter, MeterEnv
from surplus.plugins import collect_meters, make_plugin_manager
from surplus.sim.model import AmtronModel, EvProfile
from surplus.types import ChargerReading, ChargerState, MeterReading, Snapshot

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
        self.history.on_tick(
            Snapshot(
                at_s=self.t, chargers=MappingProxyType({"wb1": reading}), meters=MappingProxyType(meters)
            )
        )

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
    assert rec.energy_wh == pytest.approx(7000.0 * 60 / 3600)
    await feed.history.close()


async def test_stale_session_registers_at_a_plug_in_are_not_this_session(tmp_path: Path) -> None:
    feed = Feed(tmp_path / "s.db")
    feed.tick(IDLE)
    # The state says "connected" at once, the session block (read every few s) still shows the last session.
    for _ in range(3):
        feed.tick(replace(IDLE, evse_state=5, cp_state=28, power_total_w=3600.0))
    (rec,) = await feed.sessions()
    assert rec.energy_wh == pytest.approx(2 * 3600.0 / 3600)  # integrated, not the old 900 Wh
    feed.tick(charging(3600.0, 4.0, 4))  # the box has reset and counts this session
    (rec,) = await feed.sessions()
    assert rec.energy_wh == pytest.approx(4.0)  # the box's own count replaces ours
    feed.tick(charging(3600.0, 4.0, 4))  # not refreshed this second: ours is added
    (rec,) = await feed.sessions()
    assert rec.energy_wh == pytest.approx(5.0)
    await feed.history.close()


async def test_an_error_does_not_end_a_session_and_a_box_reset_starts_one(tmp_path: Path) -> None:
    feed = Feed(tmp_path / "s.db")
    feed.tick(IDLE)
    feed.tick(charging(7000.0, 0.0, 0))
    feed.tick(charging(7000.0, 2.0, 1))
    feed.tick(charging(0.0, 2.0, 2, evse_state=6, cp_state=27, error_code=200))  # EM lost: car still there
    feed.tick(charging(0.0, 2.0, 3), error="read failed")  # skipped
    feed.tick(charging(7000.0, 2.0, 4))
    assert len(await feed.sessions()) == 1
    feed.tick(charging(7000.0, 0.5, 1))  # the box counts a new session (unplug missed)
    old, new = await feed.sessions()
    assert old.end_reason == "new session on the box" and new.ended_at is None
    feed.tick(charging(0.0, 0.5, 1, evse_state=1, cp_state=10))
    _, new = await feed.sessions()
    assert new.end_reason == "unplugged"
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
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1


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
