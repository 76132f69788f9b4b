"""``surplus init``: a commented starting config for the AMTRON on the line.

Finds the box like ``surplus probe`` (reads only) and fills what it reported
into ``init_template.yaml`` (the shape of config/amtron.yaml): port, baud rate
and frame, word order, device id, the box's maximum current as the fuse limit,
and its phase switching. It asks nothing; meters stay commented examples, so
the charger starts in ``fixed`` mode until one is set up.

Exit codes: 0 written, 1 the output file exists (without ``--force``) or cannot
be written, 2 no box answered, 3 no port could be opened.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import re
import string
import sys
from importlib import resources
from typing import Any

from .probe import add_discovery_options, discovery_kwargs, probe, setup_logging
from .probe_report import EXIT_PORT, BoxReport, ProbeResult, format_report
from .types import MAX_CURRENT_A, MIN_CURRENT_A

EXIT_FILE = 1
#: Where USB-RS485 adapters show up, most specific first.
PORT_PATTERNS = ("/dev/serial/by-id/*", "/dev/ttyUSB*", "/dev/ttyACM*")
#: The fixed-mode current of a fresh config: gentle, and never above the box's maximum.
START_CURRENT_A = 10.0
_PLAIN = re.compile(r"[A-Za-z0-9_./:@+-]+")


def candidate_ports(patterns: tuple[str, ...] = PORT_PATTERNS) -> list[str]:
    """Serial adapters present, one path per device (the stable by-id name when there is one)."""
    seen: set[str] = set()
    ports: list[str] = []
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            real = os.path.realpath(path)
            if real not in seen:
                seen.add(real)
                ports.append(path)
    return ports


def _scalar(text: str) -> str:
    """``text`` as a YAML scalar: plain when that reads back as the same string, else quoted."""
    if _PLAIN.fullmatch(text) and not text[0].isdigit() and text.lower() not in ("null", "true", "false"):
        return text
    return json.dumps(text)  # a JSON string is a YAML string


def _amps(value: float) -> str:
    return f"{value:g}"


def render(result: ProbeResult, box: BoxReport, *, config_path: str) -> str:
    """The config text for ``box`` (found on ``result.port``)."""
    template = string.Template(resources.files("surplus").joinpath("init_template.yaml").read_text())
    max_a = box.max_current_evse_a
    usable = max_a is not None and MIN_CURRENT_A <= max_a <= MAX_CURRENT_A
    fuse = _amps(max_a) if usable and max_a is not None else "16"
    fixed = _amps(min(START_CURRENT_A, max_a)) if usable and max_a is not None else _amps(START_CURRENT_A)
    if box.phase_switching:
        pv_phases = "auto       # the box switches between 1 and 3 phases"
    elif box.phase_options_hw == 0 or box.grid_phases == 1:
        pv_phases = "1          # the box cannot switch phases: one phase"
    else:
        pv_phases = "3          # the box cannot switch phases: three phases"
    fuse_comment = (
        "# the box's maximum (MAX_CURRENT_EVSE); lower it to your circuit's fuse"
        if usable
        else "# the box did not report a usable maximum: set this to your circuit's fuse"
    )
    return template.substitute(
        found="\n".join(f"# {line}" for line in _found_lines(result, box)),
        config_path=config_path,
        port=_scalar(result.port),
        baudrate=box.baudrate,
        parity={"N": "none", "E": "even", "O": "odd"}[box.frame[1]],
        stopbits=box.frame[2],
        word_order=box.word_order,
        device_id=box.device_id,
        fixed_current=fixed,
        pv_phases=pv_phases,
        fuse_limit=f"{fuse:<6} {fuse_comment}",
    )


def _found_lines(result: ProbeResult, box: BoxReport) -> list[str]:
    lines = [
        f"Found on {result.port}: device id {box.device_id} at {box.baudrate} baud {box.frame}, "
        f"register layout {box.layout},",
        f"firmware {box.firmware_version or '?'}, serial {box.serial_number or '?'}, "
        f"article {box.article_number or '?'};",
        f"maximum current {'?' if box.max_current_evse_a is None else _amps(box.max_current_evse_a)} A, "
        f"{box.phase_options_text or 'phases ?'}, grid phases {box.grid_phases or '?'}.",
        f"Heartbeat-loss fallback (0x030E): {box.fallback_text}.",
    ]
    if box.fallback_keeps_charging:
        lines.append("WARNING: if surplus stops while the car charges, the box goes on charging.")
        lines.append(
            "Set the fallback to 1 (pause) or a current you can afford with the MENNEKES configuration tool."
        )
    others = [b.device_id for b in result.boxes if b is not box]
    if others:
        lines.append(
            f"Other boxes on this line: device ids {', '.join(map(str, others))} (add them under chargers:)."
        )
    return lines


def _write(path: str, text: str, *, force: bool) -> None:
    """Write ``text`` to ``path``; without ``force`` only when nothing is there (checked atomically)."""
    if not force:
        with open(path, "x", encoding="utf-8") as f:
            f.write(text)
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _cmd_init(args: argparse.Namespace) -> int:
    out = args.output
    if out is not None and os.path.lexists(out) and not args.force:
        print(f"surplus init: {out} exists; not overwriting it (use --force)", file=sys.stderr)
        return EXIT_FILE
    try:
        kwargs = discovery_kwargs(args)
    except ValueError as exc:
        print(f"surplus init: {exc}", file=sys.stderr)
        return 2
    ports = [args.port] if args.port else candidate_ports()
    if not ports:
        print(
            "surplus init: no serial adapter found (looked for " + ", ".join(PORT_PATTERNS) + "); "
            "plug it in or give --port",
            file=sys.stderr,
        )
        return EXIT_PORT
    setup_logging(args.verbose)
    result: ProbeResult | None = None
    for port in ports:
        result = asyncio.run(probe(port, progress=_progress, **kwargs))
        if result.found:
            break
    assert result is not None
    if not result.found:
        print("\n".join(format_report(result)), file=sys.stderr)
        return result.exit_code
    box = result.boxes[0]
    text = render(result, box, config_path=out or "surplus.yaml")
    if out is None:
        sys.stdout.write(text)
        return 0
    try:
        _write(out, text, force=args.force)
    except FileExistsError:
        print(f"surplus init: {out} exists; not overwriting it (use --force)", file=sys.stderr)
        return EXIT_FILE
    except OSError as exc:
        print(f"surplus init: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FILE
    print(f"Wrote {out} for the AMTRON on {result.port}, device id {box.device_id}.")
    for line in _found_lines(result, box)[3:]:
        print(line)
    print(f"Next: set up a grid meter in it, then: surplus check-config {out} && surplus run -c {out}")
    return 0


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "init",
        help="write a commented starting config for the AMTRON found on the port",
        description="Find the AMTRON (reading only, like `surplus probe`) and write a starting config "
        "with its port, device id, maximum current and phase switching filled in.",
        epilog="Exit codes: 0 written, 1 FILE exists (without --force) or cannot be written, "
        "2 no box answered, 3 no port could be opened.",
    )
    p.add_argument(
        "--port",
        metavar="PORT",
        help="serial device or tcp://HOST:PORT (default: each adapter under "
        + ", ".join(PORT_PATTERNS)
        + " in turn)",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write the config here (default: print it)")
    p.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    add_discovery_options(p)
    p.set_defaults(func=_cmd_init)
