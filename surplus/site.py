"""The site: what the chargers share (the surplus, the circuits' headroom).

Moved out of the loop's controller unchanged in substance: :meth:`Site._share_surplus`
splits the surplus among the chargers in a sharing mode (:mod:`surplus.sharing`), and
the circuit methods count every charger's load on the shared fuses
(:mod:`surplus.circuits`) and fit a decision into what is left. During a tick the
loads live in a :class:`~surplus.circuits.LoadBook` (``begin_tick`` / ``end_tick``), so
each charger decided after a write sees that write; between ticks (an RPC call) they
are counted afresh. The per-charger controls call these methods.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Callable, Mapping

from .circuit_meters import OtherLoadWatch
from .circuits import (
    OTHER_LOAD_HOLD_MARGIN_S,
    CircuitTree,
    Load,
    LoadBook,
    OtherLoad,
    Room,
    counted_load,
    counted_others,
)
from .governor import SAME_CURRENT_A, GovernorMemory, SafetyGovernor
from .sharing import CircuitRoom, Share, Sharer, split_surplus
from .slot import ChargerSlot
from .strategy import IdleCar, PastSession, SurplusShare
from .types import MIN_CURRENT_A, ChargerReading, Decision, Snapshot

#: Modes whose strategies share one surplus when several chargers run them (they read
#: ``StrategyContext.surplus_share``); a box in another mode is part of the house load.
SHARING_MODES = frozenset({"pv", "minpv"})


class Site:
    """The chargers together: surplus sharing and circuit headroom."""

    def __init__(
        self,
        *,
        slots: Mapping[str, ChargerSlot],
        governor: SafetyGovernor,
        circuits: CircuitTree | None,
        stale_after_s: float = 10.0,
    ) -> None:
        #: The shared fuses (None: each charger has only its own limits).
        self.circuits = circuits
        self._slots = slots
        self._governor = governor
        #: Held from computing a charger's headroom until its write is done, so two
        #: chargers (a tick and an RPC call) never both fill the same headroom.
        self.circuit_lock = asyncio.Lock()
        #: During a tick's decisions: every charger's counted load, updated after each write.
        self._book: LoadBook | None = None
        #: The latest snapshot (the tick's, once it began).
        self._snapshot = Snapshot(at_s=-math.inf)
        #: This tick's split of the surplus (empty unless several chargers share it).
        self.shares: dict[str, SurplusShare] = {}
        #: What each sharing charger's strategy was granted by the split this tick (W).
        self._granted: dict[str, float] = {}
        #: Per charger: whether its car has drawn nothing though offered 6 A or more (a full
        #: car gets only what the other sharers cannot take).
        self._idle: dict[str, IdleCar] = {}
        #: Each charger's past sessions (from the session history; None: no history kept).
        self.past_sessions: Callable[[str], tuple[PastSession, ...]] | None = None
        #: Circuits with their own meter: the other loads on them (see surplus.circuits).
        self._other_loads = (
            OtherLoadWatch(circuits, hold_s=stale_after_s + OTHER_LOAD_HOLD_MARGIN_S)
            if circuits is not None and any(c.meter for c in circuits.circuits.values())
            else None
        )

    def begin_tick(self, snapshot: Snapshot) -> None:
        """A tick's decisions start on ``snapshot``: count the loads once, split the surplus."""
        self._snapshot = snapshot
        if self.circuits is not None:
            if self._other_loads is not None:
                self._other_loads.update(snapshot.at_s, snapshot.meters, snapshot.chargers)
            self._book = LoadBook(self.circuits, self.circuit_loads(snapshot), self._others())
        self._granted = {}
        self.shares = self._share_surplus(snapshot)

    def granted(self, charger_id: str) -> float:
        """What the surplus split granted this charger this tick (W; inf when it does not share)."""
        return self._granted.get(charger_id, math.inf)

    def _others(self) -> Mapping[str, OtherLoad]:
        """The circuits' other loads as of the last tick (empty: no circuit has a meter)."""
        return {} if self._other_loads is None else self._other_loads.current

    def end_tick(self) -> None:
        self._book = None

    def set_snapshot(self, snapshot: Snapshot) -> None:
        """The latest snapshot (what ``circuit_loads`` counts by default)."""
        self._snapshot = snapshot

    # -- sharing the surplus ---------------------------------------------------
    def _share_surplus(self, snapshot: Snapshot) -> dict[str, SurplusShare]:
        """Who shares the surplus this tick, and how (see :mod:`surplus.sharing`).

        Chargers in a sharing mode, reached, read, and not overridden by a person take
        part; with fewer than two nobody shares (one charger decides exactly as alone).
        """
        if len(self._slots) < 2:  # one charger decides alone (and this runs every tick)
            return {}
        now = snapshot.at_s
        tree = self.circuits
        sharers: list[Sharer] = []
        power: dict[str, float] = {}
        for slot in self._slots.values():
            reading = snapshot.chargers[slot.charger_id]
            state = reading.state
            if (
                not slot.started
                or slot.mode not in SHARING_MODES
                or slot.override is not None
                or state is None
            ):
                self._idle.pop(slot.charger_id, None)
                continue
            cid = slot.charger_id
            phases = self._present_phases(cid, reading)
            if state.capabilities.grid_phases == 1:
                phases = 1
            ceiling = self._governor.ceiling_a(reading)  # the circuits: CircuitRoom below
            sent = self._governor.memory(cid).charging
            charging = sent if sent is not None else state.charging
            volts = [v for v in (state.voltage_l1_v, state.voltage_l2_v, state.voltage_l3_v)[:phases]]
            line_v = sum(volts) / len(volts) if volts and all(180.0 <= v <= 260.0 for v in volts) else 230.0
            sharers.append(
                Sharer(
                    charger_id=cid,
                    priority=slot.priority,
                    phases=phases,
                    volts=line_v,
                    max_a=ceiling,
                    grid_phases=tree.grid_phases(cid, phases) if tree is not None else (0, 1, 2)[:phases],
                    charging=charging,
                    can_start=charging or self._governor.resume_at_s(cid) <= now,
                    takes_nothing=self._idle.setdefault(cid, IdleCar()).update(state, now, offering=charging),
                )
            )
            power[cid] = state.power_total_w if math.isfinite(state.power_total_w) else 0.0
        if len(sharers) < 2:
            return {}
        # A sharer whose strategy asks for no share this tick (e.g. paused within its 5 minutes)
        # was granted nothing: it is among the first to give way.
        self._granted = {s.charger_id: 0.0 for s in sharers}
        total_w = sum(power.values())
        frozen = tuple(sharers)
        rooms = tuple(self._circuit_rooms(snapshot, frozenset(power)))

        # The sharers of one tick mostly see the same surplus (the same meter, the same
        # chargers): split it once per value, not once per charger.
        splits: dict[float, Mapping[str, Share]] = {}

        def splitter(cid: str) -> Callable[[float], tuple[float, str]]:
            def split(surplus_w: float) -> tuple[float, str]:
                if surplus_w not in splits:
                    splits[surplus_w] = split_surplus(surplus_w, frozen, rooms)
                share = splits[surplus_w][cid]
                self._granted[cid] = share.budget_w
                return share.budget_w, share.why

            return split

        return {
            s.charger_id: SurplusShare(
                others_power_w=total_w - power[s.charger_id], split=splitter(s.charger_id)
            )
            for s in sharers
        }

    def _circuit_rooms(self, snapshot: Snapshot, sharing: frozenset[str]) -> list[CircuitRoom]:
        """Each circuit above a sharing charger: its limit less what the others beneath draw."""
        tree = self.circuits
        if tree is None:
            return []
        loads = self._book.loads if self._book is not None else self.circuit_loads(snapshot)
        besides = counted_others(tree, self._others())
        rooms = []
        for circuit in tree.circuits.values():
            members = tree.members(circuit.id)
            sharers = frozenset(m for m in members if m in sharing)
            if not sharers:
                continue
            others = [self._reserved(m, loads[m]) for m in members if m not in sharing and m in loads]
            others.append((besides[circuit.id][0], besides[circuit.id][1], besides[circuit.id][2]))
            room = tuple(circuit.limit_a - sum(load[g] for load in others) for g in range(3))
            rooms.append(CircuitRoom(id=circuit.id, room_a=(room[0], room[1], room[2]), members=sharers))
        return rooms

    def _reserved(self, charger_id: str, load: Load) -> Load:
        """What a charger outside the sharing holds of a circuit: its load, or what a person asked
        it to charge at when that is more (the surplus never takes a person's room)."""
        override = self._slots[charger_id].override
        if (
            self.circuits is None
            or override is None
            or override.current_a is None
            or override.charge is False
        ):
            return load
        phases = override.phases or self._governor.memory(charger_id).phases or 3
        asked = self.circuits.grid_load(
            charger_id, [override.current_a if i < phases else 0.0 for i in range(3)]
        )
        return (max(load[0], asked[0]), max(load[1], asked[1]), max(load[2], asked[2]))

    # -- circuits ----------------------------------------------------------
    def _present_phases(self, charger_id: str, reading: ChargerReading) -> int:
        """The phases the box is set to now: what was sent, else its readback; 3 when unknown."""
        sent = self._governor.memory(charger_id).phases
        if sent is not None:
            return sent
        if reading.state is not None and reading.state.requested_phases == 1:
            return 1
        return 3

    def circuit_loads(self, snapshot: Snapshot | None = None) -> dict[str, Load]:
        """Every charger's counted load on the grid's phases (see :mod:`surplus.circuits`)."""
        tree = self.circuits
        if tree is None:
            return {}
        snapshot = snapshot or self._snapshot
        loads: dict[str, Load] = {}
        for cid in self._slots:
            reading = snapshot.chargers.get(cid) or ChargerReading(charger_id=cid, state=None)
            limits = self._governor.limits(cid)
            if limits is None:  # pragma: no cover - every slot has limits
                continue
            box, _ = counted_load(reading, self._governor.memory(cid), limits)
            loads[cid] = tree.grid_load(cid, box)
        return loads

    def _room(self, charger_id: str, snapshot: Snapshot, phases: int) -> Room | None:
        if self.circuits is None:
            return None
        book = self._book
        if book is None or snapshot is not self._snapshot:  # between ticks (an RPC call): afresh
            book = LoadBook(self.circuits, self.circuit_loads(snapshot), self._others())
        return book.headroom(charger_id, phases)

    def _update_load(
        self, charger_id: str, reading: ChargerReading, attempted: GovernorMemory | None = None
    ) -> None:
        """After a write: the charger counts at what it was just set to, for those decided after it.

        ``attempted``: the memory of a write that failed, which may have been done in part;
        until the next read shows what happened, the charger counts at the higher of both.
        """
        book, limits = self._book, self._governor.limits(charger_id)
        if book is None or limits is None:
            return
        memory = self._governor.memory(charger_id)
        box, _ = counted_load(reading, memory, limits)
        sent: Load | None = None
        if attempted is not None:
            tried, _ = counted_load(reading, attempted, limits)
            box = (max(box[0], tried[0]), max(box[1], tried[1]), max(box[2], tried[2]))
        elif memory.current_a is not None and memory.charging is not None:
            amps, phases = (memory.current_a if memory.charging else 0.0), (memory.phases or 3)
            sent = book.tree.grid_load(charger_id, [amps if i < phases else 0.0 for i in range(3)])
        book.set(charger_id, book.tree.grid_load(charger_id, box), sent=sent)

    def _fit_circuits(
        self, slot: ChargerSlot, decision: Decision, reading: ChargerReading, snapshot: Snapshot
    ) -> tuple[Decision, Room | None]:
        """The decision within the circuits' headroom, and that headroom (None: no circuit).

        A switch to three phases that the circuits cannot carry is dropped (the box stays
        on one); a charge the circuits cannot carry at the minimum becomes a pause -- the
        governor refuses such a charge but never invents the pause.
        """
        if self.circuits is None or not decision.charge:
            return decision, None
        present = self._present_phases(slot.charger_id, reading)
        min_a = MIN_CURRENT_A
        phases = 3 if 3 in (present, decision.phases) else 1
        room = self._room(slot.charger_id, snapshot, phases)
        if room is None:
            return decision, None
        if room.amps < min_a and decision.phases == 3 and present == 1:
            single = self._room(slot.charger_id, snapshot, 1)
            if single is not None and single.amps >= min_a:
                decision = dataclasses.replace(
                    decision, phases=None, reason=f"{decision.reason}; stays on 1 phase ({room.why})"
                )
                room = single
        charging_at = self._governor.memory(slot.charger_id)
        present_a = charging_at.current_a if charging_at.charging else None
        if room.amps < min_a and present_a is not None and self._book is not None:
            # Pauses or decreases written this tick will make the room once their boxes
            # follow (seconds): this box holds (never rises) rather than pausing for 5 minutes.
            later = self._book.headroom(slot.charger_id, phases, once_followed=True)
            if later is not None and later.amps >= min_a:
                hold = max(min_a, min(present_a, later.amps, decision.current_a or present_a))
                return (
                    dataclasses.replace(
                        decision,
                        current_a=hold,
                        phases=None,
                        reason=f"{decision.reason}; holds {hold:g} A until the boxes giving way follow "
                        f"({later.why} then)",
                    ),
                    Room(amps=hold, why=room.why),
                )
        if room.amps < min_a:
            return (
                dataclasses.replace(
                    decision,
                    charge=False,
                    current_a=None,
                    phases=None,
                    reason=f"{decision.reason}; paused: {room.why}, below {min_a:g} A",
                ),
                room,
            )
        wanted = decision.current_a
        if wanted is not None and wanted >= room.amps - SAME_CURRENT_A:  # the circuit is what binds
            decision = dataclasses.replace(decision, reason=f"{decision.reason}; {room.why}")
        return decision, room
