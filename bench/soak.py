"""kill -9 soak: does surplus stay safe and truthful when it is killed at random points?

Serves one simulated AMTRON (RTU over TCP on 127.0.0.1, in this process, so its
write log survives every kill), then runs N cycles of: start ``surplus run``
(a 22 kW box; random mode: fixed 32 A, minpv or, rarely, pv with clouds or off; the governor memory and the
session history on files), plug and unplug the car by a random script while it
runs (quick replugs under a second, short unplugs, longer ones), ``kill -9`` it
at a random point, sometimes replug while it is down, restart. At the end the
car is unplugged, the last process stops normally (SIGTERM), and it checks:

- the governor's rules held across all restarts, from the simulator's write log:
  never 0 A, currents a soft pause or 6..32 A, current changes and release
  toggles >= 5 s apart, a resume >= 5 min after the last pause, phase switches
  >= 5 min apart;
- the history file passes ``PRAGMA integrity_check``, no row is left open and
  no two rows overlap in time;
- the sessions add up to the rise of the box's CHARGED_ENERGY_TOTAL within 1 %
  (or one 10 Wh step of that register, when that is more: a short run).

    .venv/bin/python bench/soak.py                # 50 cycles, about 10 minutes
    .venv/bin/python bench/soak.py --cycles 5 --seed 3

Prints the numbers; exit status 1 when a check failed. ``tests/test_soak.py``
runs a few cycles of the same in the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import os
import random
import signal
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from surplus.clock import SystemClock  # noqa: E402
from surplus.history import REPLUG_S  # noqa: E402
from surplus.modbus import registers as R  # noqa: E402
from surplus.sim.model import PROFILE_22KW, AmtronModel, EvProfile, WriteRecord  # noqa: E402
from surplus.sim.server import SimulatorServer  # noqa: E402

#: A car that is never full during a soak, on a 22 kW box: much energy per second makes the
#: box's 10 Wh register steps small against 1 % of a soak's energy.
CAR = EvProfile(soc=0.1, capacity_wh=500_000, max_current_a=32.0)
SPACING_S = 5.0
PAUSE_RESUME_S = 300.0
PHASE_INTERVAL_S = 300.0
SOFT_PAUSE = (0.01, 5.99)
TOLERANCE = 0.01
#: One step of the box's energy registers: below this the box itself cannot tell.
REGISTER_STEP_WH = 10.0
#: Modes a run starts in, by weight. "off" pauses, and a later run's resume must wait out the
#: 5 minutes after it (across kill -9); it is rare, or a soak charges little.
MODES = ("fixed",) * 6 + ("minpv",) * 6 + ("pv", "off")
#: Timing slack for the write log (the simulator stamps writes when they arrive).
EPS_S = 0.05

CONFIG = """\
log:
  level: info
heartbeat:
  interval_s: 3
bus:
  port: {url}
control:
  tick_s: 1.0
  state_path: {dir}/governor.json
chargers:
  - id: wallbox
    device_id: 50
    mode: {mode}
    strategies:
      fixed: {{current_a: 32}}
      pv: {{start_delay_s: 0}}
      minpv: {{}}
    limits: {{fuse_limit_a: 32, pause: release}}
meters:
  - id: grid
    type: simulated
    options: {{pv_peak_w: 25000, cloudiness: 0.9, seed: {seed}, start_hour: 12.5}}
history:
  path: {dir}/sessions.db
  flush_every_s: 10
"""


@dataclass
class SoakResult:
    cycles: int
    seconds: float = 0.0
    plug_events: collections.Counter[str] = field(default_factory=collections.Counter)
    modes: collections.Counter[str] = field(default_factory=collections.Counter)
    writes: int = 0
    current_changes: int = 0
    pauses: int = 0
    resumes: int = 0
    phase_switches: int = 0
    violations: list[str] = field(default_factory=list)
    integrity: str = ""
    rows: int = 0
    open_rows: int = 0
    overlaps: int = 0
    sessions_wh: float = 0.0
    #: Rise of CHARGED_ENERGY_TOTAL as the box shows it (10 Wh steps), and exactly.
    box_wh: float = 0.0
    box_exact_wh: float = 0.0

    @property
    def error(self) -> float:
        return abs(self.sessions_wh - self.box_wh) / self.box_wh if self.box_wh else float("inf")

    @property
    def adds_up(self) -> bool:
        """Within 1 %, or within one step of the box's register when that is more."""
        return abs(self.sessions_wh - self.box_wh) <= max(TOLERANCE * self.box_wh, REGISTER_STEP_WH)

    @property
    def ok(self) -> bool:
        return (
            not self.violations
            and self.integrity == "ok"
            and not self.open_rows
            and not self.overlaps
            and self.adds_up
        )

    def report(self) -> str:
        lines = [
            f"cycles                 {self.cycles} kill -9 / restart ({self.seconds:.0f} s)",
            f"modes started          {dict(self.modes)}",
            f"plug events            {dict(self.plug_events)}",
            f"writes to the box      {self.writes} ({self.current_changes} current changes,"
            f" {self.pauses} pauses, {self.resumes} resumes, {self.phase_switches} phase switches)",
            f"governor rules broken  {len(self.violations)}",
            *(f"  {v}" for v in self.violations[:20]),
            f"integrity_check        {self.integrity}",
            f"session rows           {self.rows} ({self.open_rows} open, {self.overlaps} overlapping)",
            f"sessions sum           {self.sessions_wh:.1f} Wh",
            f"box counter rise       {self.box_wh:.1f} Wh (register), {self.box_exact_wh:.1f} Wh (exact)",
            f"difference             {self.sessions_wh - self.box_wh:+.1f} Wh = {100 * self.error:.2f} %"
            f" (limit {100 * TOLERANCE:.0f} % or {REGISTER_STEP_WH:.0f} Wh)",
            f"result                 {'OK' if self.ok else 'FAILED'}",
        ]
        return "\n".join(lines)


def check_governor(writes: list[WriteRecord], result: SoakResult) -> None:
    """The governor's rules from the box's write log (accepted writes only)."""
    accepted = [w for w in writes if w.exception_code is None]
    result.writes = len(accepted)
    v = result.violations
    currents = [w for w in accepted if w.register == R.CHARGING_CURRENT_EM.name]
    for w in currents:
        amps = float(w.value)
        if amps == 0 or not (SOFT_PAUSE[0] <= amps <= SOFT_PAUSE[1] or 6.0 <= amps <= 32.0):
            v.append(f"current {amps} A written at {w.at_s:.1f}")

    def changes(name: str) -> list[WriteRecord]:
        same = [w for w in accepted if w.register == name]
        return [w for i, w in enumerate(same) if i == 0 or w.value != same[i - 1].value]

    current_changes = changes(R.CHARGING_CURRENT_EM.name)
    result.current_changes = len(current_changes)
    for a, b in itertools.pairwise(current_changes):
        if b.at_s - a.at_s < SPACING_S - EPS_S:
            v.append(f"current {a.value}->{b.value} A {b.at_s - a.at_s:.2f} s apart at {b.at_s:.1f}")
    for a, b in itertools.pairwise(changes(R.CHARGING_RELEASE_EM.name)):
        if b.at_s - a.at_s < SPACING_S - EPS_S:
            v.append(f"release toggled {b.at_s - a.at_s:.2f} s apart at {b.at_s:.1f}")
    phases = changes(R.REQUESTED_PHASES.name)
    result.phase_switches = max(0, len(phases) - 1)
    for a, b in itertools.pairwise(phases):
        if b.at_s - a.at_s < PHASE_INTERVAL_S - EPS_S:
            v.append(f"phases switched {b.at_s - a.at_s:.1f} s apart at {b.at_s:.1f}")
    # Charging allowed = release on and the current not a soft pause; a resume >= 5 min after a pause.
    release, amps = 0, 0.0
    charging, last_pause = False, -float("inf")
    for w in accepted:
        if w.register == R.CHARGING_RELEASE_EM.name:
            release = int(w.value)
        elif w.register == R.CHARGING_CURRENT_EM.name:
            amps = float(w.value)
        else:
            continue
        now = release == 1 and amps >= 6.0
        if charging and not now:
            result.pauses += 1
            last_pause = w.at_s
        elif now and not charging:
            result.resumes += 1
            if w.at_s - last_pause < PAUSE_RESUME_S - EPS_S:
                v.append(f"resume {w.at_s - last_pause:.1f} s after a pause at {w.at_s:.1f}")
        charging = now


def check_history(db: Path, result: SoakResult, *, plugged: bool) -> None:
    """Integrity, overlaps, open rows (only the newest may be open, when the car is still plugged in)."""
    conn = sqlite3.connect(db)
    try:
        result.integrity = "; ".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check"))
        rows = conn.execute(
            "SELECT started_at, ended_at, energy_wh FROM sessions ORDER BY started_at"
        ).fetchall()
    finally:
        conn.close()
    result.rows = len(rows)
    result.open_rows = sum(1 for r in rows[:-1] if r[1] is None)
    if rows and rows[-1][1] is None and not plugged:
        result.open_rows += 1
    result.overlaps = sum(1 for a, b in itertools.pairwise(rows) if a[1] is not None and a[1] > b[0] + 1e-6)
    result.sessions_wh = sum(float(r[2]) for r in rows)


def _env() -> dict[str, str]:
    skip = ("MODBUS_", "RPC_", "HEARTBEAT_", "LOG_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _box_total_wh(model: AmtronModel) -> float:
    return float(model.values()[R.CHARGED_ENERGY_TOTAL.name]) * 1000.0


async def soak(
    cycles: int = 50,
    *,
    seed: int = 0,
    workdir: Path | None = None,
    up_s: tuple[float, float] = (5.0, 13.0),
    down_s: tuple[float, float] = (0.2, 2.5),
    modes: tuple[str, ...] = MODES,
    events_every_s: tuple[float, float] = (0.5, 6.0),
    unplug_at_end: bool = True,
    log: bool = True,
) -> SoakResult:
    """Run the soak; the result holds the numbers and the checks."""
    rng = random.Random(seed)
    result = SoakResult(cycles=cycles)
    began = time.monotonic()
    model = AmtronModel(SystemClock(), profile=PROFILE_22KW, ev=CAR, keep_record=True)
    server = SimulatorServer({50: model}, transport="tcp", host="127.0.0.1", port=0)
    await server.start()
    with contextlib.ExitStack() as stack:
        folder = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="surplus-soak-")))
        config = folder / "surplus.yaml"
        log_file = stack.enter_context((folder / "surplus.log").open("ab"))
        total_at_start, exact_at_start = _box_total_wh(model), model.energy_total_wh

        async def start(cycle: int) -> asyncio.subprocess.Process:
            mode = rng.choice(modes)
            result.modes[mode] += 1
            config.write_text(CONFIG.format(url=server.url, dir=folder, mode=mode, seed=cycle))
            return await asyncio.create_subprocess_exec(
                sys.executable, "-m", "surplus.cli", "run", "-c", str(config), "--no-rpc",
                env=_env(), stdout=log_file, stderr=log_file,
            )  # fmt: skip

        async def plug_script(seconds: float) -> None:
            """Random plug events for ``seconds``."""
            end = time.monotonic() + seconds
            while (left := end - time.monotonic()) > 0:
                await asyncio.sleep(
                    rng.uniform(events_every_s[0], max(events_every_s[0], min(events_every_s[1], left)))
                )
                if time.monotonic() >= end:
                    return
                await plug_event()

        async def plug_event() -> None:
            kind = rng.choice(("quick replug", "short unplug", "unplug", "plug", "none", "none"))
            if model.ev is None:
                kind = "plug" if kind != "none" else kind
            elif kind == "plug":
                kind = "none"
            result.plug_events[kind] += 1
            if kind == "plug":
                model.plug_in(CAR)
            elif kind == "unplug":
                model.unplug()
            elif kind in ("quick replug", "short unplug"):
                model.unplug()
                await asyncio.sleep(
                    rng.uniform(0.1, 0.9) if kind == "quick replug" else rng.uniform(2.0, 6.0)
                )
                model.plug_in(CAR)

        proc: asyncio.subprocess.Process | None = None
        try:
            for cycle in range(cycles):
                proc = await start(cycle)
                await plug_script(rng.uniform(*up_s))
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                proc = None
                if rng.random() < 0.3:  # something happens while surplus is down
                    await plug_event()
                await asyncio.sleep(rng.uniform(*down_s))
                if log:
                    print(f"cycle {cycle + 1}/{cycles}: killed, {time.monotonic() - began:.0f} s", flush=True)
            # The end: a last run (that sees the car leave), then a normal stop.
            proc = await start(cycles)
            await asyncio.sleep(rng.uniform(*up_s))
            if unplug_at_end and model.ev is not None:
                model.unplug()
                await asyncio.sleep(REPLUG_S + 2.0)
            # What the box counted up to the stop (a car still plugged in charges on after it).
            result.box_wh = _box_total_wh(model) - total_at_start
            result.box_exact_wh = model.energy_total_wh - exact_at_start
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)
            proc = None
        finally:
            if proc is not None:
                proc.kill()
                await proc.wait()
            await server.stop()
        check_governor(model.record.writes, result)
        check_history(folder / "sessions.db", result, plugged=model.ev is not None)
    result.seconds = time.monotonic() - began
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=50, help="kill -9 / restart cycles (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random script (default 0)")
    parser.add_argument("--keep", type=Path, help="a directory to keep the files in (config, log, database)")
    args = parser.parse_args()
    if args.cycles < 1:
        parser.error("--cycles must be at least 1")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)

    async def run() -> SoakResult:
        # SIGTERM cancels the soak like Ctrl-C: the running surplus is killed, not left behind.
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await soak(args.cycles, seed=args.seed, workdir=args.keep)

    try:
        result = asyncio.run(run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("soak: interrupted", file=sys.stderr)
        return 130
    print(result.report())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
