"""`surplus probe` and `surplus init` as real processes against the simulator over a real pty pair.

The simulator runs in this process (so its write log is at hand: probe and init
must never write) or as `surplus sim`; its pty link drops bytes from a client
set to another baud rate, as a real line would.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
import yaml

from surplus import cli, init_cli, probe, probe_report
from surplus.clock import SystemClock
from surplus.config import load_config
from surplus.modbus.codec import WordOrder
from surplus.sim.model import PROFILE_11KW, PROFILE_22KW, AmtronModel, DeviceProfile, EvProfile
from surplus.sim.pty import PtyLink
from surplus.sim.server import SimulatorServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
SURPLUS = [sys.executable, "-m", "surplus.cli"]
HINT_WORDS = ("A/B swapped", "DIP switch bank S1", "4 and 5 must be ON", "7 OFF", "Restart", "Termination")


async def surplus(*args: str, timeout_s: float = 30.0) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODBUS_", "RPC_", "HEARTBEAT_", "LOG_"))}
    env["PYTHONPATH"] = str(ROOT)
    proc = await asyncio.create_subprocess_exec(
        *SURPLUS, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Sim:
    def __init__(self, server: SimulatorServer) -> None:
        self.server = server
        self.port = server.url

    @property
    def models(self) -> Mapping[int, AmtronModel]:
        return self.server.models

    def assert_untouched(self, *, read: bool = True) -> None:
        """Nothing was written (not even a heartbeat); and the box was (or was not) read."""
        for model in self.models.values():
            assert model.record.writes == []
            assert model.record.heartbeats == []
        reads = sum(m.record.reads for m in self.models.values())
        assert (reads > 0) if read else (reads == 0)


async def start_sim(
    tmp_path: Path, devices: Mapping[int, DeviceProfile], word_order: WordOrder = "big"
) -> Sim:
    models = {
        device_id: AmtronModel(SystemClock(), profile=profile, ev=EvProfile(), word_order=word_order)
        for device_id, profile in devices.items()
    }
    server = SimulatorServer(models, transport="pty", link_path=str(tmp_path / "amtron"))
    await server.start()
    return Sim(server)


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[Sim]:
    # A box whose heartbeat-loss fallback was never set (0): the probe must say so.
    s = await start_sim(tmp_path, {50: dataclasses.replace(PROFILE_11KW, master_lost_fallback_current_a=0)})
    try:
        yield s
    finally:
        await s.server.stop()


# --- probe ----------------------------------------------------------------------------------------


async def test_probe_finds_the_box_shows_its_values_and_writes_nothing(sim: Sim) -> None:
    code, out, err = await surplus("probe", sim.port)
    assert code == 0, out + err
    p = PROFILE_11KW
    assert f"AMTRON found on {sim.port}: device id 50, 57600 baud 8N2" in out
    for needle in (
        "register layout       1.0.3 (0x0103)",
        f"firmware              {p.firmware_version}",
        f"serial number         {p.serial_number}",
        f"article number        {p.article_number}",
        "maximum current       16 A (MAX_CURRENT_EVSE)",
        "house connection      32 A (MAX_CURRENT_HOUSE)",
        "phases (hardware)     HW 1 or 3 phases: phase switching possible",
        "heartbeat fallback    0 = keep charging with the last current and release (0x030E)",
        f"Next: surplus init --port {sim.port}",
    ):
        assert needle in out, out
    assert f"EVSE state            {sim.models[50].evse_state} (" in out
    # The sim's box keeps charging when its energy manager goes silent: the probe says so.
    assert "WARNING: device id 50: if surplus stops" in out and "at the last current surplus set" in out
    assert "What to check" not in out
    assert "asking device id 50" in err  # progress goes to stderr
    sim.assert_untouched()


@pytest.mark.parametrize(
    ("profile", "warning"),
    [
        (dataclasses.replace(PROFILE_22KW, master_lost_fallback_current_a=1), None),
        (dataclasses.replace(PROFILE_11KW, master_lost_fallback_current_a=8), "goes on charging at 8 A"),
    ],
    ids=["pause", "8A"],
)
async def test_probe_json_matches_the_simulator(
    tmp_path: Path, profile: DeviceProfile, warning: str | None
) -> None:
    sim = await start_sim(tmp_path, {50: profile})
    try:
        code, out, _ = await surplus("probe", sim.port, "--json")
    finally:
        await sim.server.stop()
    assert code == 0
    report = json.loads(out)
    assert report["found"] is True and report["port"] == sim.port and report["hints"] == []
    (box,) = report["boxes"]
    assert {k: box[k] for k in ("device_id", "baudrate", "frame", "layout", "word_order")} == {
        "device_id": 50,
        "baudrate": 57600,
        "frame": "8N2",
        "layout": "1.0.3",
        "word_order": "big",
    }
    assert (box["firmware_version"], box["serial_number"], box["article_number"]) == (
        profile.firmware_version,
        profile.serial_number,
        profile.article_number,
    )
    assert box["max_current_evse_a"] == profile.max_current_evse_a
    assert box["max_current_house_a"] == profile.max_current_house_a
    assert box["phase_options_hw"] == profile.phase_options_hw
    assert box["phase_switching"] is (profile.phase_options_hw == 2)
    assert box["fallback_current_a"] == profile.master_lost_fallback_current_a
    assert box["fallback_keeps_charging"] is (warning is not None)
    assert 180 <= box["voltage_l1_v"] <= 260
    if warning is None:
        assert report["warnings"] == []
    else:
        (text,) = report["warnings"]
        assert warning in text
    sim.assert_untouched()


async def test_probe_and_init_notice_swapped_words(tmp_path: Path) -> None:
    sim = await start_sim(tmp_path, {50: PROFILE_11KW}, word_order="little")
    try:
        code, out, _ = await surplus("probe", sim.port, "--json")
        assert code == 0
        report = json.loads(out)
        (box,) = report["boxes"]
        assert (box["word_order"], box["max_current_evse_a"]) == ("little", 16.0)
        assert 180 <= box["voltage_l1_v"] <= 260
        assert any("set bus.word_order: little" in w for w in report["warnings"])
        code, out, _ = await surplus("init", "--port", sim.port)  # no -o: the config on stdout
    finally:
        await sim.server.stop()
    assert code == 0
    assert yaml.safe_load(out)["bus"]["word_order"] == "little"
    sim.assert_untouched()


async def test_probe_with_nothing_on_the_other_end_prints_the_hints(tmp_path: Path) -> None:
    link = PtyLink(str(tmp_path / "amtron"))  # a cable to nowhere
    link.open()
    try:
        code, out, _ = await surplus("probe", link.path, "--timeout-ms", "100")
    finally:
        link.close()
    assert code == probe_report.EXIT_NOTHING == 2
    assert f"No AMTRON answered on {link.path} (device id 50, 57600 baud 8N2)." in out
    for word in (*HINT_WORDS, "try --scan", "try --scan-baudrate"):
        assert word in out, word
    assert "AMTRON found" not in out


async def test_probe_at_the_wrong_baud_rate_hears_nothing_until_it_scans_the_rates(sim: Sim) -> None:
    code, out, _ = await surplus("probe", sim.port, "--baudrate", "9600", "--timeout-ms", "150")
    assert code == 2
    assert "9600 baud 8N2" in out and "try --scan-baudrate" in out
    for word in HINT_WORDS:
        assert word in out, word
    sim.assert_untouched(read=False)  # at 9600 baud the box hears only noise

    code, out, err = await surplus(
        "probe", sim.port, "--baudrate", "9600", "--scan-baudrate", "--timeout-ms", "150"
    )
    assert code == 0, out + err
    assert "device id 50, 57600 baud 8N2" in out
    assert err.index("9600 baud") < err.index("57600 baud")  # the asked-for rate first
    sim.assert_untouched()


async def test_probe_on_the_wrong_id_suggests_scan_and_scan_finds_it(tmp_path: Path) -> None:
    sim = await start_sim(tmp_path, {12: PROFILE_11KW, 13: PROFILE_22KW})
    try:
        code, out, _ = await surplus("probe", sim.port, "--timeout-ms", "150")
        assert code == 2
        assert "nothing answered on 50" in out and "try --scan" in out
        code, out, err = await surplus("probe", sim.port, "--scan", "--ids", "10-13", "--json")
    finally:
        await sim.server.stop()
    assert code == 0, err
    report = json.loads(out)
    assert [b["device_id"] for b in report["boxes"]] == [12, 13]
    assert [b["max_current_evse_a"] for b in report["boxes"]] == [16.0, 32.0]
    assert report["tried"]["device_ids"] == [10, 11, 12, 13]
    assert "asking device ids 10-13 (0.3 s each" in err
    sim.assert_untouched()


async def test_probe_finds_a_surplus_sim_process_on_its_id_and_baud_rate(tmp_path: Path) -> None:
    link = tmp_path / "amtron"
    proc = await asyncio.create_subprocess_exec(
        *SURPLUS, "sim", "--pty", str(link), "--device-id", "21", "--baudrate", "19200",
        "--fallback-current", "1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert "device id 21" in line, line
        code, out, err = await surplus(
            "probe", str(link), "--scan", "--ids", "20-21", "--scan-baudrate", "--baudrate", "28800",
            "--timeout-ms", "100",
        )  # fmt: skip
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
    assert code == 0, out + err
    assert f"AMTRON found on {link}: device id 21, 19200 baud 8N2" in out
    assert "1 = pause charging" in out and "WARNING" not in out
    assert err.index("28800 baud") < err.index("57600 baud") < err.index("19200 baud")


async def test_probe_on_a_missing_port_says_so() -> None:
    code, out, _ = await surplus("probe", "/nonexistent/ttyUSB9")
    assert code == probe_report.EXIT_PORT == 3
    assert "/nonexistent/ttyUSB9: cannot open" in out and "dialout" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--ids", "10-12"], "--ids only goes with --scan"),
        (["--scan", "--ids", "12-10"], "ranges low-high"),
        (["--baudrate", "115200"], "baud rate must be one of"),
        (["--device-id", "0"], "device id must be 1..247"),
    ],
)
def test_probe_refuses_bad_options(args: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = cli.main(["probe", "/nonexistent/ttyUSB9", *args])
    except SystemExit as exc:  # argparse's own refusals
        code = int(str(exc.code))
    assert code == 2
    assert needle in capsys.readouterr().err


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    probe.add_discovery_options(parser)
    return parser.parse_args(argv)


def test_scan_order_covers_the_documented_ids_and_rates() -> None:
    ids = probe.discovery_kwargs(_parse("--scan"))["device_ids"]
    assert ids[0] == 50 and sorted(ids) == list(range(10, 51))
    assert probe.discovery_kwargs(_parse())["device_ids"] == (50,)
    assert probe.parse_ids("10-12, 50,11") == (10, 11, 12, 50)
    with pytest.raises(ValueError, match=r"1\.\.247"):
        probe.parse_ids("0-3")
    with pytest.raises(ValueError, match="expected ids"):
        probe.parse_ids("ten")
    rates = probe.discovery_kwargs(_parse("--scan-baudrate", "--baudrate", "9600"))["baudrates"]
    assert rates == (9600, 57600, 56000, 38400, 28800, 19200, 14400)


# --- init -----------------------------------------------------------------------------------------


async def test_init_writes_a_config_check_config_accepts_and_never_overwrites(tmp_path: Path) -> None:
    profile = dataclasses.replace(PROFILE_22KW, max_current_evse_a=13.0)
    sim = await start_sim(tmp_path, {23: profile})
    out_file = tmp_path / "surplus.yaml"
    try:
        code, out, err = await surplus(
            "init", "--port", sim.port, "--scan", "--ids", "22-23", "-o", str(out_file)
        )
        assert code == 0, out + err
        assert f"Wrote {out_file}" in out
        text = out_file.read_text()
        assert "device_id: 23" in text and "fuse_limit_a: 13" in text
        assert "# Found on" in text and profile.serial_number in text

        code, out, _ = await surplus("check-config", str(out_file))
        assert code == 0 and "ok (1 charger, 0 meters)" in out
        config = load_config(str(out_file), {})
        (charger,) = config.chargers
        assert (config.bus.port, config.bus.baudrate, config.bus.parity) == (sim.port, 57600, "none")
        assert (charger.device_id, charger.mode, charger.limits.fuse_limit_a) == (23, "fixed", 13.0)
        assert charger.strategies["fixed"]["current_a"] == 10
        assert charger.strategies["pv"]["phases"] == 3  # the 22 kW box cannot switch phases

        # An existing file is left alone without --force; nothing is even probed.
        out_file.write_text("mine\n")
        reads = sim.models[23].record.reads
        code, _, err = await surplus("init", "--port", sim.port, "-o", str(out_file))
        assert code == init_cli.EXIT_FILE == 1
        assert "exists" in err and "--force" in err
        assert out_file.read_text() == "mine\n"
        assert sim.models[23].record.reads == reads

        code, _, _ = await surplus(
            "init", "--port", sim.port, "--device-id", "23", "-o", str(out_file), "--force"
        )
        assert code == 0
        assert load_config(str(out_file), {}).chargers[0].device_id == 23
    finally:
        await sim.server.stop()
    sim.assert_untouched()


async def test_init_without_a_box_writes_nothing(tmp_path: Path) -> None:
    link = PtyLink(str(tmp_path / "amtron"))
    link.open()
    out_file = tmp_path / "surplus.yaml"
    try:
        code, _, err = await surplus("init", "--port", link.path, "-o", str(out_file), "--timeout-ms", "100")
    finally:
        link.close()
    assert code == 2
    assert "No AMTRON answered" in err and "A/B swapped" in err
    assert not out_file.exists()


def _box(**changes: object) -> probe_report.BoxReport:
    box = probe_report.BoxReport(
        device_id=50,
        baudrate=57600,
        frame="8N2",
        layout_version=0x0103,
        layout="1.0.3",
        max_current_evse_a=16.0,
        phase_options_hw=2,
        phase_switching=True,
        grid_phases=3,
    )
    return dataclasses.replace(box, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "phases", "fuse"),
    [
        ({}, "auto", 16),
        ({"phase_options_hw": 1, "phase_switching": False}, 3, 16),
        ({"phase_options_hw": 0, "phase_switching": False, "max_current_evse_a": 32.0}, 1, 32),
        ({"max_current_evse_a": None}, "auto", 16),
    ],
)
def test_init_template_has_the_shape_of_config_amtron_yaml(
    tmp_path: Path, changes: dict[str, object], phases: object, fuse: int
) -> None:
    port = "/dev/serial/by-id/usb-FTDI RS485 adapter-if00"  # a space: must be quoted
    result = probe_report.ProbeResult(port=port, frame="8N2", device_ids=(50,))
    text = init_cli.render(result, _box(**changes), config_path="surplus.yaml")
    path = tmp_path / "surplus.yaml"
    path.write_text(text)
    ours = yaml.safe_load(text)
    shipped = yaml.safe_load((ROOT / "config" / "amtron.yaml").read_text())
    assert ours.keys() == shipped.keys()
    assert ours["chargers"][0].keys() == shipped["chargers"][0].keys()
    assert ours["chargers"][0]["strategies"].keys() == shipped["chargers"][0]["strategies"].keys()
    assert ours["meters"] == []
    config = load_config(str(path), {})
    assert config.bus.port == port
    assert config.chargers[0].strategies["pv"]["phases"] == phases
    assert config.chargers[0].limits.fuse_limit_a == fuse
