"""The session state machine alone (surplus.sessions): readings in, row writes out; no file, no clock.

A scripted box: one reading a second, 11 kW while a car charges, the lifetime counter
following the energy. Each row is what the writes say about it at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from surplus.sessions import REPLUG_S, RowWrite, SessionRecord, Sessions, StoredRow
from surplus.types import EvseState

from .factories import charger_state

POWER_W = 11_000.0
T0 = 1000.0
WALL0 = 1_800_000_000.0


@dataclass
class Box:
    """A box that charges at 11 kW while a car is connected; its counters follow."""

    sessions: Sessions
    t: float = T0
    total_wh: float = 500_000.0
    session_wh: float = 0.0
    session_s: int = 0
    box_sessions: int = 40
    car: bool = False
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    next_id: int = 1

    def plug(self) -> None:
        self.car, self.session_wh, self.session_s = True, 0.0, 0
        self.box_sessions += 1

    def unplug(self) -> None:
        self.car = False

    def run(self, seconds: int) -> None:
        for _ in range(seconds):
            self.t += 1.0
            if self.car:
                self.total_wh += POWER_W / 3600
                self.session_wh += POWER_W / 3600
                self.session_s += 1
            state = charger_state(
                read_at_s=self.t,
                evse_state=EvseState.CHARGING if self.car else EvseState.IDLE,
                cp_state=28 if self.car else 26,
                power_total_w=POWER_W if self.car else 0.0,
                energy_total_wh=self.total_wh,
                session_energy_wh=self.session_wh,
                session_duration_s=self.session_s,
                sessions_total=self.box_sessions,
            )
            writes = self.sessions.observe(
                "wb1",
                state,
                at_s=self.t,
                wall=WALL0 + self.t,
                grid=-2000.0,
                modes=lambda: ("pv",),
                now_wall=WALL0 + self.t,
            )
            self.store(writes)

    def store(self, writes: list[RowWrite]) -> None:
        """What the file would do: insert (giving the row an id) or update."""
        for w in writes:
            if w.live.row_id is None:
                w.live.row_id, self.next_id = self.next_id, self.next_id + 1
            assert w.values[0] == "wb1"  # charger_id, the first column
            self.rows[w.live.row_id] = {
                "ended_at": w.values[2],
                "end_reason": w.values[11],
                "energy_wh": w.values[4],
            }


def fresh() -> Box:
    box = Box(Sessions(["wb1"], flush_every_s=60.0))
    box.run(5)  # no car: the counters are known
    return box


@pytest.mark.parametrize(
    ("script", "reasons"),
    [
        ([("plug",), ("run", 600), ("unplug",), ("run", 30)], ["unplugged"]),
        # Back within REPLUG_S: the same session.
        ([("plug",), ("run", 600), ("unplug",), ("run", int(REPLUG_S) - 2), ("plug",), ("run", 600),
          ("unplug",), ("run", 30)], ["unplugged"]),
        # Away longer: two sessions.
        ([("plug",), ("run", 600), ("unplug",), ("run", 60), ("plug",), ("run", 600), ("unplug",),
          ("run", 30)], ["unplugged", "unplugged"]),
        # A replug too quick for a reading: the box's new session continues ours.
        ([("plug",), ("run", 600), ("plug",), ("run", 600), ("unplug",), ("run", 30)], ["unplugged"]),
        # Still charging: the row stays open.
        ([("plug",), ("run", 600)], [None]),
    ],
    ids=["one", "replug-within-10s", "two", "unseen-replug", "open"],
)  # fmt: skip
def test_sessions_follow_the_plug_and_add_up_to_the_counter(
    script: list[tuple[Any, ...]], reasons: list[str | None]
) -> None:
    box = fresh()
    start_wh = box.total_wh
    for step in script:
        if step[0] == "run":
            box.run(step[1])
        else:
            getattr(box, step[0])()
    rows = [box.rows[i] for i in sorted(box.rows)]
    assert [r["end_reason"] for r in rows] == reasons
    if all(r["ended_at"] is not None for r in rows):
        assert sum(r["energy_wh"] for r in rows) == pytest.approx(box.total_wh - start_wh, rel=0.01)


def test_restore_closes_rows_of_chargers_no_longer_configured_and_keeps_the_others_pending() -> None:
    def row(rid: int, cid: str) -> StoredRow:
        rec = SessionRecord(
            id=rid, charger_id=cid, started_at=WALL0, ended_at=None, updated_at=WALL0 + 60, energy_wh=100.0,
            sun_wh=0.0, unmetered_wh=0.0, max_current_a=16.0, phases=(3,), modes=("pv",),
        )  # fmt: skip
        return StoredRow(rec, 41, 500_000.0)

    sessions = Sessions(["wb1"])
    writes = sessions.restore({"wb1": (WALL0 - 600, 499_900.0)}, [row(1, "wb1"), row(2, "gone")])
    (orphan,) = writes
    assert orphan.live.row_id == 2 and orphan.values[11] == "charger not configured"
    assert orphan.values[2] == WALL0 + 60  # closed at its last save
    assert sessions.open_sessions() == []  # wb1's row waits for the box's first reading
