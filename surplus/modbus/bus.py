"""The bus owner: ONE asyncio task per RS485 line does every transaction.

RS485 is half duplex, so transactions are strictly one at a time. Callers
queue requests (:meth:`ModbusBus.read`, ``write_register(s)``) and await the
answer; the owner task takes them in order. Heartbeats are a priority lane:
before every transaction (including every retry of another request) the owner
writes each heartbeat that is due, so a heartbeat is never later than one
in-flight transaction, however many reads are queued.

Timeouts and retries are ours, timed by the injected :class:`Clock`; pymodbus
runs with ``retries=0`` and a slightly longer timeout as a backstop, so one
slow request cannot hold the line for ``timeout * (pymodbus retries + 1)``.

Reconnects are ours too: pymodbus's ``reconnect_delay`` is 0 (its automatic
reconnect off), because a second reconnect loop inside pymodbus would race the
owner, double its delay up to minutes, and log every attempt. The owner retries
every ``reconnect_interval_s`` and logs one line per state change.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Literal

from ..clock import Clock
from . import plan
from .base import BusError, ModbusExceptionReply, PortUnavailable
from .line import LOAD_WINDOW_S, BusConfig, BusStats
from .link import Link, LinkLost, PymodbusLink
from .polls import PollPlan

log = logging.getLogger(__name__)


#: What a queued request does.
Op = Literal["read", "write1", "writeN"]

__all__ = ["BusConfig", "BusStats", "Link", "LinkLost", "ModbusBus", "PymodbusLink"]


@dataclass(slots=True)
class _Request:
    op: Op
    device_id: int
    address: int
    count: int
    values: list[int]
    future: asyncio.Future[list[int]]

    def frame_bytes(self) -> tuple[int, int]:
        if self.op == "read":
            return plan.read_bytes(self.count)
        if self.op == "write1":
            return plan.write_single_bytes()
        return plan.write_multiple_bytes(self.count)

    def describe(self) -> str:
        verb = "read" if self.op == "read" else "write"
        return f"{verb} {self.count} @0x{self.address:04X} on device {self.device_id}"


@dataclass(slots=True)
class _Beat:
    device_id: int
    address: int
    value: int
    interval_s: float
    due_at: float
    failures: int = 0
    #: Clock times of delivered beats are kept short: only the last one.
    last_ok_at: float | None = None
    #: Longest time between two delivered (acknowledged) beats so far.
    worst_gap_s: float = 0.0
    #: The same for beats sent, acknowledged or not: a beat whose reply was lost
    #: usually reached the box, so this is closer to what the box saw.
    last_sent_at: float | None = None
    worst_sent_gap_s: float = 0.0

    def sent(self, at: float) -> None:
        if self.last_sent_at is not None:
            self.worst_sent_gap_s = max(self.worst_sent_gap_s, at - self.last_sent_at)
        self.last_sent_at = at


class _Timeout(BusError):
    pass


@dataclass(slots=True)
class _Counters:
    values: dict[str, int] = field(default_factory=lambda: {f.name: 0 for f in fields(BusStats)})

    def add(self, name: str, n: int = 1) -> None:
        self.values[name] += n


class ModbusBus:
    """Implements :class:`surplus.modbus.base.Bus`: one owner task, a queue, a heartbeat lane."""

    def __init__(
        self, config: BusConfig, clock: Clock, *, link_factory: Callable[[BusConfig], Link] | None = None
    ) -> None:
        self._config = config
        self._clock = clock
        self._link: Link = (link_factory or PymodbusLink)(config)
        self._queue: collections.deque[_Request] = collections.deque()
        self._current: _Request | None = None
        self._beats: dict[int, _Beat] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._port_up = False
        self._answered = False
        self._logged_down: str | None = None
        self._device_ok: dict[int, bool] = {}
        self._counters = _Counters()
        #: (end, duration) of the transactions of the last LOAD_WINDOW_S, for :meth:`load`.
        self._busy_log: collections.deque[tuple[float, float]] = collections.deque()
        self._dirty = False
        #: Silence kept after a timeout or a stray reply, so a late answer cannot pass for the next one.
        self._quiet_s = config.timeout_s / 2
        self.last_error: str | None = None
        #: Which boxes read their measurements in which tick (see :mod:`surplus.modbus.polls`).
        self.polls = PollPlan(
            tick_s=config.poll_tick_s, max_age_s=config.poll_max_age_s, target_load=config.poll_target_load
        )
        #: Average time a transaction took beyond its wire time (the box's turnaround, the gateway).
        self._turnaround_s = 0.0
        self._poll_problem: str | None = None  # the last one logged

    # --- public ------------------------------------------------------------
    @property
    def config(self) -> BusConfig:
        return self._config

    @property
    def connected(self) -> bool:
        """True while the port is open and the last transaction got an answer."""
        return self._port_up and self._link.connected and self._answered

    @property
    def stats(self) -> BusStats:
        """A copy of the counters."""
        return BusStats(**self._counters.values)

    def load(self) -> float:
        """How full the line has been over the last ``LOAD_WINDOW_S``: the share of that time
        spent in our transactions (0..1; what is left is for more boxes)."""
        now = self._clock.now()
        self._forget_busy(now)
        busy = sum(min(d, end - (now - LOAD_WINDOW_S)) for end, d in self._busy_log)
        return min(1.0, busy / LOAD_WINDOW_S)

    def _busy(self, started: float) -> float:
        end = self._clock.now()
        duration = max(0.0, end - started)
        self._counters.add("busy_us", round(duration * 1e6))
        self._busy_log.append((end, duration))
        self._forget_busy(end)
        return duration

    def _forget_busy(self, now: float) -> None:
        while self._busy_log and self._busy_log[0][0] <= now - LOAD_WINDOW_S:
            self._busy_log.popleft()

    def poll_turn(self, device_id: int, *, urgent: bool = False, reads: tuple[int, ...] = ()) -> bool:
        """True when ``device_id`` should read its measurements now; False: keep the last ones.

        ``reads``: the word counts of the box's measurement read, one per transaction
        (its wire time is the cost of a poll until one was measured). ``urgent``: the
        box's data matters now (e.g. it was just written to). See :class:`PollPlan`.
        """
        c = self._config
        beat_s = c.wire_time_s(*plan.write_single_bytes()) + self._turnaround_s
        self.polls.reserved_load = sum(beat_s / b.interval_s for b in self._beats.values())
        wire_s = sum(c.wire_time_s(*plan.read_bytes(n)) + self._turnaround_s for n in reads)
        due = self.polls.turn(device_id, self._clock.now(), urgent=urgent, wire_s=wire_s)
        problem = self.polls.problem
        if (problem is None) != (self._poll_problem is None):  # a warning once, not per new interval
            if problem is not None:
                log.warning("modbus %s: %s", c.port, problem)
            else:
                log.info(
                    "modbus %s: every box read within %g s again (every %g s)",
                    c.port,
                    self.polls.max_age_s,
                    self.polls.interval_s,
                )
            self._poll_problem = problem
        return due

    def last_heartbeat_at(self, device_id: int) -> float | None:
        """Clock time of the last delivered heartbeat for ``device_id`` (None: none yet)."""
        beat = self._beats.get(device_id)
        return beat.last_ok_at if beat else None

    def worst_heartbeat_gaps(self) -> dict[int, float]:
        """Per device with a delivered heartbeat: the longest gap between acknowledged beats so far,
        the open one included."""
        now = self._clock.now()
        return {
            device_id: max(beat.worst_gap_s, now - beat.last_ok_at)
            for device_id, beat in self._beats.items()
            if beat.last_ok_at is not None
        }

    def worst_sent_heartbeat_gaps(self) -> dict[int, float]:
        """Per device: the longest gap between heartbeats sent (acknowledged or not), the open one included."""
        now = self._clock.now()
        return {
            device_id: max(beat.worst_sent_gap_s, now - beat.last_sent_at)
            for device_id, beat in self._beats.items()
            if beat.last_sent_at is not None
        }

    async def start(self) -> None:
        """Open the port (once; failures are logged and retried in the background) and start the owner."""
        if self._task is not None:
            return
        self._closing = False
        await self._connect()
        self._task = asyncio.create_task(self._run(), name=f"modbus-bus {self._config.port}")

    async def close(self) -> None:
        """Stop the owner, fail what is queued, close the port."""
        self._closing = True
        self._wake.set()
        in_flight = self._current
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        closed = BusError(f"{self._config.port}: bus closed")
        if in_flight is not None:
            self._resolve(in_flight, closed)
        self._fail_queue(closed)
        self._link.close()
        self._port_up = False

    async def read(self, device_id: int, address: int, count: int) -> list[int]:
        """Read ``count`` holding registers (FC 0x03)."""
        if not 1 <= count <= 125:
            raise ValueError(f"count must be 1..125, not {count}")
        return await self._submit("read", device_id, address, count, [])

    async def write_register(self, device_id: int, address: int, value: int) -> None:
        """Write one register (FC 0x06)."""
        if not 0 <= value <= 0xFFFF:
            raise ValueError(f"value must be 0..65535, not {value}")
        await self._submit("write1", device_id, address, 1, [value])

    async def write_registers(self, device_id: int, address: int, values: list[int]) -> None:
        """Write several registers (FC 0x10)."""
        if not 1 <= len(values) <= 123 or any(not 0 <= v <= 0xFFFF for v in values):
            raise ValueError("values must be 1..123 words of 0..65535")
        await self._submit("writeN", device_id, address, len(values), list(values))

    def start_heartbeat(self, device_id: int, address: int, value: int, interval_s: float) -> None:
        """Write ``value`` now and then every ``interval_s``, ahead of all other traffic.

        The interval is shortened when needed so that a beat delayed by one
        in-flight transaction still lands within ``heartbeat_deadline_s``.
        """
        if not self._config.heartbeat_enabled:
            log.warning(
                "modbus %s: heartbeat disabled by configuration; device %d will not be kept alive",
                self._config.port,
                device_id,
            )
            return
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, not {interval_s}")
        effective = min(
            interval_s, self._config.heartbeat_deadline_s - self._config.timeout_s - self._quiet_s
        )
        self._beats[device_id] = _Beat(device_id, address, value, effective, due_at=self._clock.now())
        self._wake.set()

    def stop_heartbeat(self, device_id: int) -> None:
        """Stop that device's heartbeat."""
        self._beats.pop(device_id, None)

    # --- owner -------------------------------------------------------------
    async def _submit(self, op: Op, device_id: int, address: int, count: int, values: list[int]) -> list[int]:
        if self._task is None or self._closing:
            raise BusError(f"{self._config.port}: bus not started")
        if not self._port_up:
            raise PortUnavailable(self.last_error or f"{self._config.port}: connecting")
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(op, device_id, address, count, values, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        try:
            while not self._closing:
                if not self._port_up:
                    retry_at = self._clock.now() + self._config.reconnect_interval_s
                    while not self._closing and self._clock.now() < retry_at:
                        await self._wait(retry_at - self._clock.now())
                    if not self._closing:
                        await self._connect()
                    continue
                if await self._beat_due():
                    continue
                if self._queue:
                    self._current = self._queue.popleft()
                    try:
                        await self._perform(self._current)
                    finally:
                        self._current = None
                    continue
                await self._wait(self._until_next_beat())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not silently kill the heartbeat
            log.exception("modbus %s: bus owner crashed", self._config.port)
            self._fail_queue(BusError(f"{self._config.port}: bus owner crashed ({exc})"))
            raise

    async def _wait(self, seconds: float | None) -> None:
        """Sleep on the clock until ``seconds`` pass or someone wakes the owner."""
        self._wake.clear()
        if self._closing or (seconds is not None and seconds <= 0):
            return
        waiters: set[asyncio.Future[object]] = {asyncio.ensure_future(self._wake.wait())}
        if seconds is not None:
            waiters.add(asyncio.ensure_future(self._clock.sleep(seconds)))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    def _until_next_beat(self) -> float | None:
        if not self._beats:
            return None
        return min(b.due_at for b in self._beats.values()) - self._clock.now()

    async def _connect(self) -> None:
        try:
            await self._link.connect()
        except BusError as exc:
            self._set_down(str(exc))
            return
        if self._logged_down is not None:
            self._counters.add("reconnects")
            log.info("modbus %s: connected again", self._config.port)
        else:
            log.info("modbus %s: connected", self._config.port)
        self._logged_down = None
        self._port_up = True
        self.last_error = None
        now = self._clock.now()
        for beat in self._beats.values():  # a fresh connection gets a beat first thing
            beat.due_at = now
            beat.failures = 0

    def _set_down(self, reason: str) -> None:
        self._port_up = False
        self._answered = False
        self.last_error = reason
        self._link.close()
        if self._logged_down is None:
            port = self._config.port
            shown = reason if reason.startswith(port) else f"{port}: {reason}"
            log.warning("modbus %s; retrying every %g s", shown, self._config.reconnect_interval_s)
            self._logged_down = reason
        self._fail_queue(PortUnavailable(f"{self._config.port}: not connected ({reason})"))

    def _fail_queue(self, exc: BusError) -> None:
        while self._queue:
            req = self._queue.popleft()
            if not req.future.done():
                req.future.set_exception(exc)

    def _device_state(self, device_id: int, ok: bool, reason: str = "") -> None:
        if self._device_ok.get(device_id) == ok:
            return
        if ok and device_id in self._device_ok:
            log.info("modbus %s: device %d answers again", self._config.port, device_id)
        elif not ok:
            log.warning("modbus %s: device %d not answering (%s)", self._config.port, device_id, reason)
        self._device_ok[device_id] = ok

    async def _attempt(self, req: _Request) -> list[int]:
        """One transaction, bounded by ``timeout_s`` on the injected clock."""
        if self._dirty:
            # After a timeout or a reply that was not ours, a late reply may still
            # be on its way; let it arrive (pymodbus drops it) before talking again.
            self._dirty = False
            await self._clock.sleep(self._quiet_s)
        sent, received = req.frame_bytes()
        self._counters.add("transactions")
        self._counters.add("bytes_sent", sent)
        if req.op == "read":
            coro = self._link.read(req.device_id, req.address, req.count)
        elif req.op == "write1":
            coro = self._write1(req)
        else:
            coro = self._writeN(req)
        started = self._clock.now()
        work = asyncio.ensure_future(coro)
        timer = asyncio.ensure_future(self._clock.sleep(self._config.timeout_s))
        try:
            done, _ = await asyncio.wait({work, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work
            took = self._busy(started)
            if req.op == "read":
                self.polls.spent(req.device_id, took)
        if work in done and work.exception() is None:
            excess = max(0.0, took - self._config.wire_time_s(sent, received))
            self._turnaround_s += 0.1 * (excess - self._turnaround_s)
        if work not in done:
            self._answered = False
            self._dirty = True
            self._counters.add("timeouts")
            raise _Timeout(f"{req.describe()}: no answer within {self._config.timeout_s:g} s")
        try:
            result = work.result()
        except ModbusExceptionReply:
            self._counters.add("bytes_received", 5)
            self._answered = True
            raise
        except LinkLost:
            raise
        except BusError:
            self._dirty = True
            raise
        self._counters.add("bytes_received", received)
        self._answered = True
        return result

    async def _write1(self, req: _Request) -> list[int]:
        await self._link.write_register(req.device_id, req.address, req.values[0])
        return []

    async def _writeN(self, req: _Request) -> list[int]:
        await self._link.write_registers(req.device_id, req.address, req.values)
        return []

    async def _beat_due(self) -> bool:
        """Deliver every due heartbeat, earliest first. True when one was attempted."""
        did = False
        while self._port_up and not self._closing:
            now = self._clock.now()
            due = [b for b in self._beats.values() if b.due_at <= now]
            if not due:
                break
            beat = min(due, key=lambda b: b.due_at)
            did = True
            req = _Request(
                "write1",
                beat.device_id,
                beat.address,
                1,
                [beat.value],
                asyncio.get_running_loop().create_future(),
            )
            sent_at = self._clock.now()
            try:
                await self._attempt(req)
            except LinkLost as exc:
                self._set_down(str(exc))
                break
            except BusError as exc:
                if not isinstance(exc, PortUnavailable):
                    beat.sent(sent_at)  # on the wire: no answer, or a refusal
                self._counters.add("errors")
                beat.failures += 1
                # One immediate retry, then back to the cadence, so a dead device
                # cannot monopolise the line its neighbours share.
                beat.due_at = self._clock.now() + (0.0 if beat.failures == 1 else beat.interval_s)
                self._device_state(beat.device_id, False, str(exc))
                continue
            beat.failures = 0
            beat.sent(sent_at)
            delivered_at = self._clock.now()
            if beat.last_ok_at is not None:
                beat.worst_gap_s = max(beat.worst_gap_s, delivered_at - beat.last_ok_at)
            beat.last_ok_at = delivered_at
            beat.due_at = beat.last_ok_at + beat.interval_s
            self._counters.add("heartbeats")
            self._device_state(beat.device_id, True)
        return did

    async def _perform(self, req: _Request) -> None:
        if req.future.done():  # the caller gave up while queued
            return
        last: BusError | None = None
        for attempt in range(1 + self._config.retries):
            if attempt:
                await self._beat_due()  # a due heartbeat preempts retries
            if not self._port_up or self._closing:
                last = PortUnavailable(f"{self._config.port}: not connected ({self.last_error or 'closing'})")
                break
            if req.future.done():
                return
            try:
                result = await self._attempt(req)
            except ModbusExceptionReply as exc:
                self._counters.add("errors")
                self._device_state(req.device_id, True)
                self._resolve(req, exc)
                return
            except LinkLost as exc:
                self._counters.add("errors")
                self._set_down(str(exc))
                last = exc
                break
            except BusError as exc:
                self._counters.add("errors")
                last = exc
                continue
            self._device_state(req.device_id, True)
            self._resolve(req, result)
            return
        assert last is not None
        if isinstance(last, _Timeout):
            self._device_state(req.device_id, False, str(last))
            last = BusError(f"{last} ({1 + self._config.retries} attempts)")
        self.last_error = str(last)
        self._resolve(req, last)

    @staticmethod
    def _resolve(req: _Request, outcome: list[int] | BaseException) -> None:
        if req.future.done():
            return
        if isinstance(outcome, BaseException):
            req.future.set_exception(outcome)
        else:
            req.future.set_result(outcome)
