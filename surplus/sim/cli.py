"""``surplus sim``: serve simulated AMTRONs until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
from typing import Any

from surplus.clock import SystemClock

from .model import PROFILES, AmtronModel, EvProfile, profile_by_name
from .server import SimulatorServer

DEFAULT_TCP = "127.0.0.1:5020"
DEFAULT_DEVICE_ID = 50


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _device_id(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 247:
        raise argparse.ArgumentTypeError(f"device id must be 1..247, got {text!r}")
    return int(text)


#: ``--boxes N`` serves device ids 10, 11, ... (the range installers give the boxes of one line).
FIRST_BOX_ID = 10


def _box_count(text: str) -> int:
    n = int(text) if text.isdigit() else 0
    if not 1 <= n <= 247 - FIRST_BOX_ID + 1:
        raise argparse.ArgumentTypeError(f"boxes must be 1..{247 - FIRST_BOX_ID + 1}, got {text!r}")
    return n


def _fallback_current(text: str) -> int:
    if not text.isdigit() or not (int(text) in (0, 1) or 6 <= int(text) <= 32):
        raise argparse.ArgumentTypeError(f"fallback current must be 0, 1 or 6..32, got {text!r}")
    return int(text)


def add_parser(subparsers: Any) -> None:
    """Register the ``sim`` subcommand."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "sim",
        help="run the AMTRON simulator (RTU over TCP or a virtual serial port)",
        description="Serve one or more simulated AMTRON wallboxes until interrupted.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--tcp", type=_host_port, metavar="HOST:PORT", help=f"RTU framing over TCP (default {DEFAULT_TCP})"
    )
    where.add_argument(
        "--pty",
        nargs="?",
        const="",
        metavar="PATH",
        help="virtual serial port; PATH is the symlink to create",
    )
    p.add_argument(
        "--device-id", type=_device_id, action="append", dest="device_ids", metavar="ID",
        help=f"Modbus device id (repeatable; default {DEFAULT_DEVICE_ID})",
    )  # fmt: skip
    p.add_argument(
        "--boxes", type=_box_count, metavar="N",
        help=f"N boxes on one line, device ids {FIRST_BOX_ID}, {FIRST_BOX_ID + 1}, ... (instead of --device-id)",
    )  # fmt: skip
    p.add_argument(
        "--profile", choices=sorted(PROFILES), default="11kw", help="hardware variant (default 11kw)"
    )
    p.add_argument(
        "--ev",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a car is plugged in at start (default yes)",
    )
    p.add_argument("--seed", type=int, default=0, help="noise seed (device n gets seed + n)")
    p.add_argument("--wire-time", action="store_true", help="hold replies for their RS485 wire time")
    p.add_argument(
        "--baudrate",
        type=int,
        default=57600,
        help="the line's baud rate (57600): for --wire-time, and a pty client set to another rate gets no answer",
    )
    p.add_argument(
        "--parity",
        choices=("none", "even", "odd"),
        default="none",
        help="the line's parity (none): a pty client set to another parity gets no answer",
    )
    p.add_argument(
        "--fallback-current",
        type=_fallback_current,
        metavar="A",
        help="the box's heartbeat-loss fallback (0x030E): 0 keep the last values, 1 pause, 6..32 A "
        "(default 1, as the README's install steps set a real box)",
    )
    p.set_defaults(func=run)


def _ev(index: int) -> EvProfile:
    """The car of the ``index``-th box: the first as before, the others fuller and fuller."""
    return EvProfile() if index == 0 else EvProfile(soc=min(0.4 + 0.1 * index, 0.9))


def _build(args: argparse.Namespace) -> SimulatorServer:
    if args.boxes is not None and args.device_ids:
        raise ValueError("--boxes and --device-id exclude each other")
    device_ids: list[int] = args.device_ids or [DEFAULT_DEVICE_ID]
    if args.boxes is not None:
        device_ids = list(range(FIRST_BOX_ID, FIRST_BOX_ID + args.boxes))
    if len(set(device_ids)) != len(device_ids):
        raise ValueError("a device id appears twice")
    if args.baudrate <= 0:
        raise ValueError("--baudrate must be positive")
    clock = SystemClock()
    profile = profile_by_name(args.profile)
    if args.fallback_current is not None:
        profile = dataclasses.replace(profile, master_lost_fallback_current_a=args.fallback_current)
    parity = args.parity[0].upper()
    models = {
        # Each box its own noise and its own car (a different state of charge), so they differ.
        device_id: AmtronModel(clock, profile=profile, seed=args.seed + i, ev=_ev(i) if args.ev else None)
        for i, device_id in enumerate(device_ids)
    }
    if args.pty is not None:
        return SimulatorServer(
            models,
            transport="pty",
            link_path=args.pty or None,
            wire_time=args.wire_time,
            baudrate=args.baudrate,
            parity=parity,
        )
    host, port = args.tcp or _host_port(DEFAULT_TCP)
    return SimulatorServer(
        models,
        transport="tcp",
        host=host,
        port=port,
        wire_time=args.wire_time,
        baudrate=args.baudrate,
        parity=parity,
    )


async def _serve(args: argparse.Namespace) -> int:
    try:
        server = _build(args)
        await server.start()
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"surplus sim: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ids = ", ".join(str(d) for d in server.models)
    noun = "device id" if len(server.models) == 1 else "device ids"
    kw = "11 kW" if args.profile == "11kw" else "22 kW"
    print(f"AMTRON simulator ({kw}, {noun} {ids}) on {server.url} — use MODBUS_PORT={server.url}", flush=True)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        with contextlib.suppress(Exception):
            await server.stop()
    print("AMTRON simulator stopped", flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point of ``surplus sim``."""
    return asyncio.run(_serve(args))
