"""Command line: ``surplus run | sim | simulate | call | check-config | plugins | probe | init | example-config``.

Each subcommand lives next to the code it drives and exposes
``add_parser(subparsers)``, which registers the subcommand and sets
``func(args) -> int`` on it. Only the module of the command being run is
imported (``surplus call`` needs the standard library alone, not aiohttp or
pymodbus); ``surplus --help`` and unknown commands import them all.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

#: Command name -> the module that registers it, in the order ``--help`` lists them.
_COMMANDS = {
    "run": "surplus.runner",
    "sim": "surplus.sim.cli",
    "simulate": "surplus.sim.simulate_cli",
    "check-config": "surplus.config_cli",
    "plugins": "surplus.config_cli",
    "call": "surplus.rpc_cli",
    "probe": "surplus.probe",
    "init": "surplus.init_cli",
    "example-config": "surplus.example_config",
}

#: Exit status after the reader of our output went away (``surplus plugins | head``), as a shell reports SIGPIPE.
EXIT_BROKEN_PIPE = 141


def _command_word(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with a known ``command``, only that command's module is imported."""
    parser = argparse.ArgumentParser(
        prog="surplus", description="Solar-surplus charging for MENNEKES AMTRON."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = [_COMMANDS[command]] if command in _COMMANDS else list(dict.fromkeys(_COMMANDS.values()))
    for name in wanted:
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
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command_word(argv)).parse_args(argv)
    try:
        rc = int(args.func(args))
        sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `surplus plugins | head`: the reader has what it wanted. Point stdout at /dev/null so
        # the interpreter's final flush does not fail again, and end quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return rc


if __name__ == "__main__":
    sys.exit(main())
