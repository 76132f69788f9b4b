"""What does publishing to MQTT cost?

Runs the real ``surplus run`` (built-in simulator over RTU-over-TCP, 1 s ticks,
RPC off) as a separate process against a private mosquitto on 127.0.0.1,
three times:

- ``off``:   no ``mqtt:`` section (the baseline),
- ``busy``:  MQTT on, mode ``pv`` with a cloudy simulated meter and a car
             charging (grid power, setpoint and power change every second),
- ``quiet``: MQTT on, mode ``fixed`` with no car and no meter (nothing changes).

For each it samples the process's CPU time (utime + stime from /proc) after a
warm-up, over a real window of ``--seconds`` (default 60), and scales it to an
hour: this is a shorter real run scaled, not a fake-clock hour, because the
broker and the socket are real. A subscriber on ``surplus/#`` and
``homeassistant/#`` counts the messages in the same window.

    .venv/bin/python bench/mqtt_cost.py [--seconds 60] [--warmup 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.mosquitto_support import Mosquitto
from tests.mqtt_support import mqtt_section, subscriber

METER = """\
meters:
  - id: grid
    type: simulated
    options: {pv_peak_w: 9000, base_load_w: 400, seed: 3, start_hour: 11.0, cloudiness: 0.6}
"""
BASE = """\
bus:
  port: sim
simulator:
  ev: {ev}
chargers:
  - id: wallbox
    device_id: 50
    mode: {mode}
    strategies:
      fixed: {{current_a: 10}}
    limits: {{fuse_limit_a: 16}}
{meters}
log:
  level: warning
"""


@dataclass
class Result:
    name: str
    cpu_s: float
    window_s: float
    messages: int

    @property
    def cpu_per_hour_s(self) -> float:
        return self.cpu_s / self.window_s * 3600

    @property
    def per_minute(self) -> float:
        return self.messages / self.window_s * 60


def cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


async def one_run(name: str, broker: Mosquitto, config_text: str, seconds: float, warmup: float) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "surplus.yaml"
        path.write_text(config_text)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MODBUS_", "RPC_", "LOG_"))}
        async with subscriber(broker, "#") as seen:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "surplus.cli",
                "run",
                "-c",
                str(path),
                "--no-rpc",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                env=env,
            )
            try:
                await asyncio.sleep(warmup)
                assert proc.returncode is None, f"{name}: surplus run exited with {proc.returncode}"
                cpu0, n0, t0 = cpu_s(proc.pid), len(seen.log), time.monotonic()
                await asyncio.sleep(seconds)
                cpu1, n1, t1 = cpu_s(proc.pid), len(seen.log), time.monotonic()
            finally:
                proc.terminate()
                await asyncio.wait_for(proc.wait(), 30)
    return Result(name=name, cpu_s=cpu1 - cpu0, window_s=t1 - t0, messages=n1 - n0)


async def main(seconds: float, warmup: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "mosquitto")
        broker.start()
        try:
            section = mqtt_section(broker)
            runs = [
                ("off (no mqtt)", BASE.format(ev="true", mode="pv", meters=METER)),
                ("busy: pv, car charging", BASE.format(ev="true", mode="pv", meters=METER) + section),
                (
                    "quiet: fixed, no car",
                    BASE.format(ev="false", mode="fixed", meters="meters: []") + section,
                ),
            ]
            results = [await one_run(name, broker, text, seconds, warmup) for name, text in runs]
        finally:
            broker.stop()
    base = results[0]
    print(f"real run of {seconds:g} s per case after {warmup:g} s warm-up, CPU scaled to an hour")
    print(f"{'case':26} {'CPU s/h':>8} {'CPU %':>6} {'vs off':>8} {'msgs/min':>9}")
    for r in results:
        extra = r.cpu_per_hour_s - base.cpu_per_hour_s
        share = r.cpu_s / r.window_s * 100
        print(f"{r.name:26} {r.cpu_per_hour_s:8.1f} {share:6.2f} {extra:+8.1f} {r.per_minute:9.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=8.0)
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.warmup))
