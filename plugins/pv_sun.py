"""The PV strategies' settings and their arithmetic: options, the surplus, spells.

:mod:`surplus_plugins.pv` decides with these (its docstring has the rules);
:mod:`surplus_plugins.schedule` uses them for its sun part.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from surplus.options import check_known, choice, number
from surplus.strategy import PastSession, StrategyContext, car_draws
from surplus.types import MIN_CURRENT_A, ChargerState, Decision, EvseState, Snapshot, Source

#: Phase currents above this count as "the car uses this phase".
PHASE_IN_USE_A = 1.0
#: A voltage outside this range is not trusted for the W -> A conversion.
PLAUSIBLE_VOLTAGE_V = (180.0, 260.0)
#: Changes smaller than ``step_a`` follow the mean of the surplus's amps (see
#: ``PvStrategy._settle``), counted from FOLLOW_S after the last change: a car follows a new
#: current within 5 s (IEC 61851-1), and until it has the meters show a mix of both. For as
#: long after the car's power moves (longer where the grid meter is measured to be further
#: behind the box: MeterLag), the last surplus read before stands in for the readings (a grid
#: meter behind the box shows the move as a step in the sun: ``PvStrategy._unmixed``).
FOLLOW_S = 5.0
#: The car's power moving by this many amps on one phase (230 W) without a new current is a
#: move of its own (a start, the end of the box's switching pause), not the box's noise.
CAR_MOVE_A = 1.0
#: A grid meter further behind the box than FOLLOW_S is measured on the cars' moves
#: (:class:`MeterLag`): after a move the readings are waited for as long as the meter took
#: to show the last LAGS_KEPT moves, at most MAX_FOLLOW_S (a slower meter is not waited for).
MAX_FOLLOW_S = 30.0
LAGS_KEPT = 5
#: A measurement that the next move ends before the meter has shown the move counts a
#: reading (the loop's tick) longer than it lasted: see MeterLag.moved.
LAG_STEP_S = 1.0
#: A move the meter has not shown yet is waited for up to this many times the longest delay
#: measured (a meter polled every second that updates every P s inside shows a move 1 to P s
#: later, evenly: the longest of k delays is under P/2 only once in 2**k).
UNSHOWN_FACTOR = 2.0
#: A grid meter polled more often than it updates gives its last reading again, stamped with
#: the time of the poll. It is taken to hold its readings once the last HOLD_PERIODS times
#: between changes of its reading were each HOLD_MIN_S to HOLD_MAX_S and within HOLD_SPREAD_S
#: of each other (a regular update: an exact meter changes at every reading or at the sun's
#: and the car's own moves, which are not regular); see :class:`HeldReadings`.
HOLD_PERIODS = 5
HOLD_MIN_S = 1.5
HOLD_MAX_S = 20.0
HOLD_SPREAD_S = 2.0
#: Down once the mean of SETTLE_DOWN_S is SETTLE_MARGIN_A below the current (a third of
#: SETTLE_S: an imported Wh costs three of sun), up once the mean of SETTLE_S is UP_GAP_A
#: above it (two notches of 0.1 A: less is not worth a write).
SETTLE_S = 60.0
SETTLE_DOWN_S = 20.0
UP_GAP_A = 0.2
#: What the meters' noise still moves the amps by (the box reads its own power to ~0.05 A a
#: phase): a new current lands this far below the surplus (on three phases half as far, see
#: ``margin_a``), and a mean within it is not a change.
SETTLE_MARGIN_A = 0.05
#: The surplus's noise (what the meters jitter by from one second to the next) is measured
#: over the last NOISE_READINGS readings, from NOISE_FIRST on (anew every NOISE_EVERY). A
#: level of the surplus (:class:`Denoise`) ends at a reading NOISE_BREAK sigmas from its mean
#: (a false alarm about once in 2 million readings), or when the mean of its last
#: NOISE_RECENT readings is NOISE_BREAK sigmas of such a mean from the mean before them. Its
#: mean is that of its readings of at most the last LEVEL_S seconds (a slow drift of the sun
#: is followed within a minute, however often the meter reads).
NOISE_READINGS = 300
NOISE_FIRST = 30
NOISE_EVERY = 10
NOISE_RECENT = 5
NOISE_BREAK = 5.0
LEVEL_S = 120.0
#: With a noisy meter, a rise of less than RISE_SIGMAS sigmas of the noise is followed once
#: its level holds RISE_READINGS readings, at their mean (then within a third of the noise):
#: the lowest of a noisy level's first readings lies about a sigma below it, and a rise landed
#: there was corrected a minute later, two writes for one step of the sun. A larger rise (a
#: cloud passing) goes after ``smoothing_up_s``, as with an exact meter.
RISE_READINGS = 9
RISE_SIGMAS = 10.0
#: The setpoint's notch on one phase: smaller changes are not sent. On three phases a notch of
#: the same amps is three times the power (69 W), and the box's readings of the three phases
#: average out, so there the notch is half as large (``notch_a``).
NOTCH_A = 0.1
#: The line voltage (for W <-> A) is averaged over this long.
VOLTS_S = 60.0
#: After this long without a call the strategy forgets its timers and smoothing.
RESET_AFTER_S = 30.0
#: The window of "the sun of the last minutes" that prices a pause.
TYPICAL_SUN_S = 600.0
#: Spells of sun (or of its absence) whose median predicts the present one, and how many
#: must have ended before they are trusted (one: a wrong guess costs one switch or one
#: pause, a late one costs every spell until the second has ended).
SPELLS_KEPT = 3
SPELLS_NEEDED = 1
#: The manufacturer's minimum time between a pause and a resume (the governor's default).
PAUSE_HOLD_S = 300.0
#: A kWh imported counts this many kWh of sun given away: the import is paid in full, while
#: sun that goes to the grid earns the feed-in and is often made up later the same day.
IMPORT_WEIGHT = 3.0
#: The car's recent sessions whose end is remembered: how many of them found the car full
#: (drawing nothing though offered 6 A or more) is how likely today's is to end full.
SESSIONS_KEPT = 5
#: The highest weight an import gets from a car that is usually full (see FullCars).
FULL_CAR_WEIGHT = 10.0

OPTIONS = (
    "phases",
    "reserve_w",
    "battery",
    "battery_soc_min",
    "battery_to_car_soc",
    "start_delay_s",
    "stop_delay_s",
    "import_weight",
    "smoothing_up_s",
    "smoothing_down_s",
    "step_a",
    "voltage_v",
    "phase_up_delay_s",
    "phase_down_delay_s",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class PvSettings:
    """The validated options (see the module docstring; defaults here)."""

    #: "minpv": never pause, charge at least the minimum current.
    keep_minimum: bool = False
    #: 1 or 3 to pin the phases; None = automatic where the box can switch.
    phases: int | None = None
    reserve_w: float = 0.0
    car_first: bool = False
    #: Above this state of charge (%) the car gets what the battery would absorb.
    battery_soc_min: float | None = None
    #: Above this state of charge (%) a discharging battery may feed the car; None: never.
    battery_to_car_soc: float | None = None
    start_delay_s: float = 10.0
    #: The longest a dip is ridden through at 6 A before pausing. The energy account pauses
    #: sooner where riding costs more than a pause; a dip with three quarters of the minimum's
    #: sun or more costs nothing by it, and only this ends the ride. 300 s paused such rides
    #: just before the clouds passed, and the 5-minute hold kept the car off in the sun after.
    stop_delay_s: float = 600.0
    #: An imported kWh counts this many kWh of sun given away, in every trade-off.
    import_weight: float = IMPORT_WEIGHT
    smoothing_up_s: float = 3.0
    smoothing_down_s: float = 0.0
    step_a: float = 0.25
    voltage_v: float = 230.0
    #: The longest wait before going to three phases once they can be carried.
    phase_up_delay_s: float = 300.0
    #: The longest three phases are held at 6 A once they cannot be carried.
    phase_down_delay_s: float = 300.0


def available_w(
    snapshot: Snapshot, state: ChargerState, settings: PvSettings, others_w: float = 0.0
) -> float:
    """Power the car could draw without importing: see the module docstring.

    ``others_w``: what the chargers sharing the surplus with this one draw (their
    power is the surplus too; the loop's split then gives this one its part).
    """
    grid_w = snapshot.grid_power_w
    if grid_w is None:
        raise ValueError("no fresh grid-meter reading")
    battery_w = sum(
        m.battery_power_w
        for m in snapshot.meters.values()
        if m.error is None and m.battery_power_w is not None
    )
    socs = [
        m.battery_soc_pct
        for m in snapshot.meters.values()
        if m.error is None and m.battery_soc_pct is not None
    ]
    soc = min(socs) if socs else None
    available = state.power_total_w + others_w - grid_w - settings.reserve_w
    if battery_w < 0:  # the battery discharges: not the sun's, unless the user lets it feed the car
        feeds_car = (
            settings.battery_to_car_soc is not None and soc is not None and soc >= settings.battery_to_car_soc
        )
        if not feeds_car:
            available += battery_w
    elif settings.car_first or (
        settings.battery_soc_min is not None and soc is not None and soc >= settings.battery_soc_min
    ):
        available += battery_w
    return available


def grid_age_s(snapshot: Snapshot) -> float:
    """How old the oldest of the grid meters' readings in ``snapshot`` is (as the loop saw it)."""
    return max((m.age_s for m in snapshot.meters.values() if m.grid), default=0.0)


def phases_in_use(state: ChargerState) -> int:
    """Phases the car draws on now: fewer than the box offers for a 1- or 2-phase car."""
    offered = state.active_phases
    if state.charging:
        used = sum(
            1 for a in (state.current_l1_a, state.current_l2_a, state.current_l3_a) if a > PHASE_IN_USE_A
        )
        if 0 < used < offered:
            return used
    return offered


def notch_a(phases: int) -> float:
    """The setpoint's resolution on ``phases`` (see NOTCH_A)."""
    return NOTCH_A / 2 if phases >= 3 else NOTCH_A


def margin_a(phases: int) -> float:
    """How far below the surplus a new current lands on ``phases`` (see SETTLE_MARGIN_A).

    The box reads each phase to ~0.05 A; on three phases the amps a phase come from the
    three readings together, whose errors average out (their mean wanders about 1/sqrt(3)
    as far), so the margin is half as large, as the notch is.
    """
    return SETTLE_MARGIN_A * notch_a(phases) / NOTCH_A


def floor_notch(amps: float, phases: int) -> float:
    """``amps`` rounded down to the setpoint's notch on ``phases``."""
    per_a = round(1 / notch_a(phases))  # 10 or 20: dividing by it keeps 7.3 from becoming 7.300000000000001
    return math.floor(amps * per_a) / per_a


def plural(phases: int) -> str:
    return f"{phases} phase{'s' * (phases > 1)}"


def kwh_text(wh: float) -> str:
    return f"{wh / 1000:.2f} kWh"


def three_phase_gain_w(sun_w: float, one_max_w: float, line_v: float, weight: float) -> float:
    """What three phases are worth over one, per second, in sun: positive where they take more.

    Three phases take the sun up to their maximum, one phase up to its own (16 A on one
    phase is 3.7 kW); below 6 A each would draw the minimum and import the rest, an
    imported W counting ``weight`` W of sun. Between one phase's maximum and three
    phases' minimum (3.7 to 4.1 kW at 16 A) three phases at 6 A take up to 0.46 kW more
    sun than one phase for a little import: worth it while that import, weighted, is
    smaller than the sun they add (above 4.0 kW with the default weight).
    """
    sun = max(sun_w, 0.0)
    extra_sun_w = min(sun, 3 * one_max_w) - min(sun, one_max_w)
    import_three_w = max(0.0, 3 * MIN_CURRENT_A * line_v - sun)
    import_one_w = max(0.0, MIN_CURRENT_A * line_v - sun)
    return extra_sun_w - weight * (import_three_w - import_one_w)


@dataclass(slots=True)
class FullCars:
    """How often the car's sessions end full, and what an import weighs for that.

    Sun that a ride through a dip takes is only worth having if the car would not fill
    anyway: a car that ends full before the sun is gone would have taken that sun later,
    and each Wh the ride imported displaced a Wh of sun at the end. With ``p`` the share
    of the last SESSIONS_KEPT sessions (fewer count as not full) that found the car full,
    riding is worth it where ``(1 - p) * sun > (weight + p) * import``: an import weighs
    ``(weight + p) / (1 - p)``, at most FULL_CAR_WEIGHT (or ``weight`` if that is more).
    A session counts once the car has drawn in it; one in which it never drew says nothing.
    With a session history (``past``: ``StrategyContext.past_sessions``) the sessions are the
    history's, which outlive a restart of the process; without one, those seen here.
    """

    ends: deque[bool] = field(default_factory=lambda: deque(maxlen=SESSIONS_KEPT))
    #: The session under way: the car has drawn in it; it has been found full.
    drew: bool = False
    full: bool = False
    connected: bool = False

    def update(self, state: ChargerState, idle: bool, past: Sequence[PastSession] | None = None) -> None:
        """One tick's reading of the box and whether the car takes nothing now (and the history's sessions)."""
        if past is not None:
            self.ends = deque((s.car_full for s in past[-SESSIONS_KEPT:]), maxlen=SESSIONS_KEPT)
            return
        if state.evse_state == EvseState.IDLE:  # unplugged: the session's end
            if self.connected and (self.drew or self.full):
                self.ends.append(self.full)
            self.connected = self.drew = self.full = False
            return
        if state.vehicle_connected:
            self.connected = True
            self.drew = self.drew or car_draws(state)
            self.full = self.full or idle

    def share_full(self) -> float:
        return sum(self.ends) / SESSIONS_KEPT

    def weight(self, base: float) -> float:
        p = self.share_full()
        if p <= 0.0:
            return base
        return max(base, min(FULL_CAR_WEIGHT, (base + p) / (1.0 - p) if p < 1.0 else math.inf))


@dataclass(slots=True)
class Spells:
    """How long the sun stays on one side of a threshold: the recent spells' typical length.

    ``update`` is called every tick with whether the condition holds; the typical
    length is the median of the last ``SPELLS_KEPT`` spells that ended (once
    three have, one odd spell does not move it). The first spell, under way when
    watching began (for dips: the dark morning), counts too: until two more have
    ended it makes dips look long, so the day's first clouds are paused rather
    than ridden (see the README's "Recent spells"). ``remaining_s`` is the
    expected rest of the present spell: the typical length, or as long again as it
    has lasted when it has lasted longer (a long spell tends to go on); None until
    ``SPELLS_NEEDED`` spells have ended, so only the energy accounts decide.
    """

    since: float | None = None
    state: bool | None = None
    lengths: deque[float] = field(default_factory=lambda: deque(maxlen=SPELLS_KEPT))

    def update(self, holds: bool, now: float) -> None:
        if holds != self.state:
            if self.state and self.since is not None:  # a spell in which the condition held ends
                self.lengths.append(now - self.since)
            self.state, self.since = holds, now

    def remaining_s(self, now: float) -> float | None:
        """The expected rest of a spell in which the condition holds (None when it does not hold now)."""
        if len(self.lengths) < SPELLS_NEEDED or self.since is None or not self.state:
            return None
        return max(statistics.median(self.lengths), now - self.since)


@dataclass(slots=True)
class MeterLag:
    """How far the grid meter is behind the box, measured on the cars' own moves.

    The surplus is the cars' power (the box's reading, at once) less the grid's (the
    meter's). When the cars' power moves by ``delta_w``, a meter behind the box still
    shows the old power, so the surplus jumps by about ``delta_w`` and comes back once
    the meter shows the move. One measurement: from the move to when the meter took the
    first reading that puts the surplus back within half the move of the last steady one
    (0 for a meter in step with the box). A move the sun hides is not counted: the
    surplus moving otherwise (the other way, or half as far again), or not back within
    MAX_FOLLOW_S (a meter that does not see the box).
    ``lag_s`` is the longest of the last LAGS_KEPT (a meter that updates every few
    seconds inside is late by a different amount each time). A move that follows a new
    current counts from when it was set: the car takes a moment to follow it before the
    box reads the move, and a small change (not read as a move) has to be waited for as
    long.
    A meter that says when it took its reading (``read_at_s``, e.g. one that posts every
    10 s) shows a move in the first reading taken after it, however old that is. Until
    the first measurement has ended, the first move is waited for until it does (see
    ``lag_s``).
    """

    #: (when the cars' power moved, the surplus before, the move) while it is measured.
    pending: tuple[float, float, float] | None = None
    lags: deque[float] = field(default_factory=lambda: deque(maxlen=LAGS_KEPT))
    #: Until the first measurement ends, the first move's readings mix until it does.
    first: bool = True
    #: When a new current was last set.
    set_at: float = -math.inf

    def current_set(self, now: float) -> None:
        """A new current was set: a move of the car within FOLLOW_S is its doing."""
        self.set_at = now

    def moved(self, now: float, before_w: float, delta_w: float) -> None:
        """The box read the cars' power move by ``delta_w`` from a surplus of ``before_w``.

        A move within FOLLOW_S of a new current, or of the move being measured, is part of
        it (the car following a new current, a ramp): the time counts from the first. A
        later one ends that measurement: the meter took at least that long (a meter so slow
        that the moves it causes come before it shows them would otherwise never be
        measured), and it counts a reading longer (LAG_STEP_S). Such a move is most often
        the wait's own doing: it ended before the meter showed the move, the old power read
        as a step in the sun and was followed. Counted as it lasted, the measurement would
        keep the wait that short, a reading too early for every change after it (a meter
        polled every second that updates every 8 s inside was measured 7 s, and a small
        change, which no measurement times, was followed by a false one each time).
        """
        since = self.set_at if now - self.set_at < FOLLOW_S else now
        if self.pending is not None:
            if now - self.pending[0] < FOLLOW_S:
                since = min(since, self.pending[0])
            else:
                self.lags.append(min(now - self.pending[0] + LAG_STEP_S, MAX_FOLLOW_S))
                self.first = False
        self.pending = (since, before_w, delta_w)

    def update(self, raw_w: float, now: float, read_at: float) -> None:
        """A reading of the surplus (the meter's taken at ``read_at``): ends the measurement
        once it shows the move."""
        if self.pending is None:
            return
        since, before_w, delta_w = self.pending
        off_w = raw_w - before_w
        if now - since >= MAX_FOLLOW_S:
            self.pending = None  # not shown (a meter that does not see the box) or hidden by the sun
        elif abs(off_w) < abs(delta_w) / 2:
            self.lags.append(max(read_at - since, 0.0))
            self.pending = None
        elif off_w * delta_w < 0 or abs(off_w) > 1.5 * abs(delta_w):
            self.pending = None  # the sun moved: the readings are not the move alone
        if self.pending is None:
            self.first = False

    def lag_s(self) -> float:
        """How long after a move a reading may still show the old power (by when it was taken).

        While the first move is measured, until it has been: a slow meter's first move
        would otherwise read as sun (or a cloud) and be followed, its own move would cut
        the measurement short, and so on.
        """
        if self.first and self.pending is not None:
            return MAX_FOLLOW_S
        return self.measured_s()

    def measured_s(self) -> float:
        """The longest of the last measurements (0 before the first)."""
        return max(self.lags, default=0.0)

    def mixed(self, since: float, now: float, read_at: float) -> bool:
        """Whether the readings may mix the cars' power before ``since`` with after: until the
        car has followed (FOLLOW_S) and the meter's reading is as late as it lags; and while
        the move being measured is not shown yet (the readings still off by about it): until
        LAGS_KEPT delays have been measured, until it is (at most MAX_FOLLOW_S), then up to
        UNSHOWN_FACTOR times the longest of them (a meter whose delay varies may take longer
        than the longest measured so far)."""
        if now - since < FOLLOW_S or read_at - since < self.lag_s():
            return True
        # The move being measured not shown yet (the last reading still off by about it).
        pending = self.pending
        if pending is None:
            return False
        if len(self.lags) < LAGS_KEPT:  # too few delays measured to know the longest one
            return read_at - pending[0] < MAX_FOLLOW_S
        return read_at - pending[0] < UNSHOWN_FACTOR * self.lag_s()


@dataclass(slots=True)
class HeldReadings:
    """When the grid meter took its reading: for a meter that holds its readings, the first
    poll that showed the reading it shows now.

    A device polled over HTTP every second that measures every 8 s gives each of its
    readings eight times, each stamped with the time of its poll: seven look like new
    readings that repeat the last one exactly. Counted so, they measure the meter's noise
    as nothing (most differences are 0), and pv followed 50 W of noise as if it were the
    sun: 255 writes on a clear shipped day against the 5 s reference's 38 (``surplus
    simulate --meter-every 8 --meter-polled --meter-noise 50``). Once the reading changes at
    a regular period (HOLD_PERIODS), a reading equal to the last one is that one again,
    taken when it was first shown; a meter that stamps its own readings is unchanged by this.
    """

    last_w: float | None = None
    #: When the reading shown now was first shown.
    since: float = -math.inf
    changes: deque[float] = field(default_factory=lambda: deque(maxlen=HOLD_PERIODS + 1))

    def holding(self) -> bool:
        """The reading has changed at a regular period of HOLD_MIN_S to HOLD_MAX_S lately."""
        if len(self.changes) <= HOLD_PERIODS:
            return False
        gaps = [b - a for a, b in itertools.pairwise(self.changes)]
        return min(gaps) >= HOLD_MIN_S and max(gaps) <= HOLD_MAX_S and max(gaps) - min(gaps) <= HOLD_SPREAD_S

    def read_at(self, grid_w: float | None, read_at: float) -> float:
        """When the reading ``grid_w`` (stamped ``read_at``) was taken, as far as can be told."""
        if grid_w is None or grid_w != self.last_w:
            if grid_w is not None and read_at > self.since:
                self.changes.append(read_at)
            self.last_w, self.since = grid_w, read_at
            return read_at
        return self.since if self.holding() else read_at


@dataclass(eq=False)
class Denoise:
    """The surplus with the meters' second-to-second noise averaged out, its steps kept.

    The noise is measured as it is: sigma from the median difference between consecutive
    readings (0.954 sigma for Gaussian noise), so readings that mostly repeat (an exact
    meter, one that holds its value between updates, a day replayed in minutes) measure 0
    and pass unchanged. With noise, the surplus is the mean of its present level, the
    readings since its last step (at most LEVEL_S old). A step ends the level at once
    when one reading is NOISE_BREAK sigmas from the mean (a cloud of a few hundred watts:
    at its first reading), or when the last NOISE_RECENT readings are, on average,
    NOISE_BREAK sigmas of their mean from the readings before (a smaller step: within
    NOISE_RECENT readings; the new level then begins at the reading where the step most
    likely came, so readings from before it do not pull its mean back). After a move of
    the cars' power the stand-in is the level's mean, not the one reading before the
    move. A reading given again (the same time of reading: a meter that reads every few
    seconds) is neither a difference of 0 nor a reading of the level.

    Why: pv follows a fall at once and a rise once the lowest of three readings shows it.
    With 50 W of Gaussian noise on the meter (PV inverters and house loads jitter that
    much from second to second), that followed the noise: on a clear shipped day ten times
    the writes (370 against 38; ``surplus simulate --meter-noise 50``), and false dips at
    the minimum.
    """

    #: The readings' differences, while the readings were the meters' own (not mixed).
    diffs: deque[float] = field(default_factory=lambda: deque(maxlen=NOISE_READINGS))
    #: The present level's readings and when they were taken (at most LEVEL_S old).
    level: deque[float] = field(default_factory=deque)
    level_at: deque[float] = field(default_factory=deque)
    last_w: float | None = None
    #: When the grid meter took the last reading (None: not known), and the calls so far (the
    #: readings' times when they are not known).
    last_read_at: float | None = None
    calls: int = 0
    #: The noise's sigma, taken anew every NOISE_EVERY differences (a median of hundreds moves
    #: slowly), and the differences added since.
    _sigma_w: float = 0.0
    _since: int = 0

    def restart(self) -> None:
        """After a gap: the level and the last reading are of another time (the noise stays)."""
        self.level.clear()
        self.level_at.clear()
        self.last_w = None

    def _new_level(self, readings: list[tuple[float, float]]) -> None:
        self.level.clear()
        self.level_at.clear()
        for t, w in readings:
            self.level_at.append(t)
            self.level.append(w)

    def sigma_w(self) -> float:
        """The noise's sigma (0 until NOISE_FIRST readings have been seen)."""
        return self._sigma_w

    def update(self, raw_w: float, own: bool, read_at: float | None = None) -> float:
        """The surplus to go by for this reading; ``own``: the reading is the meters' own (a
        stand-in after a move repeats the last one and tells nothing of the noise);
        ``read_at``: when the grid meter took it (the same as last time: a meter that reads
        every few seconds gave its last reading again, which says nothing new either)."""
        last = self.last_read_at
        again = read_at is not None and last is not None and abs(read_at - last) < 1e-3
        self.last_read_at = read_at
        self.calls += 1
        at = float(self.calls) if read_at is None else read_at
        if again and self._sigma_w > 0.0 and self.level:
            return statistics.fmean(self.level)
        if again:
            own = False  # not counted as noise (a difference of 0), nor as a level of its own
        if own and self.last_w is not None:
            self.diffs.append(abs(raw_w - self.last_w))
            self._since += 1
            n = len(self.diffs)
            if n == NOISE_FIRST or (n > NOISE_FIRST and self._since >= NOISE_EVERY):
                self._sigma_w = statistics.median(self.diffs) / 0.954
                self._since = 0
        if own or not again:
            self.last_w = raw_w if own else None
        sigma = self.sigma_w()
        level = self.level
        if not own and sigma > 0.0 and level:
            return statistics.fmean(level)  # the level before the move stands in, not one reading
        if sigma == 0.0 or not level:
            self._new_level([(at, raw_w)])
            return raw_w
        mean_w = statistics.fmean(level)
        level.append(raw_w)
        self.level_at.append(at)
        while self.level_at[0] <= at - LEVEL_S:
            self.level_at.popleft()
            level.popleft()
        if abs(raw_w - mean_w) > NOISE_BREAK * sigma:
            self._new_level([(at, raw_w)])
            return raw_w
        if len(level) > 2 * NOISE_RECENT:
            readings = list(level)
            recent = statistics.fmean(readings[-NOISE_RECENT:])
            before = statistics.fmean(readings[:-NOISE_RECENT])
            if abs(recent - before) > NOISE_BREAK * sigma / math.sqrt(NOISE_RECENT):
                # The new level begins where the step most likely came: the split of the last
                # readings whose mean stands furthest from the level before, in its own noise.
                k = max(
                    range(1, NOISE_RECENT + 1),
                    key=lambda n: abs(statistics.fmean(readings[-n:]) - before) * math.sqrt(n),
                )
                self._new_level(list(zip(self.level_at, level, strict=True))[-k:])
                return statistics.fmean(readings[-k:])
        return statistics.fmean(level)


def lag_note(lag_s: float) -> str:
    """For the reason, where the grid meter is measured further behind the box than the car
    takes to follow (FOLLOW_S): readings wait that long after every move."""
    if lag_s <= FOLLOW_S:
        return ""
    return f"; the grid meter shows a change about {lag_s:.0f} s after the box, so readings wait that long"


#: A level of the surplus ends at the first reading further than this from where it began, or
#: LEVEL_SHARE of it where that is more (see :class:`Levels`).
LEVEL_BAND_W = 300.0
LEVEL_SHARE = 0.1


def level_band_w(watts: float) -> float:
    """How far the surplus moves before it is at another level (300 W, or 10 % of it)."""
    return max(LEVEL_BAND_W, LEVEL_SHARE * abs(watts))


@dataclass(slots=True)
class Levels:
    """How long the surplus stays at one level: the typical length of its recent levels.

    A level begins at a reading and ends at the first reading more than
    :func:`level_band_w` away from it. Where the sun moves in steps (a steady
    overcast, a series measured every 15 minutes) a level lasts many minutes; under
    fast clouds a minute or two. ``typical_s`` is the median of the last
    ``SPELLS_KEPT`` levels that ended, None until that many have. Unlike
    :class:`Spells` it needs no threshold to be crossed, so it knows the weather's
    pace before the first spell of three-phase sun has ended.
    """

    at_w: float | None = None
    since: float = 0.0
    lengths: deque[float] = field(default_factory=lambda: deque(maxlen=SPELLS_KEPT))

    def update(self, watts: float, now: float) -> None:
        if self.at_w is None or abs(watts - self.at_w) > level_band_w(self.at_w):
            if self.at_w is not None:
                self.lengths.append(now - self.since)
            self.at_w, self.since = watts, now

    def typical_s(self) -> float | None:
        """The median length of the last levels (None until ``SPELLS_KEPT`` have ended)."""
        return statistics.median(self.lengths) if len(self.lengths) >= SPELLS_KEPT else None


def strategy_decision(
    ctx: StrategyContext,
    *,
    charge: bool,
    reason: str,
    phases: int | None,
    current_a: float | None = None,
    figures: tuple[tuple[str, float], ...] = (),
) -> Decision:
    """A strategy's decision for the context's charger."""
    return Decision(
        charger_id=ctx.charger_id,
        source=Source.STRATEGY,
        charge=charge,
        current_a=current_a,
        phases=phases,
        reason=reason,
        figures=figures,
    )


def volts(state: ChargerState, nominal_v: float) -> float:
    """The box's own L1 voltage when it is plausible, else the nominal one (for W <-> A)."""
    low, high = PLAUSIBLE_VOLTAGE_V
    return state.voltage_l1_v if low <= state.voltage_l1_v <= high else nominal_v


def parse_settings(options: Mapping[str, Any], *, keep_minimum: bool) -> PvSettings:
    """Validate the options of "pv" / "minpv" (an OptionError names the bad one)."""
    check_known(options, OPTIONS)
    d = PvSettings()
    phases = choice(options, "phases", "auto", ("auto", 1, 3))
    return PvSettings(
        keep_minimum=keep_minimum,
        phases=None if phases == "auto" else int(phases),
        reserve_w=number(options, "reserve_w", d.reserve_w, lo=-5000, hi=50000, unit="W"),
        car_first=choice(options, "battery", "house_first", ("house_first", "car_first")) == "car_first",
        battery_soc_min=_optional_pct(options, "battery_soc_min"),
        battery_to_car_soc=_optional_pct(options, "battery_to_car_soc"),
        start_delay_s=number(options, "start_delay_s", d.start_delay_s, lo=0, hi=3600, unit="s"),
        stop_delay_s=number(options, "stop_delay_s", d.stop_delay_s, lo=0, hi=3600, unit="s"),
        import_weight=number(options, "import_weight", d.import_weight, lo=0.1, hi=100),
        smoothing_up_s=number(options, "smoothing_up_s", d.smoothing_up_s, lo=0, hi=600, unit="s"),
        smoothing_down_s=number(options, "smoothing_down_s", d.smoothing_down_s, lo=0, hi=600, unit="s"),
        step_a=number(options, "step_a", d.step_a, lo=0.1, hi=10, unit="A"),
        voltage_v=number(options, "voltage_v", d.voltage_v, lo=100, hi=260, unit="V"),
        phase_up_delay_s=number(options, "phase_up_delay_s", d.phase_up_delay_s, lo=0, hi=7200, unit="s"),
        phase_down_delay_s=number(
            options, "phase_down_delay_s", d.phase_down_delay_s, lo=0, hi=7200, unit="s"
        ),
    )


def _optional_pct(options: Mapping[str, Any], name: str) -> float | None:
    """A state of charge in percent, or None when the option is not given."""
    if options.get(name) is None:
        return None
    return number(options, name, 0.0, lo=0, hi=100, unit="%")


def _defaults() -> dict[str, Any]:
    d = PvSettings()
    shown = {"phases": "auto", "battery": "house_first"}
    return {name: shown.get(name, getattr(d, name, None)) for name in OPTIONS}


#: Every option and its default, as ``surplus plugins`` shows them.
DEFAULTS = _defaults()
