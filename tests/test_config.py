"""Config loading: one-line errors with key and line, env overrides, the shipped configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from surplus import cli
from surplus.config import ENV_VARS, Config, ConfigError, load_config, to_circuits, to_limits
from surplus.config_cli import load_checked
from surplus.types import PauseKind

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = [ROOT / "config" / "demo.yaml", ROOT / "config" / "amtron.yaml"]


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "surplus.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def check(path: str | None, environ: dict[str, str] | None = None) -> Config:
    return load_checked(path, environ or {}, load_entrypoints=False).config


BAD = [
    # (name, yaml, key, line, fragment)
    (
        "unknown key",
        "bus:\n  port: sim\n  parit: none\n",
        "bus.parit",
        3,
        "unknown key (did you mean 'parity'?)",
    ),
    ("unknown top key", "log: {}\nheartbeet: {}\n", "heartbeet", 2, "did you mean 'heartbeat'?"),
    ("wrong type", "rpc:\n  port: '8080'\n", "rpc.port", 2, "expected a whole number, got '8080'"),
    ("wrong type bool", "heartbeat:\n  enabled: yes\n", "heartbeat.enabled", 2, "expected true or false"),
    ("section not a mapping", "bus: 57600\n", "bus", 1, "expected a mapping"),
    ("empty text", "rpc:\n  token: ''\n", "rpc.token", 2, "must not be empty (use null for none)"),
    (
        "40 A limit",
        "chargers:\n  - id: wb\n    limits:\n      fuse_limit_a: 40\n",
        "chargers[0].limits.fuse_limit_a",
        4,
        "40 A is above the 32 A the AMTRON allows",
    ),
    (
        "5 A cable",
        "chargers:\n  - id: wb\n    limits: {cable_max_a: 5}\n",
        "chargers[0].limits.cable_max_a",
        3,
        "5 A is below the 6 A minimum charging current",
    ),
    ("bad parity", "bus:\n  parity: mark\n", "bus.parity", 2, "'mark' is not one of none, even, odd"),
    ("bad baudrate", "bus: {baudrate: 115200}\n", "bus.baudrate", 1, "115200 is not one of 9600"),
    (
        "duplicate charger ids",
        "chargers:\n  - id: wb\n  - id: wb\n",
        "chargers[1].id",
        3,
        "duplicate id 'wb' (also chargers[0])",
    ),
    (
        "duplicate meter ids",
        "meters:\n  - {id: m, type: simulated}\n  - {id: m, type: simulated}\n",
        "meters[1].id",
        3,
        "duplicate id",
    ),
    ("negative tick", "control:\n  tick_s: -1\n", "control.tick_s", 2, "-1 s must be greater than 0 s"),
    (
        "heartbeat 12 s",
        "heartbeat:\n  interval_s: 12\n",
        "heartbeat.interval_s",
        2,
        "12 s is above the 5 s limit",
    ),
    ("heartbeat 0 s", "heartbeat:\n  interval_s: 0\n", "heartbeat.interval_s", 2, "must be greater than 0 s"),
    (
        "unknown strategy",
        "chargers:\n  - id: wb\n    mode: fixd\n",
        "chargers[0].mode",
        3,
        "unknown strategy 'fixd' (did you mean 'fixed'?)",
    ),
    (
        "unknown strategy options",
        "chargers:\n  - id: wb\n    strategies:\n      pvv: {}\n",
        "chargers[0].strategies.pvv",
        4,
        "unknown strategy",
    ),
    (
        "bad strategy option",
        "chargers:\n  - id: wb\n    strategies:\n      fixed:\n        current_a: 40\n",
        "chargers[0].strategies.fixed.current_a",
        5,
        "40 A is above the maximum 32 A",
    ),
    (
        "unknown meter type",
        "meters:\n  - id: g\n    type: frobnius\n",
        "meters[0].type",
        3,
        "unknown meter type 'frobnius' (did you mean 'fronius'?)",
    ),
    (
        "pv without a meter",
        "chargers:\n  - id: wb\n    mode: pv\n",
        "chargers[0].mode",
        3,
        "pv charges from the PV surplus and needs a grid meter: add one under meters:",
    ),
    (
        "pv with only a circuit's meter",
        "chargers:\n  - {id: wb, mode: pv, circuit: site}\nmeters:\n  - {id: gm, type: simulated, grid: false}\n"
        "circuits:\n  - {id: site, limit_a: 25, meter: gm}\n",
        "chargers[0].mode",
        2,
        "pv charges from the PV surplus and needs a grid meter: add one under meters:",
    ),
    (
        "meter option missing",
        "meters:\n  - id: g\n    type: fronius\n    options:\n      port: 80\n",
        "meters[0].options.host",
        4,  # the line of its parent, options:
        "required: the device's host name or IP address",
    ),
    (
        "bad meter option",
        "meters:\n  - id: g\n    type: simulated\n    options:\n      cloudiness: 2\n",
        "meters[0].options.cloudiness",
        5,
        "2 is above the maximum 1",
    ),
    ("meter without type", "meters:\n  - id: g\n", "meters[0].type", 2, "missing (required)"),
    (
        "pause kind",
        "chargers:\n  - limits: {pause: stop}\n",
        "chargers[0].limits.pause",
        2,
        "not one of release, soft",
    ),
    (
        "soft pause 0 A",
        "chargers:\n  - limits:\n      soft_pause_a: 0\n",
        "chargers[0].limits.soft_pause_a",
        3,
        "0 A is below the minimum 0.01 A",
    ),
    (
        "pause/resume too often",
        "chargers:\n  - limits:\n      pause_resume_interval_min: 1\n",
        "chargers[0].limits.pause_resume_interval_min",
        3,
        "the manufacturer requires",
    ),
    ("no chargers", "chargers: []\n", "chargers", 1, "at least one charger"),
    ("bad id", "chargers:\n  - id: 'my box'\n", "chargers[0].id", 2, "letters, digits"),
    (
        "stale <= tick",
        "control:\n  tick_s: 5\n  stale_after_s: 5\n",
        "control.stale_after_s",
        3,
        "longer than tick_s",
    ),
    (
        "box fallback between pause and charging",
        "control:\n  box_fallback_a: 3\n",
        "control.box_fallback_a",
        2,
        "3 A is neither 1 (pause) nor a charging current of 6-32 A",
    ),
    (
        "box fallback 0",
        "control:\n  box_fallback_a: 0\n",
        "control.box_fallback_a",
        2,
        "0 A is below the minimum 1 A",
    ),
    ("bad tcp port", "bus:\n  port: tcp://gw\n", "bus.port", 2, "is not tcp://host:port"),
    (
        "device not simulated",
        "chargers:\n  - device_id: 7\n",
        "chargers[0].device_id",
        2,
        "device 7 is not simulated",
    ),
    ("duplicate yaml key", "bus:\n  port: sim\n  port: sim\n", "bus.port", 3, "duplicate key"),
    (
        "no connections",
        "rpc:\n  port: 0\n  max_connections: 0\n",
        "rpc.max_connections",
        3,
        "0 is below the minimum 1",
    ),
    (
        "connections as text",
        "rpc:\n  max_connections: many\n",
        "rpc.max_connections",
        2,
        "expected a whole number, got 'many'",
    ),
    (
        "no header time",
        "rpc:\n  header_timeout_s: 0\n",
        "rpc.header_timeout_s",
        2,
        "0 s must be greater than 0 s",
    ),
    (
        "endless body",
        "rpc:\n  read_timeout_s: 301\n",
        "rpc.read_timeout_s",
        2,
        "301 s is above the maximum 300 s",
    ),
    (
        "mqtt wildcard prefix",
        "mqtt:\n  topic_prefix: home/+/ev\n",
        "mqtt.topic_prefix",
        2,
        "must be a plain topic",
    ),
    (
        "mqtt trailing slash",
        "mqtt:\n  discovery_prefix: homeassistant/\n",
        "mqtt.discovery_prefix",
        2,
        "must be a plain topic",
    ),
    (
        "mqtt password alone",
        "mqtt:\n  password: secret\n",
        "mqtt.password",
        2,
        "set username too",
    ),
    (
        "mqtt ca without tls",
        "mqtt:\n  ca_file: ca.pem\n",
        "mqtt.ca_file",
        2,
        "set tls: true too",
    ),
    (
        "mqtt ca file missing",
        "mqtt:\n  tls: true\n  ca_file: /nonexistent/surplus-ca.pem\n",
        "mqtt.ca_file",
        3,
        "no such file",
    ),
    (
        "mqtt back-off upside down",
        "mqtt:\n  reconnect_min_s: 10\n  reconnect_max_s: 5\n",
        "mqtt.reconnect_max_s",
        3,
        "shorter than reconnect_min_s",
    ),
    (
        "mqtt flood",
        "mqtt:\n  interval_s: 0.1\n",
        "mqtt.interval_s",
        2,
        "0.1 s is below the minimum 1 s",
    ),
    (
        "mqtt port",
        "mqtt:\n  port: 0\n",
        "mqtt.port",
        2,
        "0 is below the minimum 1",
    ),
    (
        "charger id taken by mqtt",
        "chargers:\n  - id: meters\nmqtt:\n  host: 127.0.0.1\n",
        "chargers[0].id",
        2,
        "taken by the MQTT topics",
    ),
    (
        "circuit with an unknown parent",
        "circuits:\n  - {id: site, limit_a: 25}\n  - {id: sub, limit_a: 10, parent: sit}\n",
        "circuits[1].parent",
        3,
        "unknown circuit 'sit' (did you mean 'site'?)",
    ),
    (
        "circuits in a loop",
        "circuits:\n  - {id: x, limit_a: 10, parent: y}\n  - {id: y, limit_a: 10, parent: x}\n",
        "circuits[0].parent",
        2,
        "circuits loop: x -> y -> x",
    ),
    (
        "circuit without a limit",
        "circuits:\n  - id: site\n",
        "circuits[0].limit_a",
        2,
        "missing (required)",
    ),
    (
        "circuit limit 0",
        "circuits:\n  - {id: site, limit_a: 0}\n",
        "circuits[0].limit_a",
        2,
        "0 A must be greater than 0 A",
    ),
    (
        "duplicate circuit",
        "circuits:\n  - {id: site, limit_a: 25}\n  - {id: site, limit_a: 35}\n",
        "circuits[1].id",
        3,
        "duplicate id 'site'",
    ),
    (
        "circuit naming an unknown meter",
        "meters:\n  - {id: grid, type: simulated}\ncircuits:\n  - {id: site, limit_a: 25, meter: gird}\n",
        "circuits[0].meter",
        4,
        "unknown meter 'gird' (did you mean 'grid'?); meters: grid",
    ),
    (
        "meter_lost_load_a without a meter",
        "circuits:\n  - {id: site, limit_a: 25, meter_lost_load_a: 5}\n",
        "circuits[0].meter_lost_load_a",
        2,
        "only means something with a meter",
    ),
    (
        "negative meter_lost_load_a",
        "meters:\n  - {id: gm, type: simulated}\ncircuits:\n  - {id: site, limit_a: 25, meter: gm, meter_lost_load_a: -1}\n",
        "circuits[0].meter_lost_load_a",
        4,
        "below the minimum 0 A",
    ),
    (
        "a circuit-only meter no circuit names",
        "meters:\n  - {id: gm, type: simulated, grid: false}\n",
        "meters[0].grid",
        2,
        "no circuit names this meter",
    ),
    (
        "charger naming an unknown circuit",
        "circuits:\n  - {id: site, limit_a: 25}\nchargers:\n  - id: wb\n    circuit: garage\n",
        "chargers[0].circuit",
        5,
        "unknown circuit 'garage'; circuits: site",
    ),
    (
        "charger naming a circuit when there are none",
        "chargers:\n  - id: wb\n    circuit: garage\n",
        "chargers[0].circuit",
        3,
        "circuits: none are configured",
    ),
    (
        "charger without a circuit under two roots",
        "circuits:\n  - {id: a, limit_a: 25}\n  - {id: b, limit_a: 25}\nchargers:\n  - id: wb\n",
        "chargers[0]",
        5,
        "each charger names its own",
    ),
    (
        "phase rotation naming a phase twice",
        "chargers:\n  - id: wb\n    phase_rotation: [L1, L1, L2]\n",
        "chargers[0].phase_rotation",
        3,
        "must name L1, L2 and L3 once each",
    ),
    (
        "phase rotation naming no phase",
        "chargers:\n  - id: wb\n    phase_rotation: [L1, L4, L2]\n",
        "chargers[0].phase_rotation[1]",
        3,
        "'L4' is not one of L1, L2, L3",
    ),
    (
        "negative priority",
        "chargers:\n  - id: wb\n    priority: -1\n",
        "chargers[0].priority",
        3,
        "-1 is below the minimum 0",
    ),
    (
        "bus and buses",
        "bus: {port: sim}\nbuses:\n  - {id: l1, port: sim}\n",
        "buses",
        2,
        "use either bus: (one line) or buses: (several), not both",
    ),
    (
        "charger on an unknown bus",
        "buses:\n  - {id: l1, port: sim}\nchargers:\n  - id: wb\n    bus: l2\n",
        "chargers[0].bus",
        5,
        "unknown bus 'l2'; buses: l1",
    ),
    (
        "charger without a bus on two lines",
        "buses:\n  - {id: l1, port: sim}\n  - {id: l2, port: sim}\nchargers:\n  - id: wb\n",
        "chargers[0]",
        5,
        "each charger names its own",
    ),
    (
        "two chargers on one device id of one line",
        "buses:\n  - {id: l1, port: sim}\nchargers:\n  - {id: a, device_id: 10}\n  - {id: b, device_id: 10}\n",
        "chargers[1].device_id",
        5,
        "device 10 is already chargers[0] on the same line",
    ),
    (
        "a gateway that is not tcp://host:port",
        "buses:\n  - {id: gw, port: 'tcp://gw'}\n",
        "buses[0].port",
        2,
        "is not tcp://host:port",
    ),
    (
        "negative keep-alive",
        "rpc:\n  keepalive_timeout_s: -1\n",
        "rpc.keepalive_timeout_s",
        2,
        "-1 s must be greater than 0 s",
    ),
]


@pytest.mark.parametrize(
    ("yaml_text", "key", "line", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_configs_name_key_and_line(
    tmp_path: Path, yaml_text: str, key: str, line: int, fragment: str
) -> None:
    path = write(tmp_path, yaml_text)
    with pytest.raises(ConfigError) as info:
        check(path)
    err = info.value
    assert str(err).startswith(f"{path}:{line}: {key}: "), str(err)
    assert fragment in str(err)
    assert (err.key, err.line) == (key, line)
    assert "\n" not in str(err)


def test_a_file_that_is_not_a_mapping_says_so_without_an_empty_key(tmp_path: Path) -> None:
    path = write(tmp_path, "- bus\n- chargers\n")
    with pytest.raises(ConfigError) as info:
        check(path)
    assert str(info.value) == f"{path}:1: expected a mapping of sections (bus:, chargers:, ...), got a list"


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bus:\n  port: sim\nchargers: [\n")
    with pytest.raises(ConfigError, match=r":4: not valid YAML"):
        load_config(path, {})


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_config("nope.yaml", {})


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    c = check(write(tmp_path, "# nothing\n"))
    assert c == Config()
    assert c.meters == ()  # only the demo (no file) adds the simulated meter
    assert c.chargers[0].mode == "fixed"


def test_off_is_a_word_not_false(tmp_path: Path) -> None:
    # YAML 1.1 reads `off` as False; our loader keeps it the strategy name.
    c = check(write(tmp_path, "chargers:\n  - mode: off\n    strategies: {off: {}}\n"))
    assert c.chargers[0].mode == "off"
    assert "off" in c.chargers[0].strategies


def test_defaults_are_the_demo() -> None:
    assert load_config(None, {}) == load_config(str(SHIPPED[0]), {})


def test_config_is_frozen() -> None:
    c = load_config(None, {})
    with pytest.raises(AttributeError):
        c.bus.port = "x"
    with pytest.raises(TypeError):
        c.chargers[0].strategies["fixed"]["current_a"] = 1  # type: ignore[index]


def test_circuits_build_a_tree_and_a_limit_above_the_parents_is_allowed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "circuits:\n"
        "  - {id: site, limit_a: 25}\n"
        "  - {id: garage, limit_a: 32, parent: site}\n"  # above its parent: allowed, the parent binds
        "chargers:\n"
        "  - {id: box10, device_id: 10, circuit: garage, priority: 2, phase_rotation: [L2, L3, L1]}\n"
        "  - {id: box11, device_id: 11}\n"
        "bus: {port: /dev/ttyUSB0}\n",
    )
    config = check(path)
    assert config.chargers[0].priority == 2 and config.chargers[1].priority == 1
    tree = to_circuits(config)
    assert tree is not None
    assert [c.id for c in tree.path("box10")] == ["garage", "site"]
    assert [c.id for c in tree.path("box11")] == ["site"]  # no circuit: under the only root
    assert tree.wiring["box10"].rotation == (1, 2, 0)
    assert to_circuits(check(write(tmp_path, "chargers:\n  - id: wb\n"))) is None


def test_the_same_device_id_on_two_lines_is_two_boxes(tmp_path: Path) -> None:
    config = check(
        write(
            tmp_path,
            "buses:\n  - {id: l1, port: sim}\n  - {id: l2, port: 'tcp://10.0.0.2:502'}\n"
            "chargers:\n  - {id: a, bus: l1, device_id: 10}\n  - {id: b, bus: l2, device_id: 10}\n",
        )
    )
    assert [b.id for b in config.buses] == ["l1", "l2"] and config.buses[1].baudrate == 57600
    assert [c.bus for c in config.chargers] == ["l1", "l2"]


def test_to_limits() -> None:
    c = load_config(None, {})
    limits = to_limits(c.chargers[0], c.control.stale_after_s)
    assert (limits.fuse_limit_a, limits.cable_max_a, limits.min_current_a) == (16.0, 32.0, 6.0)
    assert (limits.pause_resume_interval_s, limits.phase_switch_interval_s) == (300.0, 300.0)
    assert limits.default_pause is PauseKind.RELEASE
    assert limits.stale_after_s == 10.0


ENV_OK = [
    ({"MODBUS_PORT": "/dev/ttyUSB1"}, lambda c: c.bus.port, "/dev/ttyUSB1"),
    ({"MODBUS_BAUDRATE": "19200"}, lambda c: c.bus.baudrate, 19200),
    ({"MODBUS_DATABITS": "8"}, lambda c: c.bus.bytesize, 8),
    ({"MODBUS_STOPBITS": "1"}, lambda c: c.bus.stopbits, 1),
    ({"MODBUS_PARITY": "Even"}, lambda c: c.bus.parity, "even"),
    ({"MODBUS_SLAVE_ID": "50"}, lambda c: c.chargers[0].device_id, 50),
    ({"MODBUS_TIMEOUT": "2500"}, lambda c: c.bus.timeout_ms, 2500),
    ({"MODBUS_RECONNECT_INTERVAL": "10000"}, lambda c: c.bus.reconnect_interval_ms, 10000),
    ({"MODBUS_MAX_RETRIES": "5"}, lambda c: c.bus.retries, 5),
    ({"HEARTBEAT_ENABLED": "false"}, lambda c: c.heartbeat.enabled, False),
    ({"HEARTBEAT_ENABLED": "1"}, lambda c: c.heartbeat.enabled, True),
    ({"RPC_PORT": "9090"}, lambda c: c.rpc.port, 9090),
    ({"RPC_HOST": "0.0.0.0", "RPC_TOKEN": "t"}, lambda c: c.rpc.host, "0.0.0.0"),
    ({"RPC_TOKEN": "s3cret"}, lambda c: c.rpc.token, "s3cret"),
    ({"LOG_LEVEL": "DEBUG"}, lambda c: c.log.level, "debug"),
    ({"LOG_FILE": "logs/surplus.log"}, lambda c: c.log.file, "logs/surplus.log"),
    ({"RPC_PORT": ""}, lambda c: c.rpc.port, 8080),  # empty = unset
]


@pytest.mark.parametrize(("environ", "get", "want"), ENV_OK, ids=[next(iter(e[0])) for e in ENV_OK])
def test_env_overrides_the_file(environ: dict[str, str], get: object, want: object) -> None:
    assert get(check(str(SHIPPED[1]), environ)) == want  # type: ignore[operator]


ENV_BAD = [
    ("MODBUS_BAUDRATE", "fast", "bus.baudrate", "not a whole number"),
    ("MODBUS_BAUDRATE", "115200", "bus.baudrate", "not one of"),
    ("MODBUS_PARITY", "mark", "bus.parity", "not one of none, even, odd"),
    ("MODBUS_STOPBITS", "3", "bus.stopbits", "not one of 1, 2"),
    ("MODBUS_SLAVE_ID", "0", "chargers[0].device_id", "below the minimum 1"),
    ("MODBUS_SLAVE_ID", "x", "chargers[0].device_id", "not a whole number"),
    ("MODBUS_TIMEOUT", "-5", "bus.timeout_ms", "below the minimum"),
    ("MODBUS_TIMEOUT", "6000", "bus.timeout_ms", "above the maximum 3000 ms"),
    ("HEARTBEAT_ENABLED", "maybe", "heartbeat.enabled", "not true or false"),
    ("RPC_PORT", "99999", "rpc.port", "above the maximum 65535"),
    ("LOG_LEVEL", "loud", "log.level", "not one of"),
    ("RPC_HOST", "0.0.0.0", "rpc.host", "set rpc.token (or RPC_TOKEN)"),
    ("RPC_TOKEN", " ", "rpc.token", "must not be empty (unset the variable)"),
]


@pytest.mark.parametrize(
    ("variable", "value", "key", "fragment"), ENV_BAD, ids=[f"{e[0]}={e[1]}" for e in ENV_BAD]
)
def test_bad_env_values_name_the_variable(variable: str, value: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        check(str(SHIPPED[0]), {variable: value})
    assert str(info.value).startswith(f"environment {variable}: {key}: ")
    assert fragment in str(info.value)
    assert info.value.source == variable


def test_env_slave_id_is_checked_against_the_simulator() -> None:
    with pytest.raises(ConfigError) as info:
        check(None, {"MODBUS_SLAVE_ID": "7"})
    assert str(info.value) == (
        "environment MODBUS_SLAVE_ID: chargers[0].device_id: device 7 is not simulated (simulator.device_ids: [50])"
    )


def test_every_env_variable_is_tested() -> None:
    tested = {next(iter(e[0])) for e in ENV_OK}
    assert tested == set(ENV_VARS)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for variable in ENV_VARS:
        monkeypatch.delenv(variable, raising=False)
    return {k: v for k, v in os.environ.items() if k not in ENV_VARS}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_pass_check_config(
    path: Path, clean_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: ok (1 charger, ")


def test_check_config_reports_one_line_and_exits_2(
    tmp_path: Path, clean_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "chargers:\n  - id: wb\n    limits:\n      fuse_limit_a: 40\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli.main(["check-config", path]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (
        captured.err
        == f"{path}:4: chargers[0].limits.fuse_limit_a: 40 A is above the 32 A the AMTRON allows\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # wrote nothing


def test_installed_console_script_checks_shipped_configs(clean_env: dict[str, str]) -> None:
    script = Path(sys.executable).parent / "surplus"
    assert script.exists(), "the surplus console script is missing: `make install` creates it in .venv/bin"
    for path in SHIPPED:
        done = subprocess.run(
            [str(script), "check-config", str(path)],
            env=clean_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"{path}: ok (1 charger, ")
    done = subprocess.run(
        [str(script), "check-config", str(ROOT / "config" / "missing.yaml")],
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "missing.yaml: cannot read" in done.stderr


def test_a_file_that_is_not_utf8_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"bus:\n  port: sim\n\xff\xfe garbage\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {})
    assert str(info.value) == f"{path}:3: not UTF-8 text (byte 17)"


def test_an_unwritable_log_file_is_one_line_at_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOG_FILE", "/proc/no-such-dir/surplus.log")
    assert cli.main(["run", "--duration", "1", "--no-rpc"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "surplus: log.file /proc/no-such-dir/surplus.log: No such file or directory"


SCHEDULE = """\
chargers:
  - id: wb
    mode: schedule
    strategies:
      schedule:
        departure: {departure}
        windows:
          - {{start: 22:00, end: 6:00, current_a: 10}}
"""


def test_unquoted_times_stay_times(tmp_path: Path) -> None:
    # YAML 1.1 reads an unquoted 7:00 as the base-60 number 420; our loader keeps the text.
    from surplus_plugins.schedule_settings import parse_schedule

    c = check(write(tmp_path, SCHEDULE.format(departure="7:00")))
    options = c.chargers[0].strategies["schedule"]
    assert options["departure"] == "7:00"
    assert (options["windows"][0]["start"], options["windows"][0]["end"]) == ("22:00", "6:00")
    s = parse_schedule(options)
    assert s.departure_min == 7 * 60
    assert (s.windows[0].start_min, s.windows[0].end_min) == (22 * 60, 6 * 60)


def test_a_number_as_a_time_names_key_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, SCHEDULE.format(departure="700"))
    with pytest.raises(ConfigError) as info:
        check(path)
    assert str(info.value) == (
        f'{path}:6: chargers[0].strategies.schedule.departure: 700 is not a time; write it as "07:00"'
    )


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("7:00", "7:00"),
        ("1:30:00", "1:30:00"),
        ("-1:30", "-1:30"),
        ("190:20:30.15", "190:20:30.15"),
        ("700", 700),
        ("1_000", 1000),
        ("0x1F", 31),
        ("0700", 700),  # YAML 1.2: a leading zero is decimal, not the 1.1 octal 448
        ("-017", -17),
        ("1.5", 1.5),
        ("-2.5e+3", -2500.0),
    ],
)
def test_no_base_60_numbers(tmp_path: Path, text: str, value: object) -> None:
    path = write(tmp_path, f"chargers:\n  - id: wb\n    strategies:\n      x: {{v: {text}}}\n")
    c = load_config(path, {})
    got = c.chargers[0].strategies["x"]["v"]
    assert got == value and type(got) is type(value)


def test_check_config_says_a_missing_meter_host_is_required(
    tmp_path: Path, clean_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "meters:\n  - id: grid\n    type: fronius\n    options: {port: 80}\n")
    assert cli.main(["check-config", path]) == 2
    err = capsys.readouterr().err
    assert err == f"{path}:4: meters[0].options.host: required: the device's host name or IP address\n"


def test_the_mqtt_section_turns_publishing_on_and_commands_follow_the_broker(tmp_path: Path) -> None:
    assert check(None).mqtt is None  # no section: nothing is published
    on = check(write(tmp_path, "mqtt:\n  host: 127.0.0.1\n")).mqtt
    assert on is not None and on.enabled and on.topic_prefix == "surplus"
    assert on.discovery_prefix == "homeassistant" and on.retain and on.interval_s == 1.0
    assert on.commands_on  # loopback: commands by default
    remote = check(write(tmp_path, "mqtt:\n  host: 192.168.1.10\n")).mqtt
    assert remote is not None and not remote.commands_on  # beyond loopback without a username: off
    user = check(write(tmp_path, "mqtt:\n  host: 192.168.1.10\n  username: ev\n  password: pw\n")).mqtt
    assert user is not None and user.commands_on and "pw" not in repr(user)
    forced = check(write(tmp_path, "mqtt:\n  host: 192.168.1.10\n  commands: true\n")).mqtt
    assert forced is not None and forced.commands_on
    off = check(write(tmp_path, "mqtt:\n  commands: false\n  discovery_prefix: null\n")).mqtt
    assert off is not None and not off.commands_on and off.discovery_prefix is None
    disabled = check(write(tmp_path, "mqtt:\n  enabled: false\n")).mqtt
    assert disabled is not None and not disabled.enabled


def test_a_ca_file_that_holds_no_certificate_fails_at_start(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    path = write(tmp_path, f"mqtt:\n  tls: true\n  ca_file: {junk}\n")
    with pytest.raises(ConfigError) as info:
        check(path)
    assert (info.value.key, info.value.line) == ("mqtt.ca_file", 3)
    assert "is not a readable PEM bundle of CA certificates" in str(info.value), str(info.value)
