"""The poll plan of one line: which boxes' measurements are read this tick.

The loop asks every box for its state once per tick; on a line with more
boxes than its wire time carries in a tick, reading them all would stretch
the tick and leave nobody in charge of how old each box's data gets. So each
line's bus owner keeps a :class:`PollPlan`, and a driver asks it
(:meth:`PollPlan.turn`) before reading its measurements:

* **The budget.** Per tick the line may spend ``target_load`` of its time
  (default 80 %) on transactions. What the heartbeats take (their wire time,
  plus the turnaround the line has shown, at their interval) comes off first;
  they have their own lane in the bus owner and are never planned away. The
  rest is for measurement reads.
* **The cost of a poll.** Per box, the line time its reads took per granted
  poll (measured by the bus, averaged), before the first measurement the wire
  time of its measurement read (frame bytes at the line's baud and bits).
* **The rotation.** When every box's poll fits into the read budget of one
  tick, every box is read every tick. Otherwise each tick reads the ``per
  tick`` boxes whose measurements are the oldest (ties: the order the boxes
  joined), so each box is read every ``k`` ticks, round robin, and the line
  stays at its target. :attr:`PollPlan.interval_s` is ``k`` ticks.
* **Boxes whose data matters now** are read at once, on top of the rotation:
  one never read, and one the driver marks ``urgent`` (the AMTRON driver: a box
  written to since its last read -- a new setpoint, release or phases -- and a
  box whose EVSE state changed on its last read). Writes are few (the governor
  spaces them), so this fits in the margin the target leaves.
* **The stated age.** Each box's measurements are refreshed every ``k`` ticks
  and a tick's reads end within the tick, so no box's data is older than
  ``(k + 1) * tick_s`` when the strategy sees it; that must stay within
  ``max_age_s`` (the loop's ``control.stale_after_s``, 10 s by default). When
  even that does not fit, the line keeps its target (heartbeats, writes and the
  tick keep their time), the boxes are read as often as it allows, and
  :attr:`PollPlan.problem` says so (``health`` reports the line degraded, the
  log warns once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Share of a new measurement in a box's average poll cost.
COST_WEIGHT = 0.2


@dataclass(slots=True)
class _Box:
    index: int
    #: Clock time of the last granted poll (-inf: never).
    last_at: float = -math.inf
    #: Average line time of one poll (s); None until measured.
    cost_s: float | None = None
    #: Wire time of the box's measurement read (the estimate before a measurement).
    wire_s: float = 0.0
    #: Line time its reads took since the last granted poll.
    busy_s: float = 0.0


class PollPlan:
    """Round-robin measurement polls within one line's wire budget (see the module doc)."""

    def __init__(self, *, tick_s: float = 1.0, max_age_s: float = 10.0, target_load: float = 0.8) -> None:
        if not tick_s > 0:
            raise ValueError(f"tick_s must be positive, not {tick_s!r}")
        if not max_age_s > 0:
            raise ValueError(f"max_age_s must be positive, not {max_age_s!r}")
        if not 0 < target_load <= 1:
            raise ValueError(f"target_load must be in (0, 1], not {target_load!r}")
        self.tick_s = tick_s
        self.max_age_s = max_age_s
        self.target_load = target_load
        #: Line time per second the heartbeats take (the bus keeps it up to date).
        self.reserved_load = 0.0
        self._boxes: dict[int, _Box] = {}
        #: The boxes chosen for the current tick, and when they were chosen.
        self._chosen: frozenset[int] = frozenset()
        self._chosen_at = -math.inf
        self.per_tick = 1
        self.every_ticks = 1

    # -- what the line says -------------------------------------------------
    @property
    def boxes(self) -> int:
        """How many boxes poll on this line."""
        return len(self._boxes)

    @property
    def interval_s(self) -> float:
        """How often each box's measurements are read, in seconds (the plan in effect)."""
        return self.every_ticks * self.tick_s

    @property
    def worst_age_s(self) -> float:
        """The oldest a box's measurements get before the strategy sees new ones."""
        return (self.every_ticks + 1) * self.tick_s

    @property
    def problem(self) -> str | None:
        """Why the line cannot hold the stated age (None: it can)."""
        if self.every_ticks == 1 or self.worst_age_s <= self.max_age_s:
            return None
        return (
            f"{self.boxes} boxes need more than the line carries: each is read every "
            f"{self.interval_s:g} s, so its data gets {self.worst_age_s:g} s old "
            f"(limit {self.max_age_s:g} s); move boxes to another line or raise the baud rate"
        )

    def read_budget_s(self) -> float:
        """Line time per tick left for measurement reads."""
        return max(0.0, (self.target_load - self.reserved_load) * self.tick_s)

    def poll_cost_s(self) -> float:
        """The average line time of one box's poll."""
        costs = [b.cost_s if b.cost_s is not None else b.wire_s for b in self._boxes.values()]
        return sum(costs) / len(costs) if costs else 0.0

    # -- what the bus and drivers tell it -------------------------------------
    def spent(self, device_id: int, seconds: float) -> None:
        """A read of ``device_id`` took ``seconds`` of line time."""
        box = self._boxes.get(device_id)
        if box is not None:
            box.busy_s += seconds

    def turn(self, device_id: int, now: float, *, urgent: bool = False, wire_s: float = 0.0) -> bool:
        """True when ``device_id`` should read its measurements now (see the module doc).

        ``wire_s`` is the wire time of the box's measurement read (its cost before one
        was measured). A box asking for the first time joins the line.
        """
        box = self._boxes.get(device_id)
        if box is None:
            box = self._boxes[device_id] = _Box(index=len(self._boxes))
            self._replan()
        box.wire_s = wire_s
        if now - self._chosen_at >= self.tick_s / 2:  # the first box asking in a new tick
            self._replan()
            self._choose(now)
        due = urgent or box.last_at == -math.inf or device_id in self._chosen
        if due:
            if box.last_at != -math.inf and box.busy_s > 0:
                cost = box.wire_s if box.cost_s is None else box.cost_s
                box.cost_s = cost + COST_WEIGHT * (box.busy_s - cost)
            box.busy_s = 0.0
            box.last_at = now
        return due

    def _replan(self) -> None:
        n = len(self._boxes)
        cost = self.poll_cost_s()
        fit = int(self.read_budget_s() / cost) if cost > 0 else n
        self.per_tick = max(1, min(n, fit))
        self.every_ticks = max(1, math.ceil(n / self.per_tick))

    def _choose(self, now: float) -> None:
        order = sorted(self._boxes.items(), key=lambda item: (item[1].last_at, item[1].index))
        self._chosen = frozenset(device_id for device_id, _ in order[: self.per_tick])
        self._chosen_at = now
