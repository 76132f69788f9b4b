"""The bus owner: scheduling on a fake clock (fake link), then real pymodbus over TCP and a pty.

The unit tests put an in-memory :class:`Link` under the real :class:`ModbusBus`
so the heartbeat lane, timeouts, retries and reconnects run on a FakeClock.
The integration tests at the end run the same bus on real pymodbus.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest

from surplus.clock import FakeClock
from surplus.modbus.base import BusError, ModbusExceptionReply, PortUnavailable
from surplus.modbus.bus import BusConfig, BusStats, LinkLost, ModbusBus

HB_ADDR, HB_VALUE = 0x0D00, 0x55AA


class FakeLink:
    """A line with a latency per transaction; devices can be silent or refuse."""

    def __init__(self, clock: FakeClock, latency_s: float = 0.05) -> None:
        self.clock = clock
        self.latency_s = latency_s
        self.available = True
        self.open = False
        self.silent: set[int] = set()
        self.refuse: dict[int, int] = {}  # address -> exception code
        self.drop_after: int | None = None  # lose the connection after this many transactions
        self.done: list[tuple[float, str, int, int]] = []  # (at, op, device, address)
        self.connects = 0

    @property
    def connected(self) -> bool:
        return self.open

    async def connect(self) -> None:
        self.connects += 1
        if not self.available:
            raise BusError("/dev/ttyFAKE: cannot open (no such device)")
        self.open = True

    def close(self) -> None:
        self.open = False

    async def _transact(self, op: str, device_id: int, address: int) -> None:
        if not self.open:
            raise LinkLost("/dev/ttyFAKE: connection lost")
        if self.drop_after is not None and len(self.done) >= self.drop_after:
            self.open = False
            raise LinkLost("/dev/ttyFAKE: connection lost")
        await self.clock.sleep(self.latency_s)
        if device_id in self.silent:
            await self.clock.sleep(3600)
        self.done.append((self.clock.now(), op, device_id, address))
        if address in self.refuse:
            raise ModbusExceptionReply(self.refuse[address], f"refused (exception {self.refuse[address]})")

    async def read(self, device_id: int, address: int, count: int) -> list[int]:
        await self._transact("read", device_id, address)
        return [address & 0xFFFF] * count

    async def write_register(self, device_id: int, address: int, value: int) -> None:
        await self._transact("hb" if address == HB_ADDR else "write", device_id, address)

    async def write_registers(self, device_id: int, address: int, values: list[int]) -> None:
        await self._transact("writeN", device_id, address)

    def beats(self, device_id: int = 1) -> list[float]:
        return [t for t, op, dev, _ in self.done if op == "hb" and dev == device_id]


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


async def make_bus(clock: FakeClock, link: FakeLink, **config: object) -> ModbusBus:
    cfg = BusConfig(port="/dev/ttyFAKE", **config)  # type: ignore[arg-type]
    bus = ModbusBus(cfg, clock, link_factory=lambda _: link)
    await bus.start()
    return bus


async def test_heartbeat_goes_first_and_keeps_its_cadence() -> None:
    clock, link = FakeClock(), FakeLink(FakeClock())
    link.clock = clock
    bus = await make_bus(clock, link)
    start = clock.now()
    bus.start_heartbeat(1, HB_ADDR, HB_VALUE, 3.0)
    await clock.advance(30)
    beats = link.beats()
    assert beats[0] - start <= link.latency_s + 1e-9
    assert len(beats) == 10
    assert max(gaps(beats)) == pytest.approx(3.0 + link.latency_s)
    assert bus.stats.heartbeats == 10
    await bus.close()


async def test_a_read_flood_never_delays_the_heartbeat_past_one_transaction() -> None:
    clock = FakeClock()
    link = FakeLink(clock, latency_s=0.3)
    bus = await make_bus(clock, link)
    bus.start_heartbeat(1, HB_ADDR, HB_VALUE, 3.0)
    done = 0

    async def reader() -> None:
        nonlocal done
        while True:
            await bus.read(1, 0x0500, 20)
            done += 1

    readers = [asyncio.create_task(reader()) for _ in range(20)]
    await clock.advance(60)
    for r in readers:
        r.cancel()
    beats = link.beats()
    assert done > 150  # the line stayed busy with reads
    assert len(beats) >= 15
    assert max(gaps(beats)) <= 3.0 + 2 * link.latency_s + 1e-9  # waited for at most one read
    await bus.close()


async def test_a_due_heartbeat_preempts_retries_of_a_silent_device() -> None:
    clock = FakeClock()
    link = FakeLink(clock)
    link.silent.add(7)
    bus = await make_bus(clock, link, timeout_s=1.0, retries=3)
    bus.start_heartbeat(1, HB_ADDR, HB_VALUE, 3.0)

    failures = 0

    async def hammer() -> None:
        nonlocal failures
        while True:
            with pytest.raises(BusError, match=r"no answer within 1 s \(4 attempts\)"):
                await bus.read(7, 0x0100, 4)
            failures += 1

    task = asyncio.create_task(hammer())
    await clock.advance(35)
    task.cancel()
    assert failures >= 4
    # Each failed read holds the line 4 s; without preemption a beat would come 7 s late.
    # With it: one in-flight attempt (1 s) and the quiet time after a timeout (0.5 s).
    assert max(gaps(link.beats())) <= 3.0 + 1.0 + 0.5 + link.latency_s + 1e-9
    assert bus.stats.timeouts >= 4 * failures
    await bus.close()


async def test_exception_replies_are_not_retried_and_keep_the_device_answering() -> None:
    clock = FakeClock()
    link = FakeLink(clock)
    link.refuse[0x0D04] = 3
    bus = await make_bus(clock, link)
    task = asyncio.create_task(bus.write_register(1, 0x0D04, 1))
    await clock.advance(1)
    with pytest.raises(ModbusExceptionReply) as info:
        await task
    assert info.value.code == 3
    assert [op for _, op, _, _ in link.done] == ["write"]
    assert bus.connected
    await bus.close()


async def test_missing_port_logs_once_retries_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="surplus.modbus.bus")
    clock = FakeClock()
    link = FakeLink(clock)
    link.available = False
    bus = await make_bus(clock, link, reconnect_interval_s=5.0)
    bus.start_heartbeat(1, HB_ADDR, HB_VALUE, 3.0)
    assert not bus.connected and "no such device" in (bus.last_error or "")
    with pytest.raises(PortUnavailable, match="cannot open"):
        await bus.read(1, 0, 1)
    await clock.advance(30)
    assert link.connects >= 6  # retried every 5 s
    link.available = True
    await clock.advance(5.5)
    assert bus.connected or link.open
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "retrying every 5 s" in warnings[0].getMessage()
    assert all(r.exc_info is None for r in caplog.records)
    assert link.beats(), "a fresh connection gets a heartbeat first"
    assert bus.stats.reconnects == 1
    await bus.close()


async def test_a_lost_connection_fails_the_caller_and_reconnects() -> None:
    clock = FakeClock()
    link = FakeLink(clock)
    bus = await make_bus(clock, link, reconnect_interval_s=2.0)
    await_read = asyncio.create_task(bus.read(1, 0x0100, 1))
    await clock.advance(0.1)
    assert await await_read == [0x0100]
    link.drop_after = len(link.done)
    task = asyncio.create_task(bus.read(1, 0x0100, 1))
    await clock.advance(0.1)
    with pytest.raises(BusError, match="connection lost"):
        await task
    assert not bus.connected
    link.drop_after = None
    await clock.advance(2.5)
    task = asyncio.create_task(bus.read(1, 0x0100, 1))
    await clock.advance(0.1)
    assert await task == [0x0100]
    assert bus.stats.reconnects == 1
    await bus.close()


async def test_close_fails_queued_and_in_flight_requests() -> None:
    clock = FakeClock()
    link = FakeLink(clock, latency_s=10)
    bus = await make_bus(clock, link)
    tasks = [asyncio.create_task(bus.read(1, 0x0100, 1)) for _ in range(3)]
    await clock.advance(1)
    await bus.close()
    for t in tasks:
        with pytest.raises(BusError, match="closed"):
            await t
    with pytest.raises(BusError, match="not started"):
        await bus.read(1, 0, 1)


async def test_stats_count_rtu_bytes() -> None:
    clock = FakeClock()
    link = FakeLink(clock)
    bus = await make_bus(clock, link)
    task = asyncio.gather(
        bus.read(1, 0x0500, 20), bus.write_registers(1, 0x0302, [1, 2]), bus.write_register(1, 0x0D05, 1)
    )
    await clock.advance(1)
    await task
    assert bus.stats == BusStats(
        transactions=3, bytes_sent=8 + 13 + 8, bytes_received=45 + 8 + 8, busy_us=3 * 50_000
    )
    await bus.close()


def test_heartbeat_interval_shrinks_to_meet_the_deadline() -> None:
    async def run() -> list[float]:
        clock = FakeClock()
        link = FakeLink(clock, latency_s=0.0)
        bus = await make_bus(clock, link, timeout_s=2.0, heartbeat_deadline_s=5.0)
        bus.start_heartbeat(1, HB_ADDR, HB_VALUE, 9.0)  # the Node server's 9 s
        await clock.advance(20)
        await bus.close()
        return link.beats()

    beats = asyncio.run(run())
    assert max(gaps(beats)) == pytest.approx(2.0)  # deadline 5 s - one 2 s transaction - 1 s quiet


async def test_lost_heartbeat_replies_show_in_the_acknowledged_gap_not_the_sent_one() -> None:
    """QA: the gap metric counted beats whose reply was lost (8.2 s reported, 4.74 s at the box)."""
    clock = FakeClock()
    link = FakeLink(clock)
    lost = {"on": False}
    inner = link.write_register

    async def write_register(device_id: int, address: int, value: int) -> None:
        await inner(device_id, address, value)  # the box got it ...
        if lost["on"]:
            await clock.sleep(3600)  # ... but its reply never arrives

    link.write_register = write_register  # type: ignore[method-assign]
    bus = await make_bus(clock, link, timeout_s=1.0, retries=0)
    bus.start_heartbeat(1, HB_ADDR, HB_VALUE, 3.0)
    await clock.advance(10)
    lost["on"] = True
    await clock.advance(12)
    lost["on"] = False
    await clock.advance(10)
    at_the_box = max(gaps(link.beats()))
    acknowledged = bus.worst_heartbeat_gaps()[1]
    sent = bus.worst_sent_heartbeat_gaps()[1]
    assert acknowledged > 10.0  # no reply for 12 s
    assert sent == pytest.approx(at_the_box, abs=0.1) and sent < 5.0  # what the box saw
    await bus.close()


async def test_the_line_says_how_full_it_is() -> None:
    """Issue 12: busy time of our transactions, as a counter and as the share of the last minute."""
    clock = FakeClock()
    link = FakeLink(clock, latency_s=0.3)
    bus = await make_bus(clock, link)
    assert bus.load() == 0.0

    async def reads(n: int) -> None:
        for _ in range(n):
            await bus.read(1, 0x0500, 20)

    task = asyncio.create_task(reads(20))  # 20 x 0.3 s = 6 s of a 60 s window
    await clock.advance(10)
    await task
    assert bus.stats.busy_us == pytest.approx(6_000_000, abs=1)
    assert bus.load() == pytest.approx(0.1, abs=1e-6)
    await clock.advance(55)  # the first reads fall out of the window
    assert 0.0 < bus.load() < 0.1
    await clock.advance(10)
    assert bus.load() == 0.0 and bus.stats.busy_us == pytest.approx(6_000_000, abs=1)  # the counter stays
    await bus.close()
