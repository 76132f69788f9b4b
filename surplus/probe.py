"""``surplus probe PORT``: is the wiring right, and what box is on the line? Reads only.

Opens the port with the AMTRON's defaults (57600 baud, 8N2, device id 50), or
what the options say, reads the box's identity and the settings that matter to
an energy manager, and says what it found. ``--scan`` tries every documented
device id (10-50), ``--scan-baudrate`` every documented baud rate. Nothing is
ever written: no heartbeat, no current, no setting (the tests check the
simulator's write log).

When nothing answers it lists what to check on the wire and the box; when the
box's heartbeat-loss fallback (0x030E) would keep it charging after surplus
stops, it says so.

Exit codes: 0 a box answered, 2 nothing answered, 3 the port cannot be opened.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .chargers.amtron_values import plausible_voltage
from .config import BAUDRATES
from .modbus import registers as R
from .probe_report import (
    DEFAULT_BAUDRATE,
    TIMEOUT_S,
    BoxReport,
    ProbeResult,
    fallback_meaning,
    format_report,
    ids_text,
)

if TYPE_CHECKING:
    from .modbus.bus import ModbusBus
    from .modbus.codec import Value, WordOrder

DEFAULT_DEVICE_ID = 50
#: The ids the configuration tool can give a satellite (the register notes: 10-50).
DOCUMENTED_IDS = tuple(range(10, 51))
#: Per-request timeout when scanning: each id asked once, quickly (one id: ``TIMEOUT_S``).
SCAN_TIMEOUT_S = 0.3

#: What the report reads after the layout version: identity, installer configuration, state.
_REPORT_REGISTERS: tuple[R.Register, ...] = (
    R.FIRMWARE_VERSION,
    R.SERIAL_NUMBER,
    R.ARTICLE_NUMBER,
    R.EVSE_STATE,
    R.MAX_CURRENT_HOUSE,
    R.MAX_CURRENT_EVSE,
    R.PHASE_SWITCHING_MODE,
    R.PHASE_OPTIONS_HW,
    R.MASTER_LOST_FALLBACK_CURRENT,
    R.GRID_PHASES_CONNECTED,
    R.VOLTAGE_L1,
    R.ACTIVE_ERROR_CODE,
    R.MASTER_LOST_FALLBACK_STATE,
)


def parse_ids(text: str) -> tuple[int, ...]:
    """``"10-12,50"`` -> (10, 11, 12, 50); ids must be 1..247."""
    ids: list[int] = []
    for part in text.split(","):
        lo_text, sep, hi_text = part.strip().partition("-")
        if not lo_text.isdigit() or (sep and not hi_text.isdigit()):
            raise ValueError(f"expected ids like 10-50 or 10,11,50, got {text!r}")
        lo = int(lo_text)
        hi = int(hi_text) if sep else lo
        if not 1 <= lo <= hi <= 247:
            raise ValueError(f"device ids must be 1..247 and ranges low-high, got {part.strip()!r}")
        ids.extend(i for i in range(lo, hi + 1) if i not in ids)
    return tuple(ids)


def scan_order(ids: Sequence[int]) -> tuple[int, ...]:
    """The satellite default 50 first (when included), then the rest in order."""
    return (*(i for i in ids if i == DEFAULT_DEVICE_ID), *(i for i in ids if i != DEFAULT_DEVICE_ID))


def baudrate_order(first: int) -> tuple[int, ...]:
    """The given rate, then the default 57600, then the other documented rates, fastest first."""
    rest = sorted((b for b in BAUDRATES if b not in (first, DEFAULT_BAUDRATE)), reverse=True)
    return tuple(dict.fromkeys((first, DEFAULT_BAUDRATE, *rest)))


def frame_text(parity: str, stopbits: int) -> str:
    return f"8{parity[0].upper()}{stopbits}"


async def _read(bus: ModbusBus, device_id: int, address: int, count: int, attempts: int = 2) -> list[int]:
    from .modbus.base import BusError, ModbusExceptionReply

    for attempt in range(attempts):
        try:
            return await bus.read(device_id, address, count)
        except ModbusExceptionReply:
            raise
        except BusError:
            if attempt + 1 == attempts:
                raise
    raise AssertionError("unreachable")


async def describe(bus: ModbusBus, device_id: int, layout: int, *, baudrate: int, frame: str) -> BoxReport:
    """Read the report's registers from a box that answered with register layout ``layout``."""
    from .modbus import plan
    from .modbus.base import BusError
    from .modbus.codec import decode_words

    read: list[tuple[plan.Span, list[int]]] = []
    problems: list[str] = []
    for span in plan.plan_reads(_REPORT_REGISTERS, layout=layout):
        try:
            read.append((span, await _read(bus, device_id, span.address, span.count)))
        except BusError as exc:
            problems.append(f"reading {span.label} failed: {' '.join(str(exc).split())}")

    def decoded(order: WordOrder) -> dict[str, Value]:
        out: dict[str, Value] = {}
        for span, words in read:
            out.update(decode_words(span.registers, span.address, words, order))
        return out

    # Like the driver: a VOLTAGE_L1 that only makes sense the other way round means swapped words.
    word_order: WordOrder = "big"
    values = decoded(word_order)
    volts = values.get(R.VOLTAGE_L1.name)
    if isinstance(volts, float) and not plausible_voltage(volts):
        swapped = decoded("little")
        other = swapped.get(R.VOLTAGE_L1.name)
        if isinstance(other, float) and plausible_voltage(other):
            word_order, values = "little", swapped

    def num(reg: R.Register) -> float | None:
        v = values.get(reg.name)
        return float(v) if isinstance(v, (int, float)) else None

    def whole(reg: R.Register) -> int | None:
        v = num(reg)
        return None if v is None else int(v)

    def text(reg: R.Register) -> str | None:
        v = values.get(reg.name)
        return None if v is None else str(v)

    evse, error, options = whole(R.EVSE_STATE), whole(R.ACTIVE_ERROR_CODE), whole(R.PHASE_OPTIONS_HW)
    if options is None and layout < R.PHASE_OPTIONS_HW.since_layout and not problems:
        options = 1  # layout 1.0.0 has no PHASE_OPTIONS_HW: the 3-phase-only hardware
    grid = whole(R.GRID_PHASES_CONNECTED)
    fallback = whole(R.MASTER_LOST_FALLBACK_CURRENT)
    fallback_text, keeps = fallback_meaning(fallback)
    mode = whole(R.PHASE_SWITCHING_MODE)
    state = whole(R.MASTER_LOST_FALLBACK_STATE)
    return BoxReport(
        device_id=device_id,
        baudrate=baudrate,
        frame=frame,
        layout_version=layout,
        layout=R.MODBUS_LAYOUT_VERSION.enum.get(layout, f"unknown (0x{layout:04X})"),
        firmware_version=text(R.FIRMWARE_VERSION),
        serial_number=text(R.SERIAL_NUMBER),
        article_number=text(R.ARTICLE_NUMBER),
        evse_state=evse,
        evse_state_text=None if evse is None else R.EVSE_STATE.text(evse),
        error_code=error,
        error_text=None if error is None else R.ACTIVE_ERROR_CODE.text(error),
        max_current_evse_a=num(R.MAX_CURRENT_EVSE),
        max_current_house_a=num(R.MAX_CURRENT_HOUSE),
        phase_options_hw=options,
        phase_options_text=None if options is None else R.PHASE_OPTIONS_HW.text(options),
        phase_switching=None if options is None else options == 2,
        phase_switching_mode_text=None if mode is None else R.PHASE_SWITCHING_MODE.text(mode),
        grid_phases=None if grid is None else (1 if grid == 0 else 3),
        fallback_current_a=fallback,
        fallback_text=fallback_text,
        fallback_keeps_charging=keeps,
        fallback_active=None if state is None else bool(state),
        voltage_l1_v=num(R.VOLTAGE_L1),
        word_order=word_order,
        problems=tuple(problems),
    )


async def probe(
    port: str,
    *,
    device_ids: Sequence[int] = (DEFAULT_DEVICE_ID,),
    baudrates: Sequence[int] = (DEFAULT_BAUDRATE,),
    parity: str = "N",
    stopbits: int = 2,
    timeout_s: float | None = None,
    scanned: bool = False,
    scanned_baudrates: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> ProbeResult:
    """Ask each id at each baud rate (stopping at the first rate where a box answered). Reads only."""
    from .clock import SystemClock
    from .modbus.base import BusError, ModbusExceptionReply, PortUnavailable
    from .modbus.bus import BusConfig, ModbusBus

    if timeout_s is None:
        timeout_s = SCAN_TIMEOUT_S if len(device_ids) > 1 else TIMEOUT_S
    # One id: asked twice; a scan asks each id once (a box that misses one read is rare and shows on a rerun).
    retries = 0 if len(device_ids) > 1 else 1
    frame = frame_text(parity, stopbits)
    result = ProbeResult(
        port=port,
        frame=frame,
        device_ids=tuple(device_ids),
        timeout_s=timeout_s,
        scanned=scanned,
        scanned_baudrates=scanned_baudrates,
    )
    # Each silent id costs its attempts, plus the quiet time the bus keeps after a timeout.
    per_id_s = (1 + retries) * timeout_s * 1.5
    for baudrate in baudrates:
        result.baudrates_tried.append(baudrate)
        config = BusConfig(
            port=port,
            baudrate=baudrate,
            parity=parity,
            stopbits=stopbits,
            timeout_s=timeout_s,
            retries=retries,
            heartbeat_enabled=False,
            reconnect_interval_s=60.0,
        )
        bus = ModbusBus(config, SystemClock())
        await bus.start()
        try:
            if bus.last_error is not None:
                result.port_error = bus.last_error
                return result
            which = ids_text(device_ids)
            progress(
                f"{port}: {baudrate} baud {frame}, asking device {which} "
                f"({timeout_s:g} s each, at most about {len(device_ids) * per_id_s:.0f} s)"
            )
            for asked, device_id in enumerate(device_ids, 1):
                if asked > 1 and asked % 10 == 1:
                    progress(f"  {asked - 1} of {len(device_ids)} ids asked")
                try:
                    words = await bus.read(
                        device_id, R.MODBUS_LAYOUT_VERSION.address, R.MODBUS_LAYOUT_VERSION.count
                    )
                except ModbusExceptionReply as exc:
                    result.other_replies.append(f"device id {device_id} at {baudrate} baud: {exc}")
                    progress(f"  device id {device_id}: answered with a Modbus exception ({exc})")
                    continue
                except PortUnavailable as exc:
                    result.port_error = str(exc)
                    return result
                except BusError:
                    continue
                progress(f"  device id {device_id}: answered, reading it")
                result.boxes.append(
                    await describe(bus, device_id, int(words[0]), baudrate=baudrate, frame=frame)
                )
        finally:
            await bus.close()
        if result.boxes:
            break
    return result


# --- command line -------------------------------------------------------------------------------


def _ids_arg(text: str) -> tuple[int, ...]:
    try:
        return parse_ids(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _device_id_arg(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 247:
        raise argparse.ArgumentTypeError(f"device id must be 1..247, got {text!r}")
    return int(text)


def _baudrate_arg(text: str) -> int:
    if not text.isdigit() or int(text) not in BAUDRATES:
        raise argparse.ArgumentTypeError(
            f"baud rate must be one of {', '.join(map(str, BAUDRATES))}, got {text!r}"
        )
    return int(text)


def _timeout_ms_arg(text: str) -> int:
    if not text.isdigit() or not 50 <= int(text) <= 3000:
        raise argparse.ArgumentTypeError(f"timeout must be 50..3000 ms, got {text!r}")
    return int(text)


def add_discovery_options(p: argparse.ArgumentParser) -> None:
    """The options ``probe`` and ``init`` share: where and how to look for the box."""
    p.add_argument(
        "--device-id", type=_device_id_arg, default=DEFAULT_DEVICE_ID, metavar="ID",
        help=f"device id to ask (default {DEFAULT_DEVICE_ID}, the satellite default)",
    )  # fmt: skip
    p.add_argument("--scan", action="store_true", help="try every documented device id (10-50), 50 first")
    p.add_argument(
        "--ids", type=_ids_arg, metavar="IDS",
        help="the ids --scan tries, e.g. 10-20 or 11,12,50 (default 10-50)",
    )  # fmt: skip
    p.add_argument(
        "--baudrate", type=_baudrate_arg, default=DEFAULT_BAUDRATE,
        help=f"baud rate (default {DEFAULT_BAUDRATE})",
    )  # fmt: skip
    p.add_argument(
        "--scan-baudrate", action="store_true",
        help=f"also try the other documented baud rates ({', '.join(map(str, BAUDRATES))})",
    )  # fmt: skip
    p.add_argument("--parity", choices=("none", "even", "odd"), default="none", help="parity (default none)")
    p.add_argument("--stopbits", type=int, choices=(1, 2), default=2, help="stop bits (default 2)")
    p.add_argument(
        "--timeout-ms", type=_timeout_ms_arg, metavar="MS",
        help=f"per-request timeout (default {TIMEOUT_S * 1000:g} ms for one id, "
        f"{SCAN_TIMEOUT_S * 1000:g} ms per id when scanning)",
    )  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true", help="log every bus event to stderr")


def discovery_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`probe` keyword arguments from the shared options."""
    if args.ids is not None and not args.scan:
        raise ValueError("--ids only goes with --scan")
    ids = scan_order(args.ids or DOCUMENTED_IDS) if args.scan else (args.device_id,)
    return {
        "device_ids": ids,
        "baudrates": baudrate_order(args.baudrate) if args.scan_baudrate else (args.baudrate,),
        "parity": args.parity[0].upper(),
        "stopbits": args.stopbits,
        "timeout_s": None if args.timeout_ms is None else args.timeout_ms / 1000,
        "scanned": args.scan,
        "scanned_baudrates": args.scan_baudrate,
    }


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.CRITICAL,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _cmd_probe(args: argparse.Namespace) -> int:
    try:
        kwargs = discovery_kwargs(args)
    except ValueError as exc:
        print(f"surplus probe: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.verbose)
    result = asyncio.run(probe(args.port, progress=_progress, **kwargs))
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
    else:
        print("\n".join(format_report(result)))
    return result.exit_code


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "probe",
        help="read-only check of the wiring and the wallbox (before any config exists)",
        description="Find the AMTRON on PORT and show what it reports. Reads only; never writes.",
        epilog="Exit codes: 0 a box answered, 2 nothing answered, 3 the port cannot be opened.",
    )
    p.add_argument("port", metavar="PORT", help="serial device, e.g. /dev/ttyUSB0, or tcp://HOST:PORT")
    add_discovery_options(p)
    p.add_argument("--json", action="store_true", help="print JSON (progress still goes to stderr)")
    p.set_defaults(func=_cmd_probe)
