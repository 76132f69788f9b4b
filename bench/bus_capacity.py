"""How many AMTRONs one RS485 line carries, and what a car park costs per tick.

**Line capacity.** N simulated boxes on one line (the AMTRON simulator on
RTU-over-TCP at 127.0.0.1 with ``wire_time=True``: every reply is held for the
time its frames take at 57600 8N2, as in bench/bus_poll.py), driven by the real
bus owner, driver, governor and loop (fixed 10 A, tick 1 s, heartbeat every
3 s, full read every 60 s) on the system clock. After all boxes have been read
once, for ``--seconds``:

* worst heartbeat gap of any box, as the simulator saw it (must be <= 5 s);
* worst time between two reads of the same box, i.e. the oldest its
  measurements get before they are refreshed (must be <= 10 s).

N doubles from ``--start`` until a limit breaks, then bisects. The largest N
that keeps both is compared with the wire-time bound: the most boxes whose
polls (fast + control, since a round of more than 5 s always reads the control
group too, plus a sixth of a full read per 10 s), and heartbeats every 3 s fit
into 10 s of line time.

**Per-tick cost.** 100 boxes on 8 lines (the in-memory model bus, fake clock),
all in pv sharing one simulated meter, under a circuit tree (a site and one
sub-distribution per line): the loop's wall time per tick, with and without
the circuits.

    .venv/bin/python bench/bus_capacity.py              # a few minutes (real time on the line)
    .venv/bin/python bench/bus_capacity.py --tick-only  # only the per-tick cost (seconds)
    .venv/bin/python bench/bus_capacity.py --boxes 80 --lines 2   # one trial: 2 lines of 80 boxes
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import sys
import time
from typing import Any

from surplus.chargers.amtron import AmtronCharger
from surplus.circuits import Circuit, CircuitTree, Wiring
from surplus.clock import FakeClock, SystemClock
from surplus.governor import Limits, SafetyGovernor
from surplus.loop import ChargerSlot, Controller
from surplus.meter import MeterEnv
from surplus.modbus import plan
from surplus.modbus.bus import BusConfig, ModbusBus
from surplus.plugins import collect_meters, collect_strategies, make_plugin_manager
from surplus.sim.membus import ModelBus
from surplus.sim.model import AmtronModel, EvProfile
from surplus.sim.server import SimulatorServer, transaction_wire_time_s

BAUD = 57600
HEARTBEAT_LIMIT_S = 5.0
AGE_LIMIT_S = 10.0
FIRST_ID = 10


def wire_bound() -> tuple[int, str]:
    """The most boxes whose polls and heartbeats fit into 10 s of line time at 57600 8N2."""
    fc = plan.lower_bound(plan.FAST_POLL + plan.CONTROL_POLL).wire_time_s(BAUD)
    full = plan.lower_bound(plan.FULL_POLL).wire_time_s(BAUD)
    hb = transaction_wire_time_s(6, 1, baudrate=BAUD)
    per_box_s = fc + (AGE_LIMIT_S / 60.0) * (full - fc) + (AGE_LIMIT_S / 3.0) * hb
    n = int(AGE_LIMIT_S / per_box_s)
    why = (
        f"fast+control poll {fc * 1000:.1f} ms, full {full * 1000:.1f} ms every 60 s, "
        f"heartbeat {hb * 1000:.1f} ms every 3 s -> {per_box_s * 1000:.1f} ms of line per box per 10 s"
    )
    return n, why


async def line_trial(n: int, seconds: float, lines: int = 1) -> tuple[float, float, float]:
    """(worst heartbeat gap, worst read interval, first round s) for ``n`` boxes on each of ``lines``."""
    clock = SystemClock()
    sims: list[SimulatorServer] = []
    buses: list[ModbusBus] = []
    placed: list[tuple[ModbusBus, int, str]] = []
    models: dict[str, AmtronModel] = {}
    for line in range(lines):
        line_models = {FIRST_ID + i: AmtronModel(clock, ev=EvProfile(), seed=i) for i in range(n)}
        sim = SimulatorServer(line_models, transport="tcp", wire_time=True, baudrate=BAUD)
        await sim.start()
        sims.append(sim)
        line_bus = ModbusBus(BusConfig(port=sim.url, timeout_s=1.0, retries=1), clock)
        await line_bus.start()
        buses.append(line_bus)
        for device_id, model in line_models.items():
            placed.append((line_bus, device_id, f"l{line}box{device_id}"))
            models[f"l{line}box{device_id}"] = model
    factories = collect_strategies(make_plugin_manager(load_entrypoints=False))
    reads: dict[str, list[float]] = {}
    slots = []
    for bus, device_id, cid in placed:
        charger = AmtronCharger(
            bus, charger_id=cid, clock=clock, device_id=device_id, heartbeat_interval_s=3.0
        )
        real = charger.read_state

        async def read_state(*, full: bool = False, _real: Any = real, _id: str = cid) -> Any:
            state = await _real(full=full)
            reads.setdefault(_id, []).append(state.read_at_s)
            return state

        charger.read_state = read_state  # type: ignore[method-assign]
        strategies = {name: f({"fixed": {"current_a": 10}}.get(name, {})) for name, f in factories.items()}
        slots.append(ChargerSlot(charger=charger, strategies=strategies, mode="fixed"))
    governor = SafetyGovernor({s.charger_id: Limits() for s in slots})
    controller = Controller(
        clock=clock, chargers=slots, meters=[], governor=governor, tick_s=1.0, full_read_every_s=60.0
    )
    t0 = clock.now()
    run = asyncio.ensure_future(controller.run())
    try:
        while len(reads) < n * lines or controller.ticks < 2:
            await asyncio.sleep(0.1)
            if run.done():
                run.result()
        first_round_s = clock.now() - t0
        start = clock.now()
        await asyncio.sleep(seconds)
        end = clock.now()
    finally:
        controller.stop(hurry=True)
        await asyncio.wait_for(run, 60)
        for line_bus in buses:
            await line_bus.close()
        for sim in sims:
            await sim.stop()
    # The age of a box's measurements at any moment of [start, end] is the time since its last
    # read: the worst is a gap between two reads that ends inside, or the time since the last one.
    worst_read = 0.0
    for times in reads.values():
        before_end = [t for t in times if t <= end]
        gaps = [b - a for a, b in itertools.pairwise(before_end) if b >= start]
        worst_read = max([worst_read, *gaps, end - before_end[-1]])
    worst_hb = max(m.record.worst_heartbeat_gap_s for m in models.values())
    return worst_hb, worst_read, first_round_s


async def line_capacity(start_n: int, seconds: float) -> None:
    bound, why = wire_bound()
    print(f"wire-time bound at {BAUD} 8N2: {bound} boxes ({why})")
    results: dict[int, bool] = {}

    async def ok(n: int) -> bool:
        hb, age, first = await line_trial(n, seconds)
        good = hb <= HEARTBEAT_LIMIT_S and age <= AGE_LIMIT_S
        results[n] = good
        print(
            f"  {n:4d} boxes: worst heartbeat gap {hb:.2f} s, oldest measurements {age:.2f} s, "
            f"first round {first:.1f} s -> {'ok' if good else 'too many'}",
            flush=True,
        )
        return good

    top = 247 - FIRST_ID + 1  # device ids 10..247
    n = min(start_n, top)
    while await ok(n):
        if n >= top:
            print(f"all {top} device ids of one line carried")
            return
        n = min(2 * n, top)
    good, bad = (n // 2 if n > start_n else 0), n
    while bad - good > max(2, good // 10):
        mid = (good + bad) // 2
        if await ok(mid):
            good = mid
        else:
            bad = mid
    print(
        f"one line carries {good} boxes with every heartbeat <= {HEARTBEAT_LIMIT_S:g} s and measurements "
        f"<= {AGE_LIMIT_S:g} s old ({good / bound:.2f} of the wire-time bound {bound})"
    )


async def tick_cost(boxes: int, lines: int, ticks: int, circuits: bool) -> float:
    """Mean wall time of one tick (ms) for ``boxes`` on ``lines`` model buses, fake clock."""
    clock = FakeClock()
    factories = collect_strategies(make_plugin_manager(load_entrypoints=False))
    buses: list[ModelBus] = []
    models: list[AmtronModel] = []
    slots = []
    wiring = {}
    per_line = -(-boxes // lines)
    for line in range(lines):
        count = min(per_line, boxes - line * per_line)
        line_models = {
            FIRST_ID + i: AmtronModel(clock, ev=EvProfile(), seed=line * 100 + i, keep_record=False)
            for i in range(count)
        }
        bus = ModelBus(line_models, clock)
        buses.append(bus)
        for device_id, model in line_models.items():
            cid = f"l{line}b{device_id}"
            models.append(model)
            charger = AmtronCharger(bus, charger_id=cid, clock=clock, device_id=device_id)
            strategies = {name: f({}) for name, f in factories.items()}
            slots.append(
                ChargerSlot(charger=charger, strategies=strategies, mode="pv", priority=1 + device_id % 3)
            )
            wiring[cid] = Wiring(
                circuit=f"line{line}", rotation=((0, 1, 2), (1, 2, 0), (2, 0, 1))[device_id % 3]
            )
    tree = None
    if circuits:
        nodes = {"site": Circuit(id="site", limit_a=400.0)}
        nodes.update({f"line{i}": Circuit(id=f"line{i}", limit_a=63.0, parent="site") for i in range(lines)})
        tree = CircuitTree(nodes, wiring)
    simulated = collect_meters(make_plugin_manager(load_entrypoints=False))["simulated"]
    env = MeterEnv(clock=clock, charger_power_w=lambda: sum(m.charging_power_w for m in models))
    meter = simulated("grid", {"pv_peak_w": 300_000, "start_hour": 10.0, "cloudiness": 0.3}, env)
    governor = SafetyGovernor({s.charger_id: Limits() for s in slots})
    controller = Controller(clock=clock, chargers=slots, meters=[meter], governor=governor, circuits=tree)
    await controller.start()
    for _ in range(30):  # warm up: everybody read and started
        await controller.tick()
        await clock.advance(1.0)
    t0 = time.perf_counter()
    for _ in range(ticks):
        await controller.tick()
        await clock.advance(1.0)
    elapsed = time.perf_counter() - t0
    await controller.shutdown()
    for bus in buses:
        await bus.close()
    return elapsed / ticks * 1000


async def main(args: argparse.Namespace) -> int:
    for circuits in (False, True):
        ms = await tick_cost(100, 8, args.ticks, circuits)
        what = "with a circuit tree (site + 8 lines)" if circuits else "without circuits"
        print(f"per-tick cost, 100 boxes on 8 lines in pv, {what}: {ms:.1f} ms per 1 s tick", flush=True)
    if args.boxes is not None:
        hb, age, first = await line_trial(args.boxes, args.seconds, args.lines)
        print(
            f"{args.lines} line(s) x {args.boxes} boxes: worst heartbeat gap {hb:.2f} s, oldest measurements "
            f"{age:.2f} s, first round {first:.1f} s"
        )
    elif not args.tick_only:
        await line_capacity(args.start, args.seconds)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=25.0, help="measuring time per trial (default 25 s)")
    parser.add_argument("--start", type=int, default=25, help="first number of boxes tried (default 25)")
    parser.add_argument(
        "--ticks", type=int, default=120, help="ticks timed for the per-tick cost (default 120)"
    )
    parser.add_argument("--tick-only", action="store_true", help="only the per-tick cost")
    parser.add_argument("--boxes", type=int, help="one trial with this many boxes per line (no search)")
    parser.add_argument("--lines", type=int, default=1, help="lines for --boxes (default 1)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    sys.exit(asyncio.run(main(args)))
