"""Packaging and the README's Quick start in a fresh, container-like place, offline.

``.ci/dist`` (``make dist``) builds the wheel and the sdist with the venv's setuptools;
``.ci/venv`` (what ``make`` runs first) creates a new venv in an empty directory and
installs the wheel into it (no index, no dependencies: the venv sees this one's
through a ``.pth`` file), rebuilds a venv left by a failed install or built by another
Python; the installed ``surplus`` prints its example configs, stops at once with what to
do when port 8080 is taken, and runs the simulator for 5 s on a free port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from surplus.example_config import EXAMPLES

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "surplus", "plugins", "config", ".ci")
#: No index for pip, no copy of this checkout on the path, no RPC_PORT from outside.
CLEAN_ENV = {
    **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "RPC_PORT")},
    "PIP_NO_INDEX": "1",
}


def sh(*argv: str | Path, cwd: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env={**CLEAN_ENV, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``.ci/dist`` run in a copy of the sources (so the checkout gets no build/ directory)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, src / name)
    proc = sh("bash", ".ci/dist", sys.executable, cwd=src)
    assert proc.returncode == 0, proc.stderr
    assert not (src / "build").exists()
    return src / "dist"


def test_the_wheel_and_sdist_carry_the_configs_and_the_unit(dist: Path) -> None:
    (wheel,) = dist.glob("surplus-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"surplus/examples/{name}" for name in EXAMPLES} <= names
    assert {"surplus/init_template.yaml", "surplus_plugins/pv.py", "surplus/example_config.py"} <= names
    # Every built-in plugin module (a cut adds new ones, such as http_poll.py) travels in the wheel.
    assert {f"surplus_plugins/{p.name}" for p in (REPO / "plugins").glob("*.py")} <= names
    assert any(n.startswith("surplus/sim/days/") and n.endswith(".csv") for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "surplus = surplus.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    (sdist,) = dist.glob("surplus-*.tar.gz")
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    assert {f"config/{name}" for name in EXAMPLES} <= members and "pyproject.toml" in members


@pytest.fixture
def port_8080_taken() -> Iterator[None]:
    """Port 8080 on loopback is busy: held here, or already by someone else."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", 8080))
            s.listen()
        except OSError:
            pass  # taken already
        yield


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_quick_start_from_the_wheel_in_a_fresh_directory(
    dist: Path, tmp_path: Path, port_8080_taken: None
) -> None:
    (wheel,) = dist.glob("surplus-*.whl")
    app = tmp_path / "app"  # no .venv, no sources, no config/
    app.mkdir()
    venv = app / ".venv"
    python = sys._base_executable  # the interpreter this venv was made from: its packages fit

    def make_venv(install: str) -> subprocess.CompletedProcess[str]:
        return sh(
            "bash", REPO / ".ci" / "venv", cwd=app, VENV=".venv", PYTHON=python, SURPLUS_INSTALL=install
        )

    good = f"--no-index --no-deps --quiet {wheel}"
    # An install that fails leaves no stamp ...
    proc = make_venv("--no-index --no-deps /nonexistent/surplus-0.0.0-py3-none-any.whl")
    assert proc.returncode == 1
    assert proc.stdout.startswith(f"creating .venv with {python} (")
    assert "installing into .venv failed (see above); the next make starts afresh" in proc.stderr
    assert not (venv / ".installed").exists()
    # ... so the next run starts afresh, one line per step.
    proc = make_venv(good)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "rebuilding .venv: the last install did not finish ...",
        "installing surplus and its test tools (about 30 s; a Raspberry Pi takes minutes) ...",
        "ready: .venv",
    ]
    assert proc.stderr == ""
    built_by = (venv / ".installed").read_text()
    assert built_by.endswith(" {}.{}.{}\n".format(*sys.version_info[:3]))
    # Up to date: silent.
    proc = make_venv(good)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    # A .venv built by another Python is rebuilt.
    (venv / ".installed").write_text("/usr/bin/python3.9 3.9.2\n")
    proc = make_venv(good)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(
        f"rebuilding .venv: it was built by /usr/bin/python3.9 3.9.2, not {built_by.strip()} ..."
    )
    assert (venv / ".installed").read_text() == built_by

    # The dependencies: this venv's, seen through a .pth file (pip installed the wheel alone).
    site = Path(
        sh(
            venv / "bin" / "python",
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            cwd=app,
        ).stdout.strip()
    )
    ours = {sysconfig.get_paths()["purelib"], *(p for p in sys.path if p.endswith("site-packages"))}
    (site / "_test_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    surplus = venv / "bin" / "surplus"
    proc = sh(venv / "bin" / "python", "-c", "import surplus; print(surplus.__file__)", cwd=app)
    assert proc.stdout.startswith(str(site)), proc.stdout + proc.stderr

    # The example configs and the unit come with the wheel.
    for name in ("amtron.yaml", "surplus.service"):
        proc = sh(surplus, "example-config", name, cwd=app)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == (REPO / "config" / name).read_text()

    # `make run` with port 8080 taken: one line saying what to do, before anything starts.
    t0 = time.monotonic()
    proc = sh(surplus, "run", "--duration", "5", cwd=app, timeout=30)
    assert proc.returncode == 1 and time.monotonic() - t0 < 4.5
    assert "the JSON-RPC port 8080 on 127.0.0.1 is in use" in proc.stderr and "RPC_PORT" in proc.stderr
    assert "simulator" not in proc.stderr

    # On a free port it runs the simulator for 5 s and answers calls meanwhile.
    port = str(free_port())
    run = subprocess.Popen(
        [surplus, "run", "--duration", "5"],
        cwd=app,
        env={**CLEAN_ENV, "RPC_PORT": port},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 4
        while (ping := sh(surplus, "call", "ping", cwd=app, RPC_PORT=port)).returncode != 0:
            assert time.monotonic() < deadline, ping.stderr
            time.sleep(0.1)
        assert '"message": "pong"' in ping.stdout
        _, err = run.communicate(timeout=30)
    finally:
        run.kill()
        run.wait()
    assert run.returncode == 0, err
    assert "built-in AMTRON simulator" in err and "Traceback" not in err
