"""``surplus example-config [NAME]``: print a shipped example config or the systemd unit.

The files are the repository's ``config/`` directory. A wheel carries them as
package data in ``surplus/examples/`` (``pyproject.toml`` maps that package to
``config/``); a source checkout (``make``'s editable install) reads ``config/``.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

#: What ``surplus example-config`` offers, with one line each.
EXAMPLES = {
    "amtron.yaml": "a real AMTRON on an RS485 adapter, commented (start here; `surplus init` fills one in)",
    "demo.yaml": "every key with its default: the built-in simulator and a simulated meter",
    "carpark.yaml": "several chargers on two lines behind one fuse: buses, circuits, priorities (a demo as is)",
    "surplus.service": "the systemd unit (its header says how to install it)",
    "prometheus.yml": "a Prometheus scrape config for /metrics",
    "prometheus-fleet.yml": "one Prometheus over several sites (direct scrapes or federation)",
    "grafana-dashboard.json": "a Grafana dashboard over those metrics",
}


class UnknownExample(LookupError):
    """No shipped example has that name."""


def _resolve(name: str) -> str:
    if name in EXAMPLES:
        return name
    matches = [n for n in EXAMPLES if n.split(".", 1)[0] == name]
    if len(matches) == 1:
        return matches[0]
    raise UnknownExample(f"no example config {name!r}; there are: {', '.join(EXAMPLES)}")


def example_file(name: str) -> Traversable:
    """The shipped file ``name`` (``amtron.yaml``, or ``amtron``). Raises ``UnknownExample``."""
    name = _resolve(name)
    packaged = resources.files("surplus").joinpath("examples", name)
    if packaged.is_file():
        return packaged
    checkout = Path(__file__).resolve().parent.parent / "config" / name
    if checkout.is_file():
        return checkout
    raise UnknownExample(f"{name} is not installed with this copy of surplus (looked in {packaged})")


def read_example(name: str) -> str:
    """The text of the shipped file ``name``. Raises ``UnknownExample``."""
    return example_file(name).read_text(encoding="utf-8")


def _cmd(args: argparse.Namespace) -> int:
    if args.name is None:
        width = max(len(n) for n in EXAMPLES)
        for name, what in EXAMPLES.items():
            print(f"{name:<{width}}  {what}")
        print(
            "\nsurplus example-config NAME prints one, e.g. surplus example-config amtron.yaml > surplus.yaml"
        )
        return 0
    try:
        text = read_example(args.name)
    except UnknownExample as exc:
        print(f"surplus example-config: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "example-config",
        help="print a shipped example config or the systemd unit (no NAME: list them)",
        description="Print a shipped example config, e.g. `surplus example-config amtron.yaml > surplus.yaml`.",
    )
    p.add_argument("name", nargs="?", metavar="NAME", help=f"one of: {', '.join(EXAMPLES)}")
    p.set_defaults(func=_cmd)
