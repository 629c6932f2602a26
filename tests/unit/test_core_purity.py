"""kvstore/core is sans-I/O: no module under it may import the I/O or clock libraries."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "kvstore" / "core"
FORBIDDEN = {"asyncio", "socket", "time", "os", "subprocess", "plyvel", "uvloop"}
IMPORTERS = {"__import__", "import_module"}


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


def test_core_modules_are_found() -> None:
    names = {p.relative_to(CORE).as_posix() for p in core_modules()}
    assert {"ring.py", "vclock.py", "merkle.py"} <= names


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: p.relative_to(CORE).as_posix())
def test_core_module_is_sans_io(path: Path) -> None:
    bad = violations(path.read_text(encoding="utf-8"), str(path))
    assert not bad, f"{path.relative_to(CORE.parent.parent)} imports I/O: {bad}"


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
