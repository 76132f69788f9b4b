"""``/metrics``: the controller's state in Prometheus text format.

A collector on a per-app :class:`CollectorRegistry` (no global state) reads
in-memory state at scrape time (the controller's published
:class:`~surplus.state.LoopState`: snapshot, modes, overrides, last decisions and
counters; and the bus counters), so a scrape never touches the bus. The charger gauges come from
one table, like Home Assistant's entity descriptions: a new metric is one row.

Names follow the Prometheus conventions: ``surplus_`` prefix, base units in the
name (``_watts``, ``_amperes``, ``_volts``, ``_celsius``, ``_seconds``, energy in
``_joules``, which ``promtool check metrics`` accepts where it rejects watt-hours;
a dashboard divides by 3600 for Wh), ``_total`` on counters, labels
``charger``, ``meter``, ``phase``, ``bus``, ``device``. No free text goes into a
label: decision reasons stay in the log and the JSON-RPC API.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from .api import ControllerAPI, PollView
from .modbus.bus import BusConfig, BusStats
from .state import LoopState
from .types import ChargerState, Outcome, ReadGroup, Snapshot

#: Joules per watt-hour.
WH_TO_J = 3600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargerMetric:
    """One row of the table: a gauge per charger (and per phase when ``phases`` is set)."""

    name: str
    doc: str
    value: Callable[[ChargerState], float] | None = None
    #: For per-phase metrics: L1, L2, L3 getters.
    phases: tuple[Callable[[ChargerState], float], ...] = ()


CHARGER_METRICS: tuple[ChargerMetric, ...] = (
    ChargerMetric(
        name="evse_state",
        doc="EVSE_STATE (1 idle, 2-4 connected, 5 charging, 6 error)",
        value=lambda s: s.evse_state,
    ),
    ChargerMetric(
        name="vehicle_connected", doc="1 while a vehicle is plugged in", value=lambda s: s.vehicle_connected
    ),
    ChargerMetric(name="charging", doc="1 while the EVSE reports charging", value=lambda s: s.charging),
    ChargerMetric(
        name="error_code",
        doc="ACTIVE_ERROR_CODE (0 none, 200 energy manager lost)",
        value=lambda s: s.error_code,
    ),
    ChargerMetric(
        name="master_lost_fallback",
        doc="1 while the box runs its own fallback current (energy manager lost)",
        value=lambda s: s.master_lost_fallback,
    ),
    ChargerMetric(
        name="charging_release",
        doc="CHARGING_RELEASE_EM (1 released)",
        value=lambda s: float(s.charging_release),
    ),
    ChargerMetric(
        name="current_limit_amperes",
        doc="CHARGING_CURRENT_EM read back (0 means no limit)",
        value=lambda s: s.current_limit_a,
    ),
    ChargerMetric(
        name="signaled_current_amperes",
        doc="Current signalled to the EV",
        value=lambda s: s.signaled_current_a,
    ),
    ChargerMetric(name="active_phases", doc="Phases the box uses (1 or 3)", value=lambda s: s.active_phases),
    ChargerMetric(
        name="current_amperes",
        doc="Output current per phase",
        phases=(lambda s: s.current_l1_a, lambda s: s.current_l2_a, lambda s: s.current_l3_a),
    ),
    ChargerMetric(
        name="voltage_volts",
        doc="Output voltage per phase",
        phases=(lambda s: s.voltage_l1_v, lambda s: s.voltage_l2_v, lambda s: s.voltage_l3_v),
    ),
    ChargerMetric(name="power_watts", doc="Active power, all phases", value=lambda s: s.power_total_w),
    ChargerMetric(
        name="temperature_celsius", doc="Temperature inside the EVSE", value=lambda s: s.temperature_c
    ),
    ChargerMetric(
        name="session_energy_joules",
        doc="Energy of the current session (the box counts Wh; 1 Wh = 3600 J)",
        value=lambda s: s.session_energy_wh * WH_TO_J,
    ),
    ChargerMetric(
        name="session_duration_seconds",
        doc="Duration of the current session",
        value=lambda s: s.session_duration_s,
    ),
    ChargerMetric(name="locked", doc="1 while the EVSE is locked", value=lambda s: s.locked),
)

#: Counters of the charger's own registers (they only grow, unless the box is replaced).
CHARGER_COUNTERS: tuple[ChargerMetric, ...] = (
    ChargerMetric(
        name="energy_joules",
        doc="Lifetime charged energy (CHARGED_ENERGY_TOTAL; 1 Wh = 3600 J)",
        value=lambda s: s.energy_total_wh * WH_TO_J,
    ),
    ChargerMetric(
        name="sessions", doc="Charging sessions (SESSIONS_TOTAL)", value=lambda s: s.sessions_total
    ),
)


class BusView(Protocol):
    """The parts of :class:`surplus.modbus.bus.ModbusBus` the metrics read (all in memory)."""

    @property
    def config(self) -> BusConfig: ...

    @property
    def connected(self) -> bool: ...

    @property
    def stats(self) -> BusStats: ...

    def load(self) -> float: ...

    def worst_heartbeat_gaps(self) -> dict[int, float]: ...

    def worst_sent_heartbeat_gaps(self) -> dict[int, float]: ...

    def last_heartbeat_at(self, device_id: int) -> float | None: ...

    @property
    def polls(self) -> PollView: ...


#: Bus counters: (BusStats field, metric name, help).
BUS_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("transactions", "transactions", "Modbus transactions attempted"),
    ("timeouts", "timeouts", "Transactions without an answer in time"),
    ("errors", "errors", "Failed transactions (timeouts, exception replies, lost links)"),
    ("reconnects", "reconnects", "Times the port was opened again"),
    ("heartbeats", "heartbeats", "Heartbeats delivered"),
    ("bytes_sent", "sent_bytes", "RTU bytes sent"),
    ("bytes_received", "received_bytes", "RTU bytes received"),
)
#: BusStats.busy_us as seconds (a counter: rate() of it is how full the line is).
BUS_BUSY = ("surplus_bus_busy_seconds", "Time the line was busy with surplus's transactions")


#: Help for the figures the built-in strategies report with each decision (``Decision.figures``),
#: exported as ``surplus_strategy_<name>``; another plugin's figures get FIGURE_HELP_OTHER.
FIGURE_HELP = {
    "surplus_watts": "The surplus the strategy acts on (pv, minpv, schedule: smoothed, this charger's share)",
    "surplus_noise_watts": "How much the surplus's readings jitter from one second to the next, measured "
    "(sigma; 0: readings that mostly repeat); the strategy goes by their level's mean",
    "grid_meter_lag_seconds": "How far the grid meter is behind the box, measured on the cars' moves "
    "(0: in step, or not measured yet); readings that old after a move are not taken for sun",
    "import_weight": "What an imported kWh weighs in kWh of sun in pv's trades (riding through a dip, "
    "three phases at 6 A): the option import_weight, more for a car whose recent sessions ended full",
}
FIGURE_HELP_OTHER = "A figure the strategy reports with its decision (see the strategy's documentation)"
#: What a figure's name may be (the metric name's tail); others are not exported.
FIGURE_NAME = re.compile(r"[a-z][a-z0-9_]{0,60}")


def _gauge(name: str, doc: str, *labels: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _counter(name: str, doc: str, *labels: str) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


class SnapshotCollector(Collector):
    """Yields the controller's in-memory state as metric families."""

    def __init__(
        self,
        controller: ControllerAPI,
        *,
        buses: Sequence[BusView] = (),
    ) -> None:
        self._c = controller
        self._buses = tuple(buses)

    def collect(self) -> Iterator[Metric]:
        state = self._c.published()  # one frozen state for the whole scrape
        snap = state.snapshot
        now = self._c.clock.now()
        lag = max(0.0, now - snap.at_s)
        yield from self._charger_families(state, lag)
        yield from self._decision_families(state, now)
        yield from self._meter_families(snap, lag)
        yield from self._controller_families(state, now, lag)
        yield from self._bus_families(now)

    def _charger_families(self, loop_state: LoopState, lag: float) -> Iterator[Metric]:
        snap = loop_state.snapshot
        chargers = [(cid, snap.chargers.get(cid)) for cid in self._c.charger_ids]
        up = _gauge("surplus_charger_connected", "1 while the charger answers", "charger")
        age = _gauge("surplus_charger_data_age_seconds", "Age of the last good charger read", "charger")
        group_age = _gauge(
            "surplus_charger_read_age_seconds",
            "Age of each read group (measurements every tick, control every few seconds, "
            "configuration on each full read)",
            "charger",
            "group",
        )
        for cid, reading in chargers:
            up.add_metric([cid], float(reading is not None and reading.connected))
            if reading is not None and math.isfinite(reading.age_s):
                age.add_metric([cid], reading.age_s + lag)
                if reading.state is not None:
                    at = reading.state.read_at_s + reading.age_s  # the snapshot's time
                    for group in ReadGroup:
                        group_age.add_metric([cid, group.value], at - reading.state.read_at(group) + lag)
        yield up
        yield age
        yield group_age
        info = _gauge(
            "surplus_charger_info",
            "1 per charger: its own circuit (empty: none), the circuits above it and its sharing priority",
            "charger",
            "circuit",
            "circuits",
            "priority",
        )
        for cid, _reading in chargers:
            setup = self._c.charger_setup(cid)
            own = setup.circuits[0] if setup.circuits else ""
            info.add_metric([cid, own, "/".join(reversed(setup.circuits)), str(setup.priority)], 1.0)
        yield info

        states = [(cid, r.state) for cid, r in chargers if r is not None and r.state is not None]
        for row in CHARGER_METRICS:
            name = f"surplus_charger_{row.name}"
            if row.phases:
                fam = _gauge(name, row.doc, "charger", "phase")
                for cid, state in states:
                    for i, get in enumerate(row.phases, start=1):
                        fam.add_metric([cid, f"L{i}"], float(get(state)))
            else:
                fam = _gauge(name, row.doc, "charger")
                for cid, state in states:
                    assert row.value is not None
                    fam.add_metric([cid], float(row.value(state)))
            yield fam
        for row in CHARGER_COUNTERS:
            counter = _counter(f"surplus_charger_{row.name}", row.doc, "charger")
            for cid, state in states:
                assert row.value is not None
                counter.add_metric([cid], float(row.value(state)))
            yield counter

        mode = _gauge("surplus_charger_mode", "1 for the charger's active mode (strategy)", "charger", "mode")
        override = _gauge("surplus_charger_override_active", "1 while a person's override holds", "charger")
        for cid in self._c.charger_ids:
            view = loop_state.charger(cid)
            active = view.mode
            for name in dict.fromkeys((*self._c.available_modes, active)):
                mode.add_metric([cid, name], float(name == active))
            override.add_metric([cid], float(view.override is not None))
        yield mode
        yield override

    def _decision_families(self, state: LoopState, now: float) -> Iterator[Metric]:
        current = _gauge(
            "surplus_decision_current_amperes",
            "Current the last decision asked for (0 = pause)",
            "charger",
            "source",
        )
        charge = _gauge(
            "surplus_decision_charge", "1 if the last decision charges, 0 if it pauses", "charger"
        )
        phases = _gauge("surplus_decision_phases", "Phases the last decision asked for (if any)", "charger")
        info = _gauge(
            "surplus_decision_info",
            "1 for who made the last decision (source) and which strategy (or fallback)",
            "charger",
            "source",
            "strategy",
        )
        age = _gauge("surplus_decision_age_seconds", "Time since the last decision", "charger")
        for cid in self._c.charger_ids:
            record = state.charger(cid).decision
            if record is None:
                continue
            d = record.decision
            current.add_metric([cid, d.source.value], (d.current_a or 0.0) if d.charge else 0.0)
            charge.add_metric([cid], float(d.charge))
            if d.phases is not None:
                phases.add_metric([cid], float(d.phases))
            info.add_metric([cid, d.source.value, record.strategy], 1.0)
            age.add_metric([cid], max(0.0, now - record.at_s))
        yield from (current, charge, phases, info, age)
        yield from self._figure_families(state)

        if state.loop is None:  # no loop of its own (a test's fake): no counters
            return
        verdicts = _counter(
            "surplus_governor_verdicts",
            "Decisions by the safety governor's verdict (applied, scheduled, unchanged, refused)",
            "charger",
            "outcome",
        )
        writes = _counter("surplus_charger_writes", "Commands written to the charger", "charger")
        for cid in self._c.charger_ids:
            view = state.charger(cid)
            for outcome in Outcome:
                verdicts.add_metric([cid, outcome.value], float(view.verdicts.get(outcome, 0)))
            writes.add_metric([cid], float(view.writes))
        yield verdicts
        yield writes

    def _figure_families(self, state: LoopState) -> Iterator[Metric]:
        """The strategies' own numbers behind their last decisions (the built-in ones always,
        empty where no strategy reports them: a fallback, or fixed mode)."""
        figures: dict[str, dict[str, float]] = {name: {} for name in FIGURE_HELP}
        for cid in self._c.charger_ids:
            record = state.charger(cid).decision
            if record is None:
                continue
            for name, value in record.decision.figures:
                if FIGURE_NAME.fullmatch(name) and math.isfinite(value):
                    figures.setdefault(name, {})[cid] = value
        for name, values in figures.items():
            fam = _gauge(f"surplus_strategy_{name}", FIGURE_HELP.get(name, FIGURE_HELP_OTHER), "charger")
            for cid, value in values.items():
                fam.add_metric([cid], value)
            yield fam

    def _meter_families(self, snap: Snapshot, lag: float) -> Iterator[Metric]:
        grid = _gauge("surplus_meter_grid_power_watts", "Grid power, + import / - export", "meter")
        pv = _gauge("surplus_meter_pv_power_watts", "PV power", "meter")
        house = _gauge("surplus_meter_house_power_watts", "House power without the chargers", "meter")
        battery = _gauge(
            "surplus_meter_battery_power_watts", "Home battery power, + charging / - discharging", "meter"
        )
        soc = _gauge("surplus_meter_battery_soc_percent", "Home battery state of charge", "meter")
        age = _gauge("surplus_meter_age_seconds", "Age of the meter reading", "meter")
        up = _gauge("surplus_meter_up", "1 while the meter reading is fresh (no error, not stale)", "meter")
        for mid, m in snap.meters.items():
            up.add_metric([mid], float(m.error is None))
            if math.isfinite(m.age_s):
                age.add_metric([mid], m.age_s + lag)
            if m.error is not None:
                # Down, stale or never read: no power series, so graphs show a gap (and sums
                # stay numbers) rather than a flat line of old values or NaN; up says why.
                continue
            grid.add_metric([mid], m.grid_power_w)
            for fam, value in (
                (pv, m.pv_power_w),
                (house, m.house_power_w),
                (battery, m.battery_power_w),
                (soc, m.battery_soc_pct),
            ):
                if value is not None:
                    fam.add_metric([mid], value)
        yield from (grid, pv, house, battery, soc, age, up)

    def _controller_families(self, state: LoopState, now: float, lag: float) -> Iterator[Metric]:
        snap = state.snapshot
        build = _gauge("surplus_build_info", "Always 1; the version in a label", "version")
        build.add_metric([__version__], 1.0)
        yield build
        uptime = _gauge("surplus_uptime_seconds", "Time since the controller started")
        uptime.add_metric([], max(0.0, now - self._c.started_at_s))
        yield uptime
        snap_age = _gauge("surplus_snapshot_age_seconds", "Time since the last tick's snapshot")
        snap_age.add_metric([], lag)
        yield snap_age

        available = _gauge(
            "surplus_available_power_watts",
            "PV surplus from the grid meter: chargers' power - grid power (before a strategy's reserve)",
        )
        grid_w = snap.grid_power_w
        if grid_w is not None:
            car_w = sum(r.state.power_total_w for r in snap.chargers.values() if r.state is not None)
            available.add_metric([], car_w - grid_w)
        yield available

        if state.loop is not None:
            ticks = _counter("surplus_ticks", "Control-loop ticks completed")
            ticks.add_metric([], float(state.loop.ticks))
            yield ticks
            duration = _gauge("surplus_tick_duration_seconds", "Duration of the last tick")
            if state.loop.last_tick_s is not None:
                duration.add_metric([], state.loop.last_tick_s)
            yield duration

    def _bus_families(self, now: float) -> Iterator[Metric]:
        if not self._buses:
            return
        counters = {field: _counter(f"surplus_bus_{name}", doc, "bus") for field, name, doc in BUS_COUNTERS}
        connected = _gauge("surplus_bus_connected", "1 while the port is open and answering", "bus")
        gap = _gauge(
            "surplus_bus_heartbeat_gap_max_seconds",
            "Longest gap between acknowledged heartbeats so far (the box gives up after 10 s)",
            "bus",
            "device",
        )
        sent_gap = _gauge(
            "surplus_bus_heartbeat_sent_gap_max_seconds",
            "Longest gap between heartbeats sent, acknowledged or not (a lost reply usually reached the box)",
            "bus",
            "device",
        )
        beat_age = _gauge(
            "surplus_bus_heartbeat_age_seconds", "Time since the last heartbeat", "bus", "device"
        )
        busy = _counter(*BUS_BUSY, "bus")
        load = _gauge(
            "surplus_bus_load_ratio",
            "How full the line was over the last minute: the share of time in transactions (0..1)",
            "bus",
        )
        interval = _gauge(
            "surplus_bus_poll_interval_seconds",
            "How often each box on the line has its measurements read (longer than the tick when the "
            "line's time is short)",
            "bus",
        )
        short = _gauge(
            "surplus_bus_poll_over_age",
            "1 while the line carries more boxes than it can read within the stated age",
            "bus",
        )
        for i, bus in enumerate(self._buses):
            port = bus_label(i)
            interval.add_metric([port], bus.polls.interval_s)
            short.add_metric([port], float(bus.polls.problem is not None))
            stats = bus.stats
            for field, fam in counters.items():
                fam.add_metric([port], float(getattr(stats, field)))
            busy.add_metric([port], stats.busy_us / 1e6)
            load.add_metric([port], bus.load())
            connected.add_metric([port], float(bus.connected))
            for device_id, worst in sorted(bus.worst_heartbeat_gaps().items()):
                gap.add_metric([port, str(device_id)], worst)
                last = bus.last_heartbeat_at(device_id)
                if last is not None:
                    beat_age.add_metric([port, str(device_id)], max(0.0, now - last))
            for device_id, worst in sorted(bus.worst_sent_heartbeat_gaps().items()):
                sent_gap.add_metric([port, str(device_id)], worst)
        yield from counters.values()
        yield from (busy, load, connected, gap, sent_gap, beat_age, interval, short)


def bus_label(index: int) -> str:
    """The ``bus`` label of the ``index``-th bus: "bus" (the config's one ``bus:``), then "bus2", "bus3".

    Not the port: a device path such as /dev/ttyUSB0 says where things are on the
    machine, and changes when the adapter moves; the log names the port.
    """
    return "bus" if index == 0 else f"bus{index + 1}"


def metrics_endpoint(
    controller: ControllerAPI, *, buses: Sequence[BusView] = ()
) -> Callable[[], tuple[bytes, str]]:
    """What ``surplus.web.start_web(metrics=...)`` serves at ``GET /metrics``.

    Everything comes from the controller's published state (with the loop's tick
    and verdict counters when it has a loop); ``buses`` add the Modbus counters.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(controller, buses=buses))

    def render() -> tuple[bytes, str]:
        return generate_latest(registry), CONTENT_TYPE_LATEST

    return render
