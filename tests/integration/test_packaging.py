"""A built wheel, installed (not editable) into a fresh venv, gives working ``kv``,
``jepsen-lite`` and ``python -m kvstore``, and building it warns of nothing deprecated.

The fresh venv gets no downloads: the wheel goes in with ``--no-deps`` and the venv sees the
project venv's site-packages (through a .pth line, which adds the folder without running
the editable install's own .pth files) for msgpack, click and the rest.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_wheel_installs_working_commands(tmp_path: Path) -> None:
    built = run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-w", str(tmp_path / "dist")], tmp_path)
    assert built.returncode == 0, built.stdout + built.stderr
    noise = [
        line for line in (built.stdout + built.stderr).splitlines()
        if "deprecat" in line.lower() or "BuildBackendWarning" in line
    ]
    assert not noise, "\n".join(noise)
    wheels = list((tmp_path / "dist").glob("kvstore-*.whl"))
    assert len(wheels) == 1

    venv = tmp_path / "venv"
    made = run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    assert made.returncode == 0, made.stderr
    py = venv / "bin" / "python"
    inst = run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", str(wheels[0])], tmp_path)
    assert inst.returncode == 0, inst.stdout + inst.stderr
    purelib = run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip()
    ours = [p for p in site.getsitepackages() if p.startswith(sys.prefix)] or [sysconfig.get_paths()["purelib"]]
    (Path(purelib) / "zz_project_deps.pth").write_text("\n".join(ours) + "\n")

    where = run([str(py), "-c", "import kvstore, cli, storage, jepsen_lite; print(kvstore.__file__)"], tmp_path)
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(venv)), f"kvstore came from {where.stdout.strip()}, not the wheel"

    for cmd, expect in (
        ([str(venv / "bin" / "kv"), "--help"], "kvstore"),
        ([str(venv / "bin" / "kv"), "keys", "--help"], "--prefix"),
        ([str(venv / "bin" / "jepsen-lite"), "--help"], "usage"),
        ([str(py), "-m", "kvstore", "--help"], "--listen"),
    ):
        p = run(cmd, tmp_path, timeout=120)
        assert p.returncode == 0, f"{cmd}: {p.stdout}{p.stderr}"
        assert expect.lower() in (p.stdout + p.stderr).lower(), f"{cmd}: {p.stdout}"
