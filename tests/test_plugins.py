"""Plugin manager: built-ins, third-party plugins from a real entry point, blocking, loud failures."""

from __future__ import annotations

import json
import re
import sys
import textwrap
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest

from surplus import cli
from surplus.config import ConfigError
from surplus.config_cli import load_checked
from surplus.plugins import (
    DEFAULT_PLUGINS,
    PluginError,
    collect_meters,
    collect_strategies,
    describe_plugins,
    make_plugin_manager,
)

MINIMUM_PLUGIN = """
from surplus.hookspecs import hookimpl
from surplus.types import Decision, Source


class Minimum:
    name = "minimum"

    def decide(self, snapshot, ctx):
        return Decision(charger_id=ctx.charger_id, source=Source.STRATEGY, charge=True, current_a=ctx.min_current_a)


@hookimpl
def surplus_register_strategies(register):
    register("{strategy}", lambda options: Minimum())
"""

MakeDist = Callable[..., str]


@pytest.fixture
def make_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeDist]:
    """Install a tiny distribution (module + *.dist-info with entry_points.txt) on sys.path."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    modules: list[str] = []

    def make(
        module: str,
        source: str,
        *,
        dist: str = "surplus-demo-plugin",
        version: str = "1.2.3",
        entry: str = "demo",
    ) -> str:
        (site / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8"
        )
        (info / "entry_points.txt").write_text(f"[surplus]\n{entry} = {module}\n", encoding="utf-8")
        modules.append(module)
        return entry

    yield make
    for module in modules:
        sys.modules.pop(module, None)


def test_a_fresh_manager_per_call() -> None:
    a = make_plugin_manager(load_entrypoints=False)
    b = make_plugin_manager(load_entrypoints=False)
    assert a is not b
    extra = types.ModuleType("extra_plugin")
    a.register(extra, name="extra")
    assert a.has_plugin("extra") and not b.has_plugin("extra")
    a.unregister(name="surplus_plugins.off")
    assert "off" not in collect_strategies(a)
    assert "off" in collect_strategies(b)


def test_default_plugins_load() -> None:
    pm = make_plugin_manager(load_entrypoints=False)
    infos = describe_plugins(pm)
    assert [i.name for i in infos] == list(DEFAULT_PLUGINS)
    assert {i.source for i in infos} == {"built-in"}
    assert sorted(collect_strategies(pm)) == ["fixed", "minpv", "off", "pv", "schedule"]
    assert sorted(collect_meters(pm)) == ["fronius", "http", "mqtt", "shelly", "simulated", "sunspec"]
    assert {p for i in infos for p in i.provides} == {
        "strategy:fixed",
        "strategy:off",
        "strategy:pv",
        "strategy:minpv",
        "strategy:schedule",
        "meter:simulated",
        "meter:fronius",
        "meter:shelly",
        "meter:http",
        "meter:mqtt",
        "meter:sunspec",
    }


def test_hooks_are_called_with_keywords_and_return_lists() -> None:
    pm = make_plugin_manager(load_entrypoints=False)
    strategies: dict[str, Any] = {}
    results = pm.hook.surplus_register_strategies(
        register=lambda name, factory, **_about: strategies.setdefault(name, factory)
    )
    assert results == []  # implementations return None
    assert sorted(strategies) == ["fixed", "minpv", "off", "pv", "schedule"]
    meters: dict[str, Any] = {}
    assert (
        pm.hook.surplus_register_meters(
            register=lambda name, factory, **_about: meters.setdefault(name, factory)
        )
        == []
    )
    assert sorted(meters) == ["fronius", "http", "mqtt", "shelly", "simulated", "sunspec"]
    with pytest.raises(TypeError):
        pm.hook.surplus_register_meters(lambda *_: None)  # type: ignore[call-arg]  # positional arguments are refused


def test_third_party_entry_point_plugin_shows_up(
    make_dist: MakeDist, capsys: pytest.CaptureFixture[str]
) -> None:
    make_dist("surplus_minimum_plugin", MINIMUM_PLUGIN.format(strategy="minimum"))
    pm = make_plugin_manager()
    infos = {i.name: i for i in describe_plugins(pm)}
    assert infos["demo"].source == "surplus-demo-plugin 1.2.3"
    assert infos["demo"].provides == ("strategy:minimum",)
    assert "minimum" in collect_strategies(pm)
    assert "demo" not in {i.name for i in describe_plugins(make_plugin_manager(load_entrypoints=False))}

    assert cli.main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    demo = next(line for line in lines if line.startswith("demo "))
    assert "surplus-demo-plugin 1.2.3" in demo and "strategy:minimum" in demo
    assert any(line.startswith("surplus_plugins.fixed ") and "built-in" in line for line in lines)

    assert cli.main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {
        "name": "demo",
        "source": "surplus-demo-plugin 1.2.3",
        "provides": ["strategy:minimum"],
        "strategies": {  # said nothing
            "minimum": {"needsMeter": False, "usesMeter": False, "summary": "", "options": {}}
        },
        "meters": {},
    } in rows
    pv = next(r for r in rows if r["name"] == "surplus_plugins.pv")["strategies"]["pv"]
    assert pv["needsMeter"] is True and pv["usesMeter"] is True and pv["options"]["start_delay_s"] == 10.0


def test_third_party_strategy_is_usable_in_a_config(make_dist: MakeDist, tmp_path: Path) -> None:
    make_dist("surplus_minimum_plugin2", MINIMUM_PLUGIN.format(strategy="minimum"))
    path = tmp_path / "c.yaml"
    path.write_text("chargers:\n  - id: wb\n    mode: minimum\n", encoding="utf-8")
    checked = load_checked(str(path), {})
    assert checked.config.chargers[0].mode == "minimum"
    assert "minimum" in checked.strategies
    with pytest.raises(ConfigError, match=r"c.yaml:3: chargers\[0\].mode: unknown strategy 'minimum'"):
        load_checked(str(path), {}, load_entrypoints=False)


def test_duplicate_names_name_both_plugins_and_blocking_resolves(make_dist: MakeDist) -> None:
    make_dist("surplus_fixed_clone", MINIMUM_PLUGIN.format(strategy="fixed"), entry="myfixed")
    with pytest.raises(PluginError) as info:
        collect_strategies(make_plugin_manager())
    assert "'fixed' is registered by both surplus_plugins.fixed and myfixed" in str(info.value)
    pm = make_plugin_manager(blocked=["surplus_plugins.fixed"])
    assert collect_strategies(pm)["fixed"].__module__ == "surplus_fixed_clone"


def test_blocking_a_builtin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pm = make_plugin_manager(load_entrypoints=False, blocked=["surplus_plugins.off"])
    assert "off" not in collect_strategies(pm)
    assert "surplus_plugins.off" not in {i.name for i in describe_plugins(pm)}
    assert pm.is_blocked("surplus_plugins.off")

    path = tmp_path / "c.yaml"
    path.write_text(
        "chargers:\n  - id: wb\n    mode: off\nplugins:\n  blocked: [surplus_plugins.off]\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError) as err:
        load_checked(str(path), {}, load_entrypoints=False)
    assert str(err.value).startswith(f"{path}:3: chargers[0].mode: unknown strategy 'off'")
    assert cli.main(["plugins", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "surplus_plugins.off" in out and "blocked" in out
    assert "strategy:off" not in out


MISSPELLED = {
    "decorated": """
        from surplus.hookspecs import hookimpl

        @hookimpl
        def surplus_register_stratgies(register):
            register("x", lambda options: None)
        """,
    "undecorated": """
        def surplus_register_stratgies(register):
            register("x", lambda options: None)
        """,
}


@pytest.mark.parametrize("style", sorted(MISSPELLED))
def test_a_misspelled_hook_fails_loudly_at_check_pending(style: str) -> None:
    module = types.ModuleType(f"misspelled_{style}")
    exec(textwrap.dedent(MISSPELLED[style]), module.__dict__)
    pm = make_plugin_manager(load_entrypoints=False)
    pm.register(module, name="misspelled")
    with pytest.raises(pluggy.PluginValidationError, match="unknown hook 'surplus_register_stratgies'"):
        pm.check_pending()


def test_a_misspelled_entry_point_plugin_stops_start_up(
    make_dist: MakeDist, capsys: pytest.CaptureFixture[str]
) -> None:
    make_dist("surplus_misspelled_plugin", MISSPELLED["decorated"], entry="typo")
    with pytest.raises(pluggy.PluginValidationError, match="surplus_register_stratgies"):
        make_plugin_manager()
    assert cli.main(["plugins"]) == 2
    assert "unknown hook 'surplus_register_stratgies'" in capsys.readouterr().err


def test_wrong_hook_arguments_fail_at_registration() -> None:
    module = types.ModuleType("wrong_args")
    exec("def surplus_register_meters(reg):\n    pass\n", module.__dict__)
    pm = make_plugin_manager(load_entrypoints=False)
    with pytest.raises(pluggy.PluginValidationError, match="reg"):
        pm.register(module, name="wrong_args")


def test_helpers_named_like_hooks_but_not_functions_are_ignored() -> None:
    module = types.ModuleType("constants")
    module.surplus_version = "1"  # type: ignore[attr-defined]
    pm = make_plugin_manager(load_entrypoints=False)
    pm.register(module, name="constants")
    pm.check_pending()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('register("", lambda options: None)', "invalid name ''"),
        ('register("x", 42)', "non-callable factory"),
    ],
)
def test_bad_registrations_are_refused(body: str, fragment: str) -> None:
    module = types.ModuleType("bad_reg")
    exec(f"def surplus_register_strategies(register):\n    {body}\n", module.__dict__)
    pm = make_plugin_manager(load_entrypoints=False)
    pm.register(module, name="bad_reg")
    with pytest.raises(PluginError, match=f"plugin bad_reg registered .*{fragment}"):
        collect_strategies(pm)


TRICKLE_PACKAGE = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "surplus-trickle"
        version = "0.3"

        [project.entry-points.surplus]
        trickle = "surplus_trickle"

        [tool.setuptools]
        py-modules = ["surplus_trickle"]
        """,
    "surplus_trickle.py": """
        from surplus.hookspecs import hookimpl
        from surplus.options import check_known, number
        from surplus.types import Decision, MeterReading, Source


        class Trickle:
            name = "trickle"

            def __init__(self, amps):
                self.amps = amps

            def decide(self, snapshot, ctx):
                return Decision(
                    charger_id=ctx.charger_id, source=Source.STRATEGY, charge=True,
                    current_a=self.amps, reason=f"trickle {self.amps:g} A",
                )


        def make_trickle(options):
            check_known(options, ("amps",))
            return Trickle(number(options, "amps", 7.0, lo=6, hi=10, unit="A"))


        class Constant:
            def __init__(self, meter_id, grid_w, clock):
                self.meter_id, self.grid_w, self.clock = meter_id, grid_w, clock

            async def start(self):
                pass

            async def read(self):
                return MeterReading(meter_id=self.meter_id, read_at_s=self.clock.now(), grid_power_w=self.grid_w)

            async def stop(self):
                pass


        def make_constant(meter_id, options, env):
            check_known(options, ("grid_w",))
            return Constant(meter_id, number(options, "grid_w", -500.0), env.clock)


        @hookimpl
        def surplus_register_strategies(register):
            register("trickle", make_trickle, summary="a steady trickle", options={"amps": 7.0})


        @hookimpl
        def surplus_register_meters(register):
            register("constant", make_constant, summary="one fixed grid power", options={"grid_w": -500.0})
        """,
}

TRICKLE_CONFIG = """\
bus:
  port: sim
chargers:
  - id: wallbox
    mode: fixed
    strategies:
      fixed: {{current_a: 10}}
      trickle: {{amps: {amps}}}
meters:
  - {{id: grid, type: constant}}
rpc:
  port: {port}
"""


def _install_trickle_and_check(tmp_path: Path, port: int) -> tuple[dict[str, str], Path]:
    """pip-install the package into a directory of its own; list it; check a bad and a good config."""
    import os
    import subprocess

    src = tmp_path / "pkg"
    src.mkdir()
    for name, text in TRICKLE_PACKAGE.items():
        (src / name).write_text(textwrap.dedent(text), encoding="utf-8")
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(src)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    env = {k: v for k, v in env.items() if not k.startswith(("MODBUS_", "RPC_", "HEARTBEAT_", "LOG_"))}

    listed = subprocess.run([*SURPLUS, "plugins"], env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "surplus-trickle 0.3" in listed.stdout and "strategy:trickle, meter:constant" in listed.stdout
    assert "  trickle: a steady trickle\n    options: amps=7\n" in listed.stdout
    assert "  constant: one fixed grid power\n    options: grid_w=-500\n" in listed.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(TRICKLE_CONFIG.format(amps=99, port=port), encoding="utf-8")
    checked = subprocess.run(
        [*SURPLUS, "check-config", str(bad)], env=env, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 2
    assert f"{bad}:8: chargers[0].strategies.trickle.amps: 99 A is above the maximum 10 A" in checked.stderr

    good = tmp_path / "good.yaml"
    good.write_text(TRICKLE_CONFIG.format(amps=8, port=port), encoding="utf-8")
    return env, good


SURPLUS = [sys.executable, "-m", "surplus.cli"]


@pytest.mark.integration
async def test_a_pip_installed_strategy_is_a_mode_everywhere(tmp_path: Path) -> None:
    """Issue 11: a third-party strategy and meter, installed by pip from a real package, are listed,
    validated, and selectable with setMode (whose rpc.discover enum names them)."""
    import asyncio
    import socket

    import aiohttp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env, good = _install_trickle_and_check(tmp_path, port)
    surplus = SURPLUS
    proc = await asyncio.create_subprocess_exec(
        *surplus, "run", "-c", str(good), "--duration", "7", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as session:

            async def call(method: str, **params: Any) -> dict[str, Any]:
                body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
                async with session.post(f"http://127.0.0.1:{port}/", json=body) as resp:
                    reply: dict[str, Any] = await resp.json()
                    return reply

            async with asyncio.timeout(20):
                while True:
                    try:
                        mode = await call("getMode")
                        if mode.get("result", {}).get("success"):
                            break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.2)
            assert mode["result"]["data"]["modes"] == ["off", "fixed", "pv", "minpv", "schedule", "trickle"]
            discover = await call("rpc.discover")
            set_mode = next(m for m in discover["result"]["methods"] if m["name"] == "setMode")
            enum = next(p for p in set_mode["params"] if p["name"] == "mode")["schema"]["enum"]
            assert "trickle" in enum
            assert (await call("setMode", mode="trickle"))["result"]["success"] is True
            wrong = await call("setMode", mode="trickel")
            assert wrong["error"]["code"] == -32602 and "trickle" in json.dumps(wrong["error"])
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode()
    assert "mode fixed -> trickle" in text, text
    assert re.search(r"current 8 A(, release on)? \(trickle 8 A\)", text), text


@pytest.mark.parametrize(
    ("about", "message"),
    [
        (
            "colour='red'",
            "registered strategy 'odd' with unknown colour=; a strategy may say needs_meter=, uses_meter=, summary=",
        ),
        ("needs_meter='yes'", "strategy 'odd': needs_meter must be True or False"),
        ("uses_meter=1", "strategy 'odd': uses_meter must be True or False"),
        ("options=['a']", "strategy 'odd': options must map option names to defaults"),
    ],
)
def test_what_a_strategy_says_about_itself_is_checked(make_dist: MakeDist, about: str, message: str) -> None:
    make_dist(
        "surplus_odd_plugin",
        f"""
        def surplus_register_strategies(register):
            register("odd", lambda options: None, {about})
        """,
    )
    with pytest.raises(PluginError, match=re.escape(message)):
        collect_strategies(make_plugin_manager())
