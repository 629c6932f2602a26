"""kvstore/core is sans-I/O: no module under it may import the I/O or clock libraries.

Two checks: each file's own import statements (a direct import is caught where it is
written), and each module imported alone in a fresh interpreter (an import that pulls the
I/O stack in through another module, as kvstore.errors once did through storage/, is
caught by what ends up in sys.modules).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "kvstore" / "core"
FORBIDDEN = {"asyncio", "socket", "time", "os", "subprocess", "plyvel", "uvloop"}
IMPORTERS = {"__import__", "import_module"}
# What a fresh interpreter must not have loaded after importing one core module. time and os
# are left out: the interpreter itself loads them at startup.
FORBIDDEN_LOADED = ("asyncio", "socket", "plyvel", "uvloop", "storage", "kvstore.runtime")


def violations(source: str, filename: str = "<string>") -> list[str]:
    """Forbidden imports in ``source``, as "line: module" strings."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call):
            # __import__("os") and importlib.import_module("os") are imports too.
            fn = node.func
            called = fn.id if isinstance(fn, ast.Name) else getattr(fn, "attr", None)
            first = node.args[0] if node.args else None
            if (
                called in IMPORTERS
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                names = [first.value]
        for name in names:
            if name.split(".")[0] in FORBIDDEN:
                found.append(f"{getattr(node, 'lineno', 0)}: {name}")
    return found


def core_modules() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def loaded_by(module: str) -> list[str]:
    """Modules a fresh interpreter holds after ``import module`` alone."""
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    names: list[str] = json.loads(out.stdout)
    return names


def heavy(names: list[str]) -> list[str]:
    return [n for n in names if any(n == f or n.startswith(f + ".") for f in FORBIDDEN_LOADED)]


def test_core_modules_are_found() -> None:
    names = {p.relative_to(CORE).as_posix() for p in core_modules()}
    assert {"ring.py", "vclock.py", "merkle.py"} <= names


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: p.relative_to(CORE).as_posix())
def test_core_module_is_sans_io(path: Path) -> None:
    bad = violations(path.read_text(encoding="utf-8"), str(path))
    assert not bad, f"{path.relative_to(CORE.parent.parent)} imports I/O: {bad}"


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: p.relative_to(CORE).as_posix())
def test_core_module_loads_no_io_in_a_fresh_interpreter(path: Path) -> None:
    module = module_name(path)
    bad = heavy(loaded_by(module))
    assert not bad, f"import {module} loads {bad}"


@pytest.mark.parametrize("module", ["kvstore", "kvstore.errors", "kvstore.core"])
def test_package_entry_points_stay_light(module: str) -> None:
    assert not heavy(loaded_by(module)), module


def test_fresh_interpreter_check_sees_an_indirect_import() -> None:
    # kvstore.client reaches asyncio only through kvstore.runtime.rpc: the check must see it.
    assert heavy(loaded_by("kvstore.client"))


@pytest.mark.parametrize(
    "src",
    [
        "import os",
        "import os.path",
        "import time as t",
        "import json, socket",
        "from asyncio import sleep",
        "from os.path import join",
        "from subprocess import run as r",
        "def f():\n    import plyvel",
        "try:\n    import uvloop\nexcept ImportError:\n    pass",
        "__import__('os')",
        "import importlib\nimportlib.import_module('time')",
    ],
)
def test_checker_catches(src: str) -> None:
    assert violations(src)


@pytest.mark.parametrize(
    "src",
    [
        "import random",
        "import ostree",
        "from timeit import timeit",
        "from . import time",
        "from .os import x",
        "import kvstore.core.time_utils",
        "x = 'import os'",
    ],
)
def test_checker_allows(src: str) -> None:
    assert violations(src) == []
