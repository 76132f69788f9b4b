"""A circuit's own meter: the loads on a circuit besides its chargers (see :mod:`surplus.circuits`).

:func:`measured_others` turns one meter reading into the other loads on each grid
phase; :class:`OtherLoadWatch` holds that estimate at its peak, and counts the
circuit's ``meter_lost_load_a`` once the meter has failed for longer than that.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping

from .circuits import PHASES, CircuitTree, Load, OtherLoad
from .types import ChargerReading, MeterReading


def measured_others(
    tree: CircuitTree, circuit_id: str, meter: MeterReading, chargers: Mapping[str, ChargerReading]
) -> Load | None:
    """The meter's phase currents less the chargers' measured ones (None: no usable reading).

    Only a charger's *measured* draw is taken off: a box read as drawing nothing (or
    not read at all) leaves its current in the estimate, which over- rather than
    understates the other loads. A meter's current is taken as a magnitude: an
    export through the circuit loads its fuse as much as an import.
    """
    currents = meter.phase_currents_a
    if meter.error is not None or currents is None or not all(math.isfinite(a) for a in currents):
        return None
    total = [abs(a) for a in currents]
    for cid in tree.members(circuit_id):
        reading = chargers.get(cid)
        state = reading.state if reading is not None else None
        if state is None:
            continue
        drawn = (state.current_l1_a, state.current_l2_a, state.current_l3_a)
        box = [d if math.isfinite(d) and d > 0 else 0.0 for d in drawn]
        for g, amps in enumerate(tree.grid_load(cid, box)):
            total[g] -= amps
    return max(total[0], 0.0), max(total[1], 0.0), max(total[2], 0.0)


class OtherLoadWatch:
    """Per circuit with a meter: its other loads, held at their peak over ``hold_s``.

    :meth:`update` is called once per tick with the tick's readings; the result is
    what :class:`LoadBook` counts before the chargers (see the module docstring).
    """

    def __init__(self, tree: CircuitTree, hold_s: float) -> None:
        self.tree = tree
        self.hold_s = hold_s
        self._seen: dict[str, deque[tuple[float, Load]]] = {
            c.id: deque() for c in tree.circuits.values() if c.meter is not None
        }
        self._last_good: dict[str, float] = {}
        self.current: dict[str, OtherLoad] = {}

    def update(
        self, now: float, meters: Mapping[str, MeterReading], chargers: Mapping[str, ChargerReading]
    ) -> dict[str, OtherLoad]:
        out: dict[str, OtherLoad] = {}
        for circuit_id, seen in self._seen.items():
            circuit = self.tree.circuits[circuit_id]
            assert circuit.meter is not None
            reading = meters.get(circuit.meter)
            estimate = None if reading is None else measured_others(self.tree, circuit_id, reading, chargers)
            if estimate is not None:
                seen.append((now, estimate))
                self._last_good[circuit_id] = now
            while seen and seen[0][0] < now - self.hold_s:
                seen.popleft()
            if seen:
                peak = tuple(max(load[g] for _, load in seen) for g in range(3))
                amps: Load = (peak[0], peak[1], peak[2])
                top = max(range(3), key=lambda g: amps[g])
                why = f"other loads {amps[top]:.1f} A on {PHASES[top]} (meter {circuit.meter}"
                if estimate is None:
                    why += f" failing, its last reading held for {self.hold_s:g} s"
                out[circuit_id] = OtherLoad(amps=amps, why=why + ")")
                continue
            lost = circuit.limit_a if circuit.meter_lost_load_a is None else circuit.meter_lost_load_a
            since = self._last_good.get(circuit_id)
            what = "never read" if since is None else f"failing for {now - since:.0f} s"
            if reading is not None and reading.error is not None:
                what += f": {reading.error}"
            elif reading is not None and reading.phase_currents_a is None:
                what += ": it reports no phase currents"
            out[circuit_id] = OtherLoad(
                amps=(lost, lost, lost),
                why=f"meter {circuit.meter} {what}; other loads counted at {lost:g} A",
            )
        self.current = out
        return out
