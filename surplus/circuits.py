"""Circuits: per-phase current limits shared by several chargers (the shared fuse).

A site is a tree of circuits (house connection -> sub-distribution -> ...), each
with a limit per phase. Every charger hangs under one circuit and is wired to the
grid's phases in some rotation: its L1, L2 and L3 may be the grid's L2, L3 and L1,
so a single-phase car on that box loads the grid's L2.

:class:`CircuitTree` answers one question for the loop: how many amps per phase
may this charger take *now*, given what the other chargers draw or are set to?
For each circuit from the charger up to the root and each grid phase the charger
would draw on, the headroom is the circuit's limit minus the others' load on
that phase; the tightest one is passed to the governor as ``shared_headroom_a``.

What the others count (:func:`counted_load`, per box phase, then rotated onto
the grid's phases) is the larger of what they were set to and what they draw:

* set to: the last current sent while charging (governor memory), or the box's
  own readback when that is higher (a write the memory does not know about, a
  restart); a paused box is set to nothing. Set to on one phase for a box sent
  to (or reading back) one phase, on all three otherwise.
* draw: the measured phase currents of the last reading (a car that has not yet
  followed a decrease still counts at what it draws), where they exceed the
  setpoint by more than ``DRAW_TOLERANCE_A`` (the measurement's noise).
* an unreachable box counts at its last known values, which is what it keeps
  doing, or at its own heartbeat-loss fallback current (0x030E) when that is
  higher; a box never read and never written counts at its maximum on all
  three phases (the safe side).

A circuit may have its own meter (``circuits[].meter``) measuring the current on
each grid phase of everything beneath it, the chargers included. What it measures
besides the chargers' own measured currents are the circuit's *other loads*
(an oven, a heat pump); they take their share of the limit before any charger.
:class:`surplus.circuit_meters.OtherLoadWatch` keeps that estimate per circuit at its peak over the last
``hold_s`` (longer than a meter reading may lag a charger's, so a charger that just
rose is never mistaken for other loads that went away). While the meter fails, the
last estimate holds for ``hold_s``; after that the other loads count at the
circuit's ``meter_lost_load_a`` (default: its whole limit, so the chargers beneath
it pause: the safe side, as for a box of unknown state).

Pure functions and a frozen tree: the loop gives the readings and memories.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .governor import GovernorMemory, Limits
from .types import MAX_CURRENT_A, MIN_CURRENT_A, ChargerReading

#: Grid phase names; a rotation lists, for the box's L1, L2 and L3, the grid phase it is wired to.
PHASES = ("L1", "L2", "L3")
STANDARD_ROTATION = (0, 1, 2)

#: A measured phase current counts where it exceeds the setpoint by more than this (meter noise).
DRAW_TOLERANCE_A = 0.3

#: A circuit meter's other-load estimate is held at its peak for the meters' staleness
#: limit plus this: a meter reading may lag a charger's by up to that limit, and a box
#: follows a new setpoint within the governor's 5 s spacing.
OTHER_LOAD_HOLD_MARGIN_S = 5.0

#: Amps per grid phase (L1, L2, L3).
Load = tuple[float, float, float]


@dataclass(frozen=True, slots=True, kw_only=True)
class Circuit:
    """One node of the tree: a per-phase limit (A) and the circuit it hangs under (None: a root)."""

    id: str
    limit_a: float
    parent: str | None = None
    #: The meter measuring this circuit's phase currents (all its loads), if any.
    meter: str | None = None
    #: Other loads counted while that meter fails (None: the whole limit).
    meter_lost_load_a: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Wiring:
    """How one charger is connected: its circuit and the grid phases of its L1, L2, L3."""

    circuit: str
    rotation: tuple[int, int, int] = STANDARD_ROTATION


def rotation_of(names: Sequence[str]) -> tuple[int, int, int]:
    """``["L2", "L3", "L1"]`` -> ``(1, 2, 0)``; anything but a permutation of L1..L3 is a ValueError."""
    if sorted(names) != list(PHASES):
        raise ValueError(f"phase rotation must name L1, L2 and L3 once each, not {list(names)}")
    a, b, c = (PHASES.index(n) for n in names)
    return a, b, c


def on_grid(box_load: Sequence[float], rotation: Sequence[int]) -> Load:
    """Per-box-phase amps moved onto the grid's phases."""
    grid = [0.0, 0.0, 0.0]
    for box_phase, amps in enumerate(box_load):
        grid[rotation[box_phase]] += amps
    return grid[0], grid[1], grid[2]


def _setpoint(reading: ChargerReading, memory: GovernorMemory) -> tuple[float, int] | None:
    """(amps, phases) the box is set to charge at, (0, n) when paused; None when nothing is known."""
    state = reading.state
    amps: float | None = None
    if memory.charging is True and memory.current_a is not None:
        amps = memory.current_a
    elif memory.charging is False:
        amps = 0.0
    if state is not None:
        limit = state.current_limit_a
        if not state.charging_release or 0 < limit < MIN_CURRENT_A:
            readback = 0.0
        elif limit == 0:  # 0 reads as "no limit": the box offers its maximum
            readback = state.capabilities.max_current_a
        else:
            readback = limit
        # Only a readback taken after our last write can contradict it; an older one may
        # still show the value before a decrease, which is the safe side anyway.
        amps = readback if amps is None else max(amps, readback)
    if amps is None:
        return None
    if memory.phases is not None:
        phases = memory.phases
    elif state is not None:
        phases = 1 if state.requested_phases == 1 else 3
    else:
        phases = 3
    if state is not None and state.capabilities.grid_phases == 1:
        phases = 1
    return amps, phases


def box_maximum_a(reading: ChargerReading, limits: Limits) -> float:
    """The most one phase of this box can draw: the lowest of 32 A, fuse, cable and device."""
    top = min(MAX_CURRENT_A, limits.fuse_limit_a, limits.cable_max_a)
    if reading.state is not None:
        top = min(top, reading.state.capabilities.max_current_a)
    return top


def counted_load(reading: ChargerReading, memory: GovernorMemory, limits: Limits) -> tuple[Load, str]:
    """What one charger counts for on its own phases L1..L3 (not yet rotated), and why."""
    setpoint = _setpoint(reading, memory)
    if setpoint is None:
        top = box_maximum_a(reading, limits)
        return (top, top, top), f"unknown, counted at its maximum {top:g} A"
    amps, phases = setpoint
    state = reading.state
    lost = ""
    if state is not None and (not reading.connected or not reading.age_s <= limits.stale_after_s):
        # Out of reach: once its heartbeat is missed the box charges at its own fallback
        # current (0x030E; 0 keeps the last values, 1 pauses), so that counts too.
        fallback = float(state.config.master_lost_fallback_current_a)
        if fallback >= MIN_CURRENT_A and fallback > amps:
            amps, lost = (
                min(fallback, box_maximum_a(reading, limits)),
                " (its fallback current, out of reach)",
            )
    setv = [amps if i < phases else 0.0 for i in range(3)]
    if state is not None:
        drawn = (state.current_l1_a, state.current_l2_a, state.current_l3_a)
        # A NaN reading counts as the setpoint, never as nothing; the measurement's noise
        # around the setpoint does not count (it would move everyone's headroom every tick).
        setv = [
            d if math.isfinite(d) and d > s + DRAW_TOLERANCE_A else s
            for s, d in zip(setv, drawn, strict=True)
        ]
    why = f"set to {amps:g} A on {phases} phase{'s' if phases != 1 else ''}{lost}" if amps else "paused"
    return (setv[0], setv[1], setv[2]), why


@dataclass(frozen=True, slots=True, kw_only=True)
class Room:
    """The tightest headroom for one charger: amps, and a sentence naming circuit and phase."""

    amps: float
    why: str


@dataclass(frozen=True, slots=True)
class CircuitTree:
    """The configured circuits and which charger hangs where (validated on construction)."""

    circuits: Mapping[str, Circuit]
    wiring: Mapping[str, Wiring]
    #: For each charger: its circuit and every circuit above it, innermost first.
    _paths: dict[str, tuple[Circuit, ...]] = field(init=False, repr=False, compare=False)
    #: For each circuit: the chargers anywhere beneath it.
    _members: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for c in self.circuits.values():
            if c.parent is not None and c.parent not in self.circuits:
                raise ValueError(f"circuit {c.id!r}: unknown parent {c.parent!r}")
            if not c.limit_a > 0:
                raise ValueError(f"circuit {c.id!r}: limit {c.limit_a!r} A must be above 0")
        paths: dict[str, tuple[Circuit, ...]] = {}
        for cid, w in self.wiring.items():
            if w.circuit not in self.circuits:
                raise ValueError(f"charger {cid!r}: unknown circuit {w.circuit!r}")
            if sorted(w.rotation) != [0, 1, 2]:
                raise ValueError(f"charger {cid!r}: rotation {w.rotation!r} is not a permutation")
            paths[cid] = tuple(self._up(w.circuit))
        members: dict[str, list[str]] = {c: [] for c in self.circuits}
        for cid, path in paths.items():
            for node in path:
                members[node.id].append(cid)
        object.__setattr__(self, "_paths", paths)
        object.__setattr__(self, "_members", {k: tuple(v) for k, v in members.items()})

    def _up(self, circuit_id: str) -> Iterable[Circuit]:
        seen: list[str] = []
        at: str | None = circuit_id
        while at is not None:
            if at in seen:
                raise ValueError(f"circuits loop: {' -> '.join([*seen, at])}")
            seen.append(at)
            node = self.circuits[at]
            yield node
            at = node.parent

    def path(self, charger_id: str) -> tuple[Circuit, ...]:
        """The charger's circuit and all above it (empty for a charger under no circuit)."""
        return self._paths.get(charger_id, ())

    def members(self, circuit_id: str) -> tuple[str, ...]:
        return self._members.get(circuit_id, ())

    def metered_within(self, circuit_id: str) -> tuple[str, ...]:
        """The circuits whose meters' other loads count in ``circuit_id``: its own meter's when it
        has one (it measures everything beneath), else those of the metered circuits below it
        that no metered circuit in between already measures."""
        out = []
        for c in self.circuits.values():
            if c.meter is None:
                continue
            at: str | None = c.id
            while at is not None:
                if at == circuit_id:
                    out.append(c.id)
                    break
                if at != c.id and self.circuits[at].meter is not None:
                    break  # a metered circuit in between measures c's loads already
                at = self.circuits[at].parent
        return tuple(out)

    def grid_phases(self, charger_id: str, phases: int) -> tuple[int, ...]:
        """The grid phases a charger draws on with ``phases`` (1: its L1 only)."""
        rotation = self.wiring[charger_id].rotation if charger_id in self.wiring else STANDARD_ROTATION
        return tuple(rotation[:1]) if phases == 1 else tuple(rotation)

    def grid_load(self, charger_id: str, box_load: Sequence[float]) -> Load:
        rotation = self.wiring[charger_id].rotation if charger_id in self.wiring else STANDARD_ROTATION
        return on_grid(box_load, rotation)

    def headroom(self, charger_id: str, loads: Mapping[str, Load], phases: int) -> Room | None:
        """The tightest per-phase headroom for ``charger_id`` drawing on ``phases`` phases.

        ``loads``: every charger's counted load on the grid's phases (its own is ignored).
        None for a charger under no circuit (only its own limits apply).
        """
        return LoadBook(self, loads).headroom(charger_id, phases)

    def phase_sums(self, loads: Mapping[str, Load]) -> dict[str, Load]:
        """Per circuit, the sum of its chargers' loads on each grid phase (for checks and display)."""
        out: dict[str, Load] = {}
        for circuit_id, members in self._members.items():
            total = [0.0, 0.0, 0.0]
            for cid in members:
                for g in range(3):
                    total[g] += loads.get(cid, (0.0, 0.0, 0.0))[g]
            out[circuit_id] = (total[0], total[1], total[2])
        return out


class LoadBook:
    """Every charger's counted load and each circuit's sums, kept up to date write by write.

    The loop builds one per tick and :meth:`set` s a charger's load after writing to it,
    so a headroom costs the charger's path, not a sum over every charger.
    """

    def __init__(
        self, tree: CircuitTree, loads: Mapping[str, Load], others: Mapping[str, OtherLoad] | None = None
    ) -> None:
        self.tree = tree
        self.loads: dict[str, Load] = dict(loads)
        #: Per circuit with a meter: its other loads (not chargers), counted before any charger.
        self.others: Mapping[str, OtherLoad] = others or {}
        self._sums: dict[str, list[float]] = {
            c: list(a) for c, a in counted_others(tree, self.others).items()
        }
        #: Per circuit: what the pauses and decreases written this tick free once their
        #: boxes follow (their readback still shows the old setpoint, so they count at it).
        self._freeing: dict[str, list[float]] = {c: [0.0, 0.0, 0.0] for c in tree.circuits}
        for cid, load in self.loads.items():
            for node in tree.path(cid):
                total = self._sums[node.id]
                for g in range(3):
                    total[g] += load[g]

    def set(self, charger_id: str, load: Load, *, sent: Load | None = None) -> None:
        """The charger counts at ``load`` now; ``sent``: what it was just set to (lower while its box follows)."""
        old = self.loads.get(charger_id, (0.0, 0.0, 0.0))
        for node in self.tree.path(charger_id):
            total = self._sums[node.id]
            freeing = self._freeing[node.id]
            for g in range(3):
                total[g] += load[g] - old[g]
                if sent is not None:
                    freeing[g] += max(load[g] - sent[g], 0.0)
        self.loads[charger_id] = load

    def headroom(self, charger_id: str, phases: int, *, once_followed: bool = False) -> Room | None:
        """See :meth:`CircuitTree.headroom`; ``once_followed``: after the boxes follow this tick's decreases."""
        path = self.tree.path(charger_id)
        if not path:
            return None
        own = self.loads.get(charger_id, (0.0, 0.0, 0.0))
        grid_phases = self.tree.grid_phases(charger_id, phases)
        best: tuple[float, Circuit, int, float] | None = None
        for node in path:
            total = self._sums[node.id]
            freeing = self._freeing[node.id]
            for g in grid_phases:
                used = total[g] - own[g] - (freeing[g] if once_followed else 0.0)
                room = node.limit_a - used
                if best is None or room < best[0]:
                    best = (room, node, g, used)
        assert best is not None
        room, node, g, used = best
        notes = [self.others[c].why for c in self.tree.metered_within(node.id) if c in self.others]
        besides = "".join(f"; {why}" for why in notes)
        return Room(
            amps=room,
            why=(
                f"circuit {node.id}: {max(room, 0.0):.1f} A left on {PHASES[g]} "
                f"(limit {node.limit_a:g} A, others {max(used, 0.0):.1f} A{besides})"
            ),
        )


# ---------------------------------------------------------------------------- circuit meters


@dataclass(frozen=True, slots=True)
class OtherLoad:
    """What a circuit's loads other than its chargers take on each grid phase, and why."""

    amps: Load
    why: str


def counted_others(tree: CircuitTree, others: Mapping[str, OtherLoad]) -> dict[str, list[float]]:
    """Per circuit, the other loads counted in it (see :meth:`CircuitTree.metered_within`)."""
    out: dict[str, list[float]] = {}
    for circuit_id in tree.circuits:
        total = [0.0, 0.0, 0.0]
        for metered in tree.metered_within(circuit_id):
            if metered in others:
                for g in range(3):
                    total[g] += others[metered].amps[g]
        out[circuit_id] = total
    return out
