"""Read planning: which registers to poll, grouped into as few reads as the map allows.

A read may cover registers nobody asked for, but never an address the device
does not have: real AMTRON firmware rejects reads that cross unmapped
addresses (see the register notes), so "contiguous" means "no unmapped address
in between" for the layout the device reports. Write-only registers (the
heartbeat) count as unmapped for reading.

The poll sets are data: :data:`FULL_POLL` is everything a snapshot needs,
:data:`FAST_POLL` what changes every second. The 0x07xx settings block is in
neither: it is persistent configuration, read on request only.

The framing arithmetic at the bottom (RTU bytes and wire time) is what
``bench/bus_poll.py`` compares plans against.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from . import registers as R
from .registers import Block, Register

#: Registers per read the AMTRON is known to accept (MEM caps at 100; the protocol at 125).
DEFAULT_MAX_COUNT = 100
#: The Modbus limit for one read of holding registers (FC 0x03).
MAX_READ_REGISTERS = 125
#: The newest layout we know; ``layout=None`` plans for it.
LATEST_LAYOUT = max(R.MODBUS_LAYOUT_VERSION.enum)


@dataclass(frozen=True, slots=True, kw_only=True)
class Span:
    """One read transaction: ``count`` words from ``address``, decoding ``registers``."""

    address: int
    count: int
    registers: tuple[Register, ...]

    @property
    def end(self) -> int:
        """First address after the span."""
        return self.address + self.count

    @property
    def label(self) -> str:
        """Register names for messages, e.g. ``CURRENT_L1..POWER_OVERALL``."""
        first, last = self.registers[0].name, self.registers[-1].name
        return first if first == last else f"{first}..{last}"


def _readable(regs: Iterable[Register]) -> tuple[Register, ...]:
    return tuple(r for r in regs if r.access.readable)


INFO: tuple[Register, ...] = _readable(r for r in R.REGISTERS if r.block is Block.GENERAL)
CONFIG: tuple[Register, ...] = _readable(r for r in R.REGISTERS if r.block is Block.CONFIGURATION)
#: Every tick, the "measurements-only" poll: what the control decision needs each
#: second and what changes on its own (EVSE state, currents/voltages/power, errors).
FAST_POLL: tuple[Register, ...] = _readable(
    r
    for r in R.REGISTERS
    if r.block in (Block.OUTPUT_MEASUREMENTS, Block.DIAGNOSTICS)
    or R.EVSE_STATE.address <= r.address < R.CP_STATE.address
)
#: Read back after every write and every few seconds: what our own writes change
#: (EM current, release, phases, lock), the signalled current, session, temperature and the
#: energy counters (so a total is never more than a few seconds behind the box).
CONTROL_POLL: tuple[Register, ...] = _readable(
    r
    for r in R.REGISTERS
    if r.block in (Block.INPUT_MEASUREMENTS, Block.CHARGING_SESSION, Block.FUNCTIONS, Block.STATISTICS)
    or (r.block is Block.STATUS and r.address >= R.CP_STATE.address)
    or r is R.CHARGING_CURRENT_EM
)
#: Everything the snapshot needs: all readable registers except the 0x07xx settings.
FULL_POLL: tuple[Register, ...] = _readable(r for r in R.REGISTERS if r.block is not Block.SETTINGS)


def merge_ranges(
    ranges: Iterable[tuple[int, int, int]], *, max_count: int = MAX_READ_REGISTERS
) -> list[tuple[int, int, int]]:
    """``(unit, start, end)`` ranges into as few ``(unit, start, count)`` reads as cover them.

    Ranges of one unit share a read while it stays within ``max_count`` registers
    (for maps without holes, e.g. a SunSpec chain; the AMTRON map uses :func:`plan_reads`).
    """
    reads: list[tuple[int, int, int]] = []
    for unit, start, end in sorted(ranges):
        if (
            reads
            and reads[-1][0] == unit
            and max(end, reads[-1][1] + reads[-1][2]) - reads[-1][1] <= max_count
        ):
            last_unit, last_start, last_count = reads[-1]
            reads[-1] = (last_unit, last_start, max(end, last_start + last_count) - last_start)
        else:
            reads.append((unit, start, end - start))
    return reads


def for_layout(registers: Iterable[Register], layout: int | None) -> tuple[Register, ...]:
    """The registers a device with register layout ``layout`` has (None: the newest)."""
    top = LATEST_LAYOUT if layout is None else layout
    return tuple(r for r in registers if r.since_layout <= top)


@functools.lru_cache(maxsize=16)
def _mapped_addresses(layout: int | None) -> frozenset[int]:
    return frozenset(a for r in for_layout(_readable(R.REGISTERS), layout) for a in range(r.address, r.end))


def _prepare(registers: Iterable[Register], layout: int | None, max_count: int) -> list[Register]:
    if not 1 <= max_count <= 125:
        raise ValueError(f"max_count must be 1..125, not {max_count}")
    unique = {r.address: r for r in for_layout(registers, layout)}
    regs = sorted(unique.values(), key=lambda r: r.address)
    for reg in regs:
        if not reg.access.readable:
            raise ValueError(f"{reg.name} is write-only and cannot be read")
        if reg.count > max_count:
            raise ValueError(f"{reg.name} needs {reg.count} registers, more than max_count={max_count}")
    return regs


def plan_reads(
    registers: Iterable[Register], *, max_count: int = DEFAULT_MAX_COUNT, layout: int | None = None
) -> list[Span]:
    """Group ``registers`` into the fewest reads that never cross an unmapped address.

    Registers the device lacks (``since_layout`` above ``layout``) are dropped.
    Two wanted registers share a read when every address between them is mapped
    and the read stays within ``max_count`` words; the words in between are read
    and ignored, which is cheaper on the wire than a second transaction.
    """
    return list(_plan(tuple(registers), max_count, layout))


@functools.lru_cache(maxsize=64)
def _plan(registers: tuple[Register, ...], max_count: int, layout: int | None) -> tuple[Span, ...]:
    # Memoised: the driver asks for the same few poll sets every tick.
    regs = _prepare(registers, layout, max_count)
    mapped = _mapped_addresses(layout)
    spans: list[Span] = []
    start = 0
    group: list[Register] = []
    for reg in regs:
        if group:
            end = group[-1].end
            bridged = all(a in mapped for a in range(end, reg.address))
            if bridged and reg.end - start <= max_count:
                group.append(reg)
                continue
            spans.append(Span(address=start, count=end - start, registers=tuple(group)))
        start, group = reg.address, [reg]
    if group:
        spans.append(Span(address=start, count=group[-1].end - start, registers=tuple(group)))
    return tuple(spans)


# --- RTU framing arithmetic ---------------------------------------------------
#: Bits per character at 8N2 (and 8E1/8O1): start + 8 data + parity/stop.
BITS_PER_CHAR = 11
#: Silent interval that ends an RTU frame, in characters.
FRAME_GAP_CHARS = 3.5
#: Request for FC 0x03: address, function, start (2), count (2), CRC (2).
READ_REQUEST_BYTES = 8
#: Reply overhead for FC 0x03: address, function, byte count, CRC (2).
READ_REPLY_OVERHEAD_BYTES = 5


def read_bytes(count: int) -> tuple[int, int]:
    """RTU bytes (request, reply) of one FC 0x03 read of ``count`` words."""
    return READ_REQUEST_BYTES, READ_REPLY_OVERHEAD_BYTES + 2 * count


def write_single_bytes() -> tuple[int, int]:
    """RTU bytes (request, reply) of one FC 0x06 write (the reply echoes the request)."""
    return 8, 8


def write_multiple_bytes(count: int) -> tuple[int, int]:
    """RTU bytes (request, reply) of one FC 0x10 write of ``count`` words."""
    return 9 + 2 * count, 8


def wire_time_s(total_bytes: int, frames: int, *, baudrate: int = 57600) -> float:
    """Time the bytes and the inter-frame gaps occupy on the line (no device turnaround)."""
    return (total_bytes + FRAME_GAP_CHARS * frames) * BITS_PER_CHAR / baudrate


@dataclass(frozen=True, slots=True, kw_only=True)
class Cost:
    """What a set of reads costs on the wire."""

    transactions: int
    words: int
    request_bytes: int
    reply_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.request_bytes + self.reply_bytes

    def wire_time_s(self, baudrate: int = 57600) -> float:
        """Line time of all requests and replies, two frames per transaction."""
        return wire_time_s(self.total_bytes, 2 * self.transactions, baudrate=baudrate)


def cost(spans: Iterable[Span]) -> Cost:
    """The wire cost of reading ``spans``."""
    spans = list(spans)
    words = sum(s.count for s in spans)
    return Cost(
        transactions=len(spans),
        words=words,
        request_bytes=READ_REQUEST_BYTES * len(spans),
        reply_bytes=READ_REPLY_OVERHEAD_BYTES * len(spans) + 2 * words,
    )


def lower_bound(
    registers: Iterable[Register], *, max_count: int = DEFAULT_MAX_COUNT, layout: int | None = None
) -> Cost:
    """The cheapest any plan could read ``registers``: a bound, computed without planning.

    Transactions: within each maximal run of mapped addresses, the fewest
    windows of ``max_count`` words that cover every wanted register (greedy
    from the left is optimal for covering points on a line). Words: only the
    wanted ones. A real plan may read more words (bridging), never fewer.
    """
    regs = _prepare(registers, layout, max_count)
    mapped = _mapped_addresses(layout)
    transactions = 0
    window_start: int | None = None
    prev_end = 0
    for reg in regs:
        joinable = window_start is not None and all(a in mapped for a in range(prev_end, reg.address))
        if not joinable or reg.end - (window_start or 0) > max_count:
            transactions += 1
            window_start = reg.address
        prev_end = reg.end
    wanted_words = sum(r.count for r in regs)
    return Cost(
        transactions=transactions,
        words=wanted_words,
        request_bytes=READ_REQUEST_BYTES * transactions,
        reply_bytes=READ_REPLY_OVERHEAD_BYTES * transactions + 2 * wanted_words,
    )
