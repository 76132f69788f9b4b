"""Strategies "pv" and "minpv" on a fake clock: surplus, smoothing, hysteresis, phases."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pytest
from surplus_plugins.pv import RESET_AFTER_S, PvSettings, available_w, phases_in_use

from surplus.clock import FakeClock
from surplus.options import OptionError
from surplus.plugins import collect_meters, collect_strategies, make_plugin_manager
from surplus.strategy import Strategy, StrategyContext
from surplus.types import ChargerReading, ChargerState, Decision, EvseState, MeterReading, Snapshot
from tests.factories import charger_state
from tests.loop_support import assert_governor_rules_held, replay_day

STRATEGIES = collect_strategies(make_plugin_manager(load_entrypoints=False))
METERS = collect_meters(make_plugin_manager(load_entrypoints=False))
VOLTS = 230.0
ONE_PHASE_6A_W = 6 * VOLTS  # 1380 W
THREE_PHASE_6A_W = 18 * VOLTS  # 4140 W


def car(current_a: float, phases: int = 3, **changes: Any) -> ChargerState:
    """A box whose car draws ``current_a`` on ``phases`` phases (0 A: connected, not drawing)."""
    lines = [current_a if i < phases else 0.0 for i in range(3)]
    fields: dict[str, Any] = {
        "evse_state": EvseState.CHARGING if current_a > 0 else EvseState.READY,
        "current_l1_a": lines[0],
        "current_l2_a": lines[1],
        "current_l3_a": lines[2],
        "voltage_l1_v": VOLTS,
        "power_total_w": current_a * phases * VOLTS,
        "switched_phases": 1 if phases == 1 else 0,
        "requested_phases": 1 if phases == 1 else 0,
    }
    return charger_state("wb1", 0.0, **{**fields, **changes})


def snap(state: ChargerState, grid_w: float | None, *, at_s: float = 0.0, **meter: Any) -> Snapshot:
    meters = {}
    if grid_w is not None:
        meters["grid"] = MeterReading(meter_id="grid", read_at_s=at_s, grid_power_w=grid_w, **meter)
    return Snapshot(
        at_s=at_s,
        chargers=MappingProxyType({"wb1": ChargerReading(charger_id="wb1", state=state, age_s=0.0)}),
        meters=MappingProxyType(meters),
    )


def context(now_s: float, *, switchable: bool = True, max_current_a: float = 32.0) -> StrategyContext:
    return StrategyContext(
        charger_id="wb1",
        now_s=now_s,
        wall_s=1_800_000_000.0 + now_s,
        options=MappingProxyType({}),
        min_current_a=6.0,
        max_current_a=max_current_a,
        phases_switchable=switchable,
    )


@dataclass
class House:
    """A tiny closed loop: the car draws what the strategy last allowed, the grid is the rest.

    ``surplus_w`` is PV minus house load; grid = car - surplus. The car follows the
    decision at once (the governor and the box's delays are tested elsewhere).
    """

    strategy: Strategy
    surplus_w: float
    phases: int = 3
    switchable: bool = True
    clock: FakeClock = field(default_factory=FakeClock)
    current_a: float = 0.0
    decisions: list[Decision] = field(default_factory=list)

    def tick(self) -> Decision:
        state = car(self.current_a, self.phases)
        grid = state.power_total_w - self.surplus_w
        d = self.strategy.decide(
            snap(state, grid, at_s=self.clock.now()), context(self.clock.now(), switchable=self.switchable)
        )
        self.decisions.append(d)
        if d.phases is not None:
            self.phases = d.phases
        self.current_a = (d.current_a or self.current_a) if d.charge else 0.0
        return d

    async def run(self, seconds: int) -> Decision:
        """Tick now (on the first call only), then once per second for ``seconds``."""
        d = self.tick() if not self.decisions else self.decisions[-1]
        for _ in range(seconds):
            await self.clock.advance(1.0)
            d = self.tick()
        return d


def pv(**options: Any) -> Strategy:
    return STRATEGIES["pv"](options)


def minpv(**options: Any) -> Strategy:
    return STRATEGIES["minpv"](options)


# --- the surplus -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("car_a", "grid_w", "meter", "settings", "want_w"),
    [
        (0.0, -2000.0, {}, PvSettings(), 1900.0),  # exporting 2 kW, 100 W reserve
        (0.0, -2000.0, {}, PvSettings(reserve_w=0), 2000.0),
        (10.0, 0.0, {}, PvSettings(reserve_w=0), 6900.0),  # the car's own draw counts as available
        (10.0, 500.0, {}, PvSettings(reserve_w=0), 6400.0),  # importing 500 W: less than the car draws
        (0.0, 300.0, {}, PvSettings(reserve_w=0), -300.0),  # importing with no car: nothing for it
        # a discharging house battery is never the sun's, whatever the battery setting
        (0.0, 0.0, {"battery_power_w": -1500.0}, PvSettings(reserve_w=0), -1500.0),
        (0.0, 0.0, {"battery_power_w": -1500.0}, PvSettings(reserve_w=0, car_first=True), -1500.0),
        # a charging battery: the house gets it first unless the car comes first
        (0.0, -500.0, {"battery_power_w": 2000.0}, PvSettings(reserve_w=0), 500.0),
        (0.0, -500.0, {"battery_power_w": 2000.0}, PvSettings(reserve_w=0, car_first=True), 2500.0),
    ],
)
def test_available_power(
    car_a: float, grid_w: float, meter: dict[str, float], settings: PvSettings, want_w: float
) -> None:
    state = car(car_a)
    assert available_w(snap(state, grid_w, **meter), state, settings) == pytest.approx(want_w)


def test_no_fresh_meter_is_an_error_not_a_guess() -> None:
    state = car(10)
    with pytest.raises(ValueError, match="no fresh grid-meter reading"):
        available_w(snap(state, None), state, PvSettings())
    stale = Snapshot(
        at_s=0.0,
        chargers=MappingProxyType({"wb1": ChargerReading(charger_id="wb1", state=state)}),
        meters=MappingProxyType(
            {"g": MeterReading(meter_id="g", read_at_s=0.0, grid_power_w=-9000.0, error="stale (12 s old)")}
        ),
    )
    with pytest.raises(ValueError, match="no fresh grid-meter reading"):
        pv().decide(stale, context(0.0))


def test_phases_in_use_notices_a_one_phase_car_on_a_three_phase_box() -> None:
    assert phases_in_use(car(10, 3)) == 3
    assert phases_in_use(car(10, 1)) == 1
    one_phase_car = car(16, 3, current_l2_a=0.2, current_l3_a=0.0, power_total_w=16 * VOLTS)
    assert phases_in_use(one_phase_car) == 1
    assert phases_in_use(car(0, 3)) == 3  # not charging: what the box offers


# --- start, stop and the current ---------------------------------------------------------------


async def test_starts_only_after_the_surplus_held_for_the_start_delay() -> None:
    house = House(pv(phases=3, reserve_w=0), surplus_w=THREE_PHASE_6A_W + 1000, phases=3)
    d = await house.run(59)
    assert not d.charge and "starting in 1 s" in d.reason
    d = await house.run(1)
    assert d.charge and d.current_a == pytest.approx(7.4)  # 5140 W / 690 W per A, rounded down to 0.1 A
    assert [x.charge for x in house.decisions].count(True) == 1


async def test_a_dip_during_the_start_delay_restarts_it() -> None:
    house = House(pv(phases=3, reserve_w=0, smoothing_down_s=0), surplus_w=5000, phases=3)
    await house.run(40)
    house.surplus_w = 1000
    assert not (await house.run(1)).charge
    house.surplus_w = 5000
    assert not (await house.run(59)).charge  # the smoothed value climbs back first, then 60 s again
    assert (await house.run(120)).charge


async def test_stops_only_after_the_stop_delay_and_holds_6_a_meanwhile() -> None:
    options = {"phases": 3, "reserve_w": 0, "start_delay_s": 0, "smoothing_down_s": 0}
    house = House(pv(**options), surplus_w=8000, phases=3)
    assert (await house.run(1)).charge  # t = 1
    house.surplus_w = 1000  # a long cloud from t = 2
    d = await house.run(180)  # t = 181
    assert d.charge and d.current_a == 6.0 and "stopping in 1 s" in d.reason
    d = await house.run(1)
    assert not d.charge and "below 6 A for 180 s" in d.reason
    # the cloud passes before the stop delay ends (with the ~18 s the rising smoothing takes
    # to see 6 A again): no stop at all
    house2 = House(pv(**options), surplus_w=8000, phases=3)
    await house2.run(1)
    house2.surplus_w = 1000
    await house2.run(150)
    house2.surplus_w = 8000
    await house2.run(60)
    assert all(x.charge for x in house2.decisions[1:])


async def test_minpv_never_pauses_and_adds_the_surplus() -> None:
    house = House(minpv(phases=3, reserve_w=0), surplus_w=-2000, phases=3)
    d = await house.run(600)
    assert d.charge and d.current_a == 6.0 and "minimum 6 A" in d.reason
    assert all(x.charge for x in house.decisions)
    house.surplus_w = 9000
    d = await house.run(300)
    assert d.current_a == pytest.approx(13.0)  # 9000 / 690 = 13.04


async def test_current_follows_down_fast_and_up_slowly() -> None:
    house = House(pv(phases=1, reserve_w=0, start_delay_s=0), surplus_w=4600, phases=1)  # 20 A
    await house.run(120)
    assert house.current_a == pytest.approx(20.0)
    house.surplus_w = 2300  # 10 A: a cloud
    await house.run(15)  # three down time constants: within 5 % of the step (+ the 0.5 A step)
    assert house.current_a <= 11.0
    await house.run(60)  # the last small step settles
    assert house.current_a <= 10.1
    house.surplus_w = 4600  # the sun is back
    await house.run(15)  # half an up time constant: well short of 20 A
    assert house.current_a < 16.0
    await house.run(240)
    assert house.current_a == pytest.approx(19.9, abs=0.11)


async def test_small_wobbles_do_not_cause_writes() -> None:
    house = House(pv(phases=1, reserve_w=0, start_delay_s=0), surplus_w=3000, phases=1)
    await house.run(200)
    settled = house.current_a
    for i in range(300):  # +-40 W of noise: about +-0.17 A
        house.surplus_w = 3000 + (40 if i % 2 else -40)
        await house.run(1)
    currents = [d.current_a or 0.0 for d in house.decisions[-301:]]
    changes = sum(1 for a, b in itertools.pairwise(currents) if a != b)
    # The smoothing is asymmetric (down fast, up slowly), so noise settles a little below
    # its mean: at most one small settling step in five minutes, never a write per wobble.
    assert changes <= 1 and abs(currents[-1] - settled) <= 0.2


async def test_current_is_capped_at_what_the_device_signals() -> None:
    strategy = pv(phases=1, reserve_w=0, start_delay_s=0)
    state = car(0, 1)
    d = strategy.decide(snap(state, -20000.0), context(0.0, max_current_a=16.0))
    assert d.charge and d.current_a == 16.0


# --- phases ------------------------------------------------------------------------------------


async def test_auto_phases_go_up_and_down_with_their_delays() -> None:
    options = {"start_delay_s": 0, "smoothing_up_s": 0, "smoothing_down_s": 0, "reserve_w": 0}
    house = House(pv(**options), surplus_w=3000, phases=1)
    d = await house.run(1)
    assert d.charge and d.phases == 1 and d.current_a == pytest.approx(13.0)
    house.surplus_w = 6000  # enough for 3 x 6 A
    d = await house.run(300)  # from t = 2 to t = 301
    assert d.phases == 1 and d.current_a == pytest.approx(26.0)  # 1 phase until the up delay has passed
    d = await house.run(1)  # t = 302: 300 s of enough for three phases
    assert d.phases == 3 and d.current_a == pytest.approx(8.6)  # 6000 / 690
    house.surplus_w = 3000
    d = await house.run(180)  # from t = 303 to t = 482
    assert d.phases == 3 and d.current_a == 6.0
    d = await house.run(1)
    assert d.phases == 1 and d.current_a == pytest.approx(13.0)


async def test_paused_box_picks_the_phases_for_the_next_start_at_once() -> None:
    house = House(pv(), surplus_w=2000, phases=3)
    d = await house.run(0)
    assert not d.charge and d.phases == 1
    assert (await house.run(60)).charge and house.phases == 1


async def test_pinned_phases_and_boxes_that_cannot_switch() -> None:
    house = House(pv(phases=1, start_delay_s=0), surplus_w=9000, phases=3)
    assert (await house.run(1)).phases == 1
    fixed_box = House(pv(start_delay_s=0, reserve_w=0), surplus_w=2000, phases=3, switchable=False)
    d = await fixed_box.run(400)
    assert not d.charge and "2.8 A on 3 phases" in d.reason  # 3 x 6 A need 4.1 kW: it never starts
    fixed_box.surplus_w = 5000
    d = await fixed_box.run(300)
    assert d.charge and d.current_a == pytest.approx(7.2)
    assert all(x.phases is None for x in fixed_box.decisions)


def test_a_one_phase_car_on_a_three_phase_box_gets_the_amps_of_one_phase() -> None:
    strategy = pv(phases=3, reserve_w=0, start_delay_s=0)
    state = car(10, 3, current_l2_a=0.0, current_l3_a=0.0, power_total_w=10 * VOLTS)
    d = strategy.decide(snap(state, -1150.0), context(0.0))  # 2300 + 1150 W available = 15 A on one phase
    assert d.charge and d.current_a == pytest.approx(15.0)


# --- state across ticks ------------------------------------------------------------------------


async def test_a_long_gap_starts_afresh_from_the_present() -> None:
    strategy = pv(phases=3, reserve_w=0, start_delay_s=0)
    charging = car(10, 3)
    assert strategy.decide(snap(charging, -5000.0), context(0.0)).charge
    later = RESET_AFTER_S + 1
    d = strategy.decide(snap(car(0, 3), 0.0, at_s=later), context(later))
    assert not d.charge  # no surplus, not charging now: no stale "charging" from before


def test_time_going_backwards_starts_afresh_instead_of_failing() -> None:
    strategy = pv(phases=3, reserve_w=0, start_delay_s=0)
    assert strategy.decide(snap(car(10, 3), -5000.0), context(10_000.0)).charge
    d = strategy.decide(snap(car(0, 3), 0.0), context(50.0))  # e.g. a replay restarted on a new clock
    assert not d.charge


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"phase": 1}, "phase: unknown option \\(did you mean 'phases'\\?\\)"),
        ({"phases": 2}, "phases: 2 is not one of auto, 1, 3"),
        ({"battery": "first"}, "battery: 'first' is not one of house_first, car_first"),
        ({"step_a": 0}, "step_a: 0 A is below the minimum 0.1 A"),
        ({"start_delay_s": "soon"}, "start_delay_s: expected a number"),
        ({"voltage_v": 400}, "voltage_v: 400 V is above the maximum 260 V"),
    ],
)
@pytest.mark.parametrize("name", ["pv", "minpv"])
def test_bad_options_name_the_option(name: str, options: dict[str, Any], match: str) -> None:
    with pytest.raises(OptionError, match=match):
        STRATEGIES[name](options)


# --- the real loop over a simulated day --------------------------------------------------------


DAY_OPTIONS = {"seed": 1, "start_hour": 9.0, "pv_peak_w": 8000, "cloudiness": 0.3}


async def test_pv_mode_puts_the_sun_into_the_car_over_six_simulated_hours() -> None:
    """09:00-15:00 of the simulated day through the real loop, driver, governor and simulator.

    bench/pv_day.py prints the same numbers for whole days, several seeds and modes.
    """
    day = await replay_day("pv", hours=6, meter_options=DAY_OPTIONS)
    assert day.car_wh > 0.9 * day.export_alone_wh, day  # most of the surplus went to the car
    assert day.extra_import_wh < 0.02 * day.car_wh, day  # and little came from the grid
    assert_governor_rules_held(day.record)


def test_grid_power_is_the_sum_of_all_meters_or_unknown() -> None:
    def snapshot(*readings: MeterReading) -> Snapshot:
        return Snapshot(at_s=0.0, meters=MappingProxyType({r.meter_id: r for r in readings}))

    a = MeterReading(meter_id="a", read_at_s=0.0, grid_power_w=-1500.0)
    b = MeterReading(meter_id="b", read_at_s=0.0, grid_power_w=400.0)
    assert snapshot(a, b).grid_power_w == -1100.0
    assert snapshot().grid_power_w is None
    # one stale meter: a partial sum would overstate the surplus, so the total is unknown
    assert (
        snapshot(a, MeterReading(meter_id="b", read_at_s=0.0, grid_power_w=400.0, error="stale")).grid_power_w
        is None
    )
