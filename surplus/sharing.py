"""Sharing one surplus among several pv/minpv chargers: by priority, then fairly.

:func:`split_surplus` is pure. It gets the surplus (W) and the chargers that share
it, and gives each a budget (W) and a sentence that says why:

1. Order: higher ``priority`` first; within a priority, boxes that charge now
   before paused ones (a box that just started keeps going, a box that just
   paused waits), then the configured order.
2. Served: the longest run from the front of that order whose minimums (6 A on
   the phases each box uses) the surplus carries. The rest get nothing: their
   strategy rides through and pauses as it would with no sun, so the lowest
   priority pauses first. When not even the first box's minimum is carried,
   the first box gets it all (it then decides as a single charger would).
3. Each served box gets its minimum; what remains goes to the highest priority
   first, shared as an equal current (A, not W: a 1-phase box gets a third of
   a 3-phase box's power) up to each box's maximum and what its circuits have
   left; what a priority cannot take goes to the next.

Circuits (:class:`CircuitRoom`: a circuit's per-phase limit less what the chargers
that do not share draw) are shared by the same rules: a box whose 6 A no longer
fit into a circuit beside the boxes before it gets nothing (the boxes after it
still may), and the extra current stops growing for the boxes of a circuit
phase that is full.

A paused box that may not resume yet (5 minutes after its pause) takes no part
(``can_start`` False), nor does a box whose limits leave it less than 6 A
(``max_a``): the surplus goes to the others meanwhile.

A box whose car takes nothing (``takes_nothing``: full, or waiting on a timer of its
own) comes after all the others, whatever its priority: they split the surplus among
themselves as if it were not there, and it gets what they cannot take (by the same
rules, within what their shares leave of the circuits). Without this a full car kept
its minimum and its part of the rest, sun that went to the grid while another car
waited for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .types import MIN_CURRENT_A


@dataclass(frozen=True, slots=True, kw_only=True)
class Sharer:
    """One charger taking part in the split."""

    charger_id: str
    priority: int = 1
    #: Phases it charges on now (the budget is turned into amps on these).
    phases: int = 3
    volts: float = 230.0
    #: Highest current it may get (device, cable and fuse limits; circuits: ``CircuitRoom``).
    max_a: float = 32.0
    #: The grid phases it draws on (its rotation; only the first on one phase).
    grid_phases: tuple[int, ...] = (0, 1, 2)
    #: Charging now (or set to): kept before a paused box of the same priority.
    charging: bool = False
    #: False for a paused box still inside the 5 minutes after its pause.
    can_start: bool = True
    #: Its car has drawn nothing for minutes though offered 6 A or more (full, or waiting:
    #: :class:`surplus.strategy.IdleCar`): it gets only what the others cannot take.
    takes_nothing: bool = False

    @property
    def w_per_a(self) -> float:
        return self.phases * self.volts


@dataclass(frozen=True, slots=True, kw_only=True)
class Share:
    """One charger's part of the surplus."""

    budget_w: float
    why: str


def _order(sharers: Sequence[Sharer]) -> list[Sharer]:
    index = {s.charger_id: i for i, s in enumerate(sharers)}
    return sorted(sharers, key=lambda s: (-s.priority, not s.charging, index[s.charger_id]))


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitRoom:
    """A circuit the sharers are beneath: the amps per grid phase left to them, and who they are."""

    id: str
    #: Per grid phase: the circuit's limit minus what the chargers that do not share draw or are set to.
    room_a: tuple[float, float, float]
    members: frozenset[str]


_EPS = 1e-9


def split_surplus(
    surplus_w: float, sharers: Sequence[Sharer], circuits: Sequence[CircuitRoom] = ()
) -> Mapping[str, Share]:
    """Each sharer's budget (W) of ``surplus_w``; see the module docstring for the rules.

    ``circuits``: the circuits above the sharers; their room is shared by the same rules
    (a box whose minimum no longer fits into one gets nothing, the rest is an equal current).
    """
    idle = [s for s in sharers if s.takes_nothing]
    busy = [s for s in sharers if not s.takes_nothing]
    if not idle or not busy:
        return _split(surplus_w, sharers, circuits)
    out = dict(_split(surplus_w, busy, circuits, keep_rest=False))
    by_id = {s.charger_id: s for s in busy}
    taken_w = sum(share.budget_w for share in out.values())
    left = []
    for c in circuits:  # what the busy boxes' shares leave of each circuit, per grid phase
        room = list(c.room_a)
        for cid in c.members & by_id.keys():
            s = by_id[cid]
            for g in s.grid_phases:
                room[g] -= out[cid].budget_w / s.w_per_a
        left.append(dataclasses.replace(c, room_a=(room[0], room[1], room[2])))
    rest_w = max(surplus_w - taken_w, 0.0)
    for cid, share in _split(rest_w, idle, left, first_takes_all=False).items():
        each = f" ({share.why})" if len(idle) > 1 or share.budget_w <= 0 else ""
        out[cid] = Share(
            budget_w=share.budget_w,
            why=f"its car takes nothing: it gets what the others leave, {rest_w / 1000:.2f} of "
            f"{surplus_w / 1000:.2f} kW{each}",
        )
    last = f"{_boxes(len(idle))} whose car takes nothing after it"
    for s in busy:
        out[s.charger_id] = dataclasses.replace(out[s.charger_id], why=f"{out[s.charger_id].why}; {last}")
    return out


def _boxes(n: int) -> str:
    return "1 box" if n == 1 else f"{n} boxes"


def _split(
    surplus_w: float,
    sharers: Sequence[Sharer],
    circuits: Sequence[CircuitRoom],
    *,
    keep_rest: bool = True,
    first_takes_all: bool = True,
) -> Mapping[str, Share]:
    """:func:`split_surplus` among boxes of one kind; ``keep_rest`` False: what nobody can take
    is left over (for the boxes whose cars take nothing), not given to the first box;
    ``first_takes_all`` False: when not one minimum is carried nobody gets anything (cars that
    take nothing have no dip to ride through)."""
    blocked = [s for s in sharers if s.max_a < MIN_CURRENT_A]
    waiting = [s for s in sharers if not s.charging and not s.can_start and s not in blocked]
    order = _order([s for s in sharers if s not in blocked and s not in waiting])
    out: dict[str, Share] = {
        s.charger_id: Share(budget_w=0.0, why="no share while the 5 minutes after its pause run")
        for s in waiting
    }
    for s in blocked:
        out[s.charger_id] = Share(budget_w=0.0, why=f"no share: its limits leave {max(s.max_a, 0.0):.1f} A")
    if not order:
        return out
    alloc: dict[str, float] = {}
    placed: dict[str, Sharer] = {}

    def used(circuit: CircuitRoom, g: int) -> float:
        return sum(a for cid, a in alloc.items() if cid in circuit.members and g in placed[cid].grid_phases)

    def full_circuit(s: Sharer, amps: float) -> CircuitRoom | None:
        """The first circuit that cannot take ``amps`` more for ``s``, or None."""
        for c in circuits:
            if s.charger_id in c.members:
                for g in s.grid_phases:
                    if used(c, g) + amps > c.room_a[g] + _EPS:
                        return c
        return None

    served: list[Sharer] = []
    crowded: dict[str, CircuitRoom] = {}
    need_w = 0.0
    for s in order:
        if need_w + MIN_CURRENT_A * s.w_per_a > surplus_w:
            break
        full = full_circuit(s, MIN_CURRENT_A)
        if full is not None:
            crowded[s.charger_id] = full
            continue
        served.append(s)
        placed[s.charger_id], alloc[s.charger_id] = s, MIN_CURRENT_A
        need_w += MIN_CURRENT_A * s.w_per_a
    n = len(order)
    if not served and not first_takes_all:
        for s in order:
            out[s.charger_id] = Share(budget_w=0.0, why=f"no share: not enough for {MIN_CURRENT_A:g} A")
        return out
    if not served:  # not even one minimum: the first box gets it all and decides as if alone
        first = order[0]
        out[first.charger_id] = Share(
            budget_w=surplus_w, why=f"all of it: not enough for {MIN_CURRENT_A:g} A on one of {_boxes(n)}"
        )
        for s in order[1:]:
            out[s.charger_id] = Share(budget_w=0.0, why=f"no share: priority {s.priority}, {_boxes(n)}")
        return out
    left_w = surplus_w - need_w
    for priority in sorted({s.priority for s in served}, reverse=True):
        active = [s for s in served if s.priority == priority]
        while left_w > _EPS and active:
            # An equal extra current for the group, up to the box nearest its maximum and the
            # tightest circuit phase (its room split among the boxes of the group drawing on it).
            step = left_w / sum(s.w_per_a for s in active)
            step = min([step, *(s.max_a - alloc[s.charger_id] for s in active)])
            for c in circuits:
                for g in range(3):
                    drawing = sum(1 for s in active if s.charger_id in c.members and g in s.grid_phases)
                    if drawing:
                        step = min(step, (c.room_a[g] - used(c, g)) / drawing)
            step = max(step, 0.0)
            for s in active:
                alloc[s.charger_id] += step
            left_w -= step * sum(s.w_per_a for s in active)
            still = [
                s
                for s in active
                if s.max_a - alloc[s.charger_id] > _EPS and full_circuit(s, _EPS * 10) is None
            ]
            if len(still) == len(active) and step <= _EPS:  # nothing moves any more
                break
            active = still
    if left_w > _EPS and keep_rest and not circuits:  # nobody can take more: the rest is the first box's (it
        # cannot use it either); under circuits it would take what the others' shares need
        alloc[served[0].charger_id] += left_w / served[0].w_per_a
    k = len(served)
    for s in served:
        amps = alloc[s.charger_id]
        out[s.charger_id] = Share(
            budget_w=amps * s.w_per_a,
            why=(
                f"share {amps:.1f} A of {surplus_w / 1000:.2f} kW for {_boxes(n)} "
                f"({k} carried at {MIN_CURRENT_A:g} A or more; priority {s.priority})"
            ),
        )
    for s in order:
        if s.charger_id in out:
            continue
        if s.charger_id in crowded:
            why = f"no share: circuit {crowded[s.charger_id].id} has no {MIN_CURRENT_A:g} A left for it"
        else:
            why = (
                f"no share: {surplus_w / 1000:.2f} kW carries {k} of {n} boxes at {MIN_CURRENT_A:g} A "
                f"and this one comes later (priority {s.priority})"
            )
        out[s.charger_id] = Share(budget_w=0.0, why=why)
    return out
