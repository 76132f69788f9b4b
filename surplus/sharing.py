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
   a 3-phase box's power) up to each box's maximum; what a priority cannot
   take goes to the next.

A paused box that may not resume yet (5 minutes after its pause) takes no part
(``can_start`` False), nor does a box whose limits and circuits leave it less
than 6 A (``max_a``): the surplus goes to the others meanwhile.
"""

from __future__ import annotations

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
    #: Highest current it may get (device, cable, fuse and circuit limits).
    max_a: float = 32.0
    #: Charging now (or set to): kept before a paused box of the same priority.
    charging: bool = False
    #: False for a paused box still inside the 5 minutes after its pause.
    can_start: bool = True

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


def split_surplus(surplus_w: float, sharers: Sequence[Sharer]) -> Mapping[str, Share]:
    """Each sharer's budget (W) of ``surplus_w``; see the module docstring for the rules."""
    blocked = [s for s in sharers if s.max_a < MIN_CURRENT_A]
    waiting = [s for s in sharers if not s.charging and not s.can_start and s not in blocked]
    order = _order([s for s in sharers if s not in blocked and s not in waiting])
    out: dict[str, Share] = {
        s.charger_id: Share(budget_w=0.0, why="no share while the 5 minutes after its pause run")
        for s in waiting
    }
    for s in blocked:
        out[s.charger_id] = Share(
            budget_w=0.0, why=f"no share: its limits and circuits leave {max(s.max_a, 0.0):.1f} A"
        )
    if not order:
        return out
    served: list[Sharer] = []
    need_w = 0.0
    for s in order:
        if need_w + MIN_CURRENT_A * s.w_per_a > surplus_w:
            break
        served.append(s)
        need_w += MIN_CURRENT_A * s.w_per_a
    n = len(order)
    if not served:  # not even one minimum: the first box gets it all and decides as if alone
        first = order[0]
        out[first.charger_id] = Share(
            budget_w=surplus_w, why=f"all of it: not enough for {MIN_CURRENT_A:g} A on one of {n} boxes"
        )
        for s in order[1:]:
            out[s.charger_id] = Share(budget_w=0.0, why=f"no share: priority {s.priority}, {n} boxes")
        return out
    extra_a = {s.charger_id: 0.0 for s in served}
    left_w = surplus_w - need_w
    for priority in sorted({s.priority for s in served}, reverse=True):
        group = [s for s in served if s.priority == priority]
        while left_w > 1e-9 and group:
            # An equal extra current for the group, up to the box nearest its maximum.
            per_a = left_w / sum(s.w_per_a for s in group)
            room = {s.charger_id: max(s.max_a - MIN_CURRENT_A - extra_a[s.charger_id], 0.0) for s in group}
            step_a = min(per_a, min(room.values()))
            for s in group:
                extra_a[s.charger_id] += step_a
            left_w -= step_a * sum(s.w_per_a for s in group)
            group = [s for s in group if room[s.charger_id] - step_a > 1e-9]
    if left_w > 1e-9:  # every box is at its maximum: the rest is the first box's (it cannot take it)
        extra_a[served[0].charger_id] += left_w / served[0].w_per_a
    k = len(served)
    for s in served:
        amps = MIN_CURRENT_A + extra_a[s.charger_id]
        out[s.charger_id] = Share(
            budget_w=amps * s.w_per_a,
            why=(
                f"share {amps:.1f} A of {surplus_w / 1000:.2f} kW for {n} boxes "
                f"({k} carried at {MIN_CURRENT_A:g} A or more; priority {s.priority})"
            ),
        )
    for s in order[k:]:
        out[s.charger_id] = Share(
            budget_w=0.0,
            why=(
                f"no share: {surplus_w / 1000:.2f} kW carries {k} of {n} boxes at {MIN_CURRENT_A:g} A "
                f"and this one comes later (priority {s.priority})"
            ),
        )
    return out
