"""What one charger poll costs on the wire, measured through the real driver and bus.

Starts the AMTRON simulator on an in-process pty pair and on RTU-over-TCP
(127.0.0.1), runs the real ModbusBus + AmtronCharger against it and prints,
per full-state poll and per fast poll:

* transactions and RTU bytes (request + reply, address and CRC included), as
  counted by the bus;
* the wire time they imply at 57600 baud 8N2 (11 bits per character, a
  3.5-character gap after every frame, both directions; no device turnaround);
* the ratio to the lower bound (the same registers in the fewest transactions
  the register map allows; target <= 1.2);
* the poll time measured against the simulator with ``wire_time=True`` (it
  holds every reply for the frame times), as a ratio to the computed bound
  (target <= 1.5).

Heartbeats are off during the measurement so they do not mix into the counts.
Loopback only, bounded: it finishes in a few seconds. Exit status 1 when a
target is missed.

    .venv/bin/python bench/bus_poll.py [--polls 20]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time

from surplus.chargers.amtron import AmtronCharger
from surplus.clock import SystemClock
from surplus.modbus import plan
from surplus.modbus.bus import BusConfig, BusStats, ModbusBus, PymodbusLink
from surplus.sim.model import AmtronModel, EvProfile
from surplus.sim.server import SimulatorServer

BAUD = 57600
COUNT_TARGET = 1.2
TIME_TARGET = 1.5


def delta(after: BusStats, before: BusStats) -> tuple[int, int]:
    """(transactions, bytes) between two stats snapshots."""
    return (
        after.transactions - before.transactions,
        after.bytes_sent + after.bytes_received - before.bytes_sent - before.bytes_received,
    )


async def raw_poll_s(url: str, spans: list[plan.Span], polls: int) -> float:
    """Median time of the same reads through a bare pymodbus link (no bus owner, no driver)."""
    link = PymodbusLink(BusConfig(port=url))
    await link.connect()
    try:
        times = []
        for _ in range(polls):
            t0 = time.perf_counter()
            for span in spans:
                await link.read(50, span.address, span.count)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    finally:
        link.close()


async def measure(transport: str, polls: int) -> list[str]:
    """Run one transport; return the lines of targets missed."""
    clock = SystemClock()
    missed: list[str] = []
    for wire_time in (False, True):
        model = AmtronModel(clock, ev=EvProfile(accept_delay_s=0.0))
        sim = SimulatorServer({50: model}, transport=transport, wire_time=wire_time)  # type: ignore[arg-type]
        await sim.start()
        bus = ModbusBus(BusConfig(port=sim.url, timeout_s=1.0, retries=0), clock)
        await bus.start()
        amtron = AmtronCharger(bus, charger_id="bench", clock=clock, device_id=50, heartbeat_enabled=False)
        pending_raw: list[tuple[str, list[plan.Span], float]] = []
        try:
            await amtron.start()
            for name, full, registers in (("full", True, plan.FULL_POLL), ("fast", False, plan.FAST_POLL)):
                layout = amtron.info.layout_version if amtron.info else None
                bound = plan.lower_bound(registers, layout=layout)
                bound_s = bound.wire_time_s(BAUD)
                times: list[float] = []
                before = bus.stats
                for _ in range(polls):
                    t0 = time.perf_counter()
                    await amtron.read_state(full=full)
                    times.append(time.perf_counter() - t0)
                tx, nbytes = delta(bus.stats, before)
                tx_per, bytes_per = tx / polls, nbytes / polls
                if not wire_time:
                    implied_s = plan.wire_time_s(int(bytes_per), int(2 * tx_per), baudrate=BAUD)
                    ratio_tx, ratio_bytes = tx_per / bound.transactions, bytes_per / bound.total_bytes
                    print(
                        f"{transport:>3} {name} poll: {tx_per:.0f} transactions, {bytes_per:.0f} bytes "
                        f"-> {implied_s * 1000:.1f} ms at {BAUD} 8N2 | bound {bound.transactions} tx, "
                        f"{bound.total_bytes} bytes, {bound_s * 1000:.1f} ms | ratio {ratio_tx:.2f} tx, "
                        f"{ratio_bytes:.2f} bytes (target <= {COUNT_TARGET})"
                    )
                    naive = plan.cost(s for r in registers for s in plan.plan_reads([r], layout=layout))
                    print(
                        f"    loopback poll time without wire time: median {statistics.median(times) * 1000:.2f} ms"
                    )
                    print(
                        f"    (one read per register would be {naive.transactions} tx, {naive.total_bytes} bytes, "
                        f"{naive.wire_time_s(BAUD) * 1000:.1f} ms)"
                    )
                    if max(ratio_tx, ratio_bytes) > COUNT_TARGET:
                        missed.append(f"{transport} {name}: count ratio {max(ratio_tx, ratio_bytes):.2f}")
                else:
                    median = statistics.median(times)
                    ratio = median / bound_s
                    print(
                        f"{transport:>3} {name} poll with wire_time: median {median * 1000:.1f} ms, "
                        f"min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f} over {polls} polls "
                        f"| {ratio:.2f}x the bound {bound_s * 1000:.1f} ms (target <= {TIME_TARGET})"
                    )
                    if ratio > TIME_TARGET:
                        missed.append(f"{transport} {name}: time ratio {ratio:.2f}")
                    pending_raw.append((name, plan.plan_reads(registers, layout=layout), median))
            await amtron.stop()
            await bus.close()  # a pty opens exclusively: the bare client needs the port
            for name, spans, median in pending_raw:
                raw = await raw_poll_s(sim.url, spans, polls)
                print(
                    f"{transport:>3} {name} poll on a bare pymodbus client: median {raw * 1000:.1f} ms "
                    f"(simulator + loopback floor); bus + driver add {(median - raw) * 1000:.1f} ms per poll"
                )
        finally:
            await amtron.stop()
            await bus.close()
            await sim.stop()
    return missed


async def main(polls: int) -> int:
    missed: list[str] = []
    for transport in ("pty", "tcp"):
        missed += await asyncio.wait_for(measure(transport, polls), timeout=40)
    if missed:
        print("targets missed: " + "; ".join(missed))
        return 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=20, help="polls per measurement (default 20)")
    args = parser.parse_args()
    if not 1 <= args.polls <= 200:
        parser.error("--polls must be 1..200")
    logging.basicConfig(level=logging.ERROR)
    sys.exit(asyncio.run(main(args.polls)))
