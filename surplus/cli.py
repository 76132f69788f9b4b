"""Command line: ``surplus run | sim | simulate | call | check-config | plugins | probe | init``.

Each subcommand lives next to the code it drives and exposes
``add_parser(subparsers)``, which registers the subcommand and sets
``func(args) -> int`` on it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

_COMMAND_MODULES = (
    "surplus.runner",  # run
    "surplus.sim.cli",  # sim
    "surplus.sim.simulate_cli",  # simulate
    "surplus.config_cli",  # check-config, plugins
    "surplus.rpc_cli",  # call
    "surplus.probe",  # probe
    "surplus.init_cli",  # init
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="surplus", description="Solar-surplus charging for MENNEKES AMTRON."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``surplus`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
