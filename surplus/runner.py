"""``surplus run``: build the whole stack from a config and run it.

With ``bus.port: sim`` (the default, and ``config/demo.yaml``) the built-in
AMTRON simulator is started in-process and served over RTU-over-TCP on
127.0.0.1, so the real bus owner and driver talk real Modbus to it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .clock import Clock, SystemClock
from .config import (
    BusSection,
    Config,
    ConfigError,
    bus_sections,
    charger_bus,
    load_config,
    to_circuits,
    to_limits,
    validate_plugins,
)
from .governor import SafetyGovernor
from .loop import ChargerSlot, Controller, plausible_meter_w
from .meter import Meter, MeterEnv
from .modbus.bus import BusConfig, ModbusBus
from .plugins import collect_meters, collect_strategies, describe_plugins, make_plugin_manager, strategy_infos
from .state import StateBoard

log = logging.getLogger("surplus")


@dataclass
class Stack:
    """Everything ``surplus run`` starts, so tests can build the same thing."""

    config: Config
    controller: Controller
    buses: list[ModbusBus] = field(default_factory=list)
    simulator: Any = None  # surplus.sim.server.SimulatorServer when bus.port is "sim" (the first line's)
    simulators: list[Any] = field(default_factory=list)  # one per line on port "sim"
    web: Any = None  # surplus.web.WebServer when the RPC server runs
    history: Any = None  # surplus.history.History when history.path is set
    mqtt: Any = None  # surplus.mqtt_bridge.MqttBridge when the mqtt: section is on


def bus_config(config: Config, port: str, section: BusSection | None = None) -> BusConfig:
    """The settings of one line (default: the single ``bus:``), on ``port``."""
    b = config.bus if section is None else section
    return BusConfig(
        port=port,
        baudrate=b.baudrate,
        bytesize=b.bytesize,
        parity=b.parity_code,
        stopbits=b.stopbits,
        timeout_s=b.timeout_ms / 1000.0,
        retries=b.retries,
        reconnect_interval_s=b.reconnect_interval_ms / 1000.0,
        heartbeat_enabled=config.heartbeat.enabled,
        heartbeat_interval_s=config.heartbeat.interval_s,
        poll_tick_s=config.control.tick_s,
        poll_max_age_s=config.control.stale_after_s,
    )


async def _start_simulator(config: Config, clock: Clock, device_ids: tuple[int, ...]) -> Any:
    from .sim.model import AmtronModel, EvProfile, profile_by_name
    from .sim.server import SimulatorServer

    sim = config.simulator
    models = {
        device_id: AmtronModel(
            clock,
            profile=profile_by_name(sim.profile),
            seed=sim.seed + i,
            ev=EvProfile() if sim.ev else None,
        )
        for i, device_id in enumerate(device_ids)
    }
    server = SimulatorServer(models, transport="tcp", host="127.0.0.1", port=0)
    await server.start()
    log.info(
        "built-in AMTRON simulator (%s) on %s, device ids %s",
        sim.profile,
        server.url,
        ", ".join(str(d) for d in device_ids),
    )
    return server


@contextlib.asynccontextmanager
async def build_stack(
    config: Config, *, clock: Clock | None = None, rpc: bool = True
) -> AsyncIterator[Stack]:
    """Start simulator (if configured), bus, chargers, meters, controller and RPC server."""
    from .chargers.amtron import AmtronCharger

    clock = clock or SystemClock()
    pm = make_plugin_manager(blocked=config.plugins.blocked)
    strategy_factories = collect_strategies(pm)
    meter_factories = collect_meters(pm)
    infos = strategy_infos(pm)
    validate_plugins(config, strategy_factories, meter_factories, infos)
    store = None
    if config.history.path is not None:
        from .history import SessionStore

        # Before anything starts: an unusable path is a one-line start-up error.
        store = SessionStore.open(config.history.path)

    web_settings = None
    if rpc:
        from .web import RpcSettings, check_port_free

        r = config.rpc
        web_settings = RpcSettings(
            host=r.host,
            port=r.port,
            token=r.token,
            auth_reads=r.auth_reads,
            max_body_bytes=r.max_body_bytes,
            max_batch=r.max_batch,
            max_connections=r.max_connections,
            header_timeout_s=r.header_timeout_s,
            read_timeout_s=r.read_timeout_s,
            keepalive_timeout_s=r.keepalive_timeout_s,
            stale_after_s=config.control.stale_after_s,
        )
        # Before anything starts: a taken port or unsafe settings are a one-line start-up error.
        web_settings.check()
        check_port_free(web_settings)

    simulators: list[Any] = []
    buses: dict[str, ModbusBus] = {}
    for section in bus_sections(config):
        port = section.port
        if port == "sim":
            if config.buses:  # one simulator per line, with the boxes configured on it
                on_line = [
                    ch.device_id or 50 for ch in config.chargers if charger_bus(config, ch) == section.id
                ]
                device_ids = tuple(dict.fromkeys(on_line)) or config.simulator.device_ids
            else:
                device_ids = config.simulator.device_ids
            simulators.append(await _start_simulator(config, clock, device_ids))
            port = simulators[-1].url
        buses[section.id] = ModbusBus(bus_config(config, port, section), clock)
        await buses[section.id].start()

    slots: list[ChargerSlot] = []
    for ch in config.chargers:
        charger = AmtronCharger(
            buses[charger_bus(config, ch)],
            charger_id=ch.id,
            clock=clock,
            device_id=ch.device_id,
            word_order=config.bus.word_order,
            heartbeat_interval_s=config.heartbeat.interval_s,
            heartbeat_enabled=config.heartbeat.enabled,
            box_fallback_a=config.control.box_fallback_a,
        )
        options: Mapping[str, Mapping[str, Any]] = ch.strategies
        strategies = {name: factory(options.get(name, {})) for name, factory in strategy_factories.items()}
        slots.append(
            ChargerSlot(
                charger=charger,
                strategies=strategies,
                mode=ch.mode,
                fallback=config.control.fallback,
                priority=ch.priority,
            )
        )

    # The chargers' power a meter may need comes from the published state, not from the loop.
    board = StateBoard()
    env = MeterEnv(clock=clock, charger_power_w=board.charger_power_w)
    meters: list[Meter] = [meter_factories[m.type](m.id, m.options, env) for m in config.meters]
    memory_store = None
    if config.control.state_path is not None:
        from .governor_store import GovernorStore

        memory_store = GovernorStore(config.control.state_path, clock)
    governor = SafetyGovernor(
        {ch.id: to_limits(ch, config.control.stale_after_s) for ch in config.chargers}, store=memory_store
    )
    controller = Controller(
        clock=clock,
        chargers=slots,
        meters=meters,
        governor=governor,
        tick_s=config.control.tick_s,
        stale_after_s=config.control.stale_after_s,
        full_read_every_s=config.control.full_read_every_s,
        meter_timeout_s=config.control.meter_timeout_s,
        meter_max_w=plausible_meter_w(config.control.site_fuse_a),
        circuit_only_meters=[m.id for m in config.meters if not m.grid],
        plugins=describe_plugins(pm),
        strategy_infos=infos,
        circuits=to_circuits(config),
        lines=buses,
        board=board,
    )
    stack = Stack(
        config=config,
        controller=controller,
        buses=list(buses.values()),
        simulator=simulators[0] if simulators else None,
        simulators=simulators,
    )
    try:
        if store is not None:
            from .history import attach

            stack.history = attach(controller, store, flush_every_s=config.history.flush_every_s)
            log.info("session history in %s (saved every %g s)", store.path, config.history.flush_every_s)
        if web_settings is not None:
            from .metrics import metrics_endpoint
            from .web import start_web

            stack.web = await start_web(
                controller,
                web_settings,
                metrics=metrics_endpoint(controller, buses=stack.buses),
                history=stack.history,
            )
        if config.mqtt is not None and config.mqtt.enabled:
            from .mqtt_bridge import start_bridge

            stack.mqtt = await start_bridge(
                controller,
                config.mqtt,
                stale_after_s=config.control.stale_after_s,
                ceiling_a=governor.ceiling_a,
                meter_ids=[m.id for m in config.meters],
            )
        yield stack
    finally:
        if stack.mqtt is not None:
            await stack.mqtt.close()
        if stack.web is not None:
            await stack.web.close()
        if stack.history is not None:
            await stack.history.close()
        for bus in buses.values():
            await bus.close()
        for simulator in simulators:
            await simulator.stop()


def setup_logging(level: str, file: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if file:
        os.makedirs(os.path.dirname(file) or ".", exist_ok=True)
        handlers.append(logging.FileHandler(file))
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    # pymodbus logs every retry and reconnect at error level; our bus says it once.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


async def run(config: Config, *, duration_s: float | None = None, rpc: bool = True) -> int:
    """Run until SIGINT/SIGTERM (or ``duration_s``), leaving chargers in their safe state."""
    async with build_stack(config, rpc=rpc) as stack:
        loop = asyncio.get_running_loop()
        signals = 0

        def on_signal(name: str) -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                log.info("%s: stopping; leaving the chargers in their safe state", name)
            else:
                log.info("%s again: stopping without waiting", name)
            stack.controller.stop(hurry=signals > 1)

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal, sig.name)
        await stack.controller.run(duration_s=duration_s)
    log.info("stopped")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, os.environ)
    except ConfigError as exc:
        print(f"surplus: {exc}", file=sys.stderr)
        return 2
    try:
        setup_logging(config.log.level, config.log.file)
    except OSError as exc:
        print(f"surplus: log.file {config.log.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run(config, duration_s=args.duration, rpc=not args.no_rpc))
    except (OSError, ValueError) as exc:  # the RPC port is taken, an open bind without a token, ...
        log.error("%s", exc)
        return 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "run", help="run the controller (default config: built-in simulator + simulated meter)"
    )
    p.add_argument("-c", "--config", help="YAML config (default: config/demo.yaml's settings)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--no-rpc", action="store_true", help="do not start the JSON-RPC server")
    p.set_defaults(func=_cmd_run)
