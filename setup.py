"""Build hook: the request path's modules compiled with mypyc when this machine can, pure
Python when it cannot.

Everything else about the package is in pyproject.toml, including the list of compiled
modules (``[tool.kvstore] compiled``). Each compiled module is an *optional* extension: on a
machine without a C compiler (or with ``KVSTORE_PURE=1`` set) the build warns and installs
the same modules as plain Python, which behave identically and are only slower.

An editable install (``make setup``) builds the extensions in place, next to their sources;
``python setup.py build_ext --inplace`` rebuilds them after an edit (``make setup`` does it
when a compiled module's source is newer).
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from setuptools import setup

HERE = Path(__file__).resolve().parent
PACKAGES = ("kvstore", "storage")


def compiled_modules() -> list[str]:
    with open(HERE / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["tool"]["kvstore"]["compiled"])


def remove_stale(keep: list[str]) -> None:
    """Delete in-tree compiled modules this build does not make (a module taken off the list,
    or all of them for a pure build): Python would import one before its edited source."""
    stems = {str(Path(m).with_suffix("")) for m in keep}
    # setuptools' build directory too: a wheel built later copies what it finds there, and a
    # module compiled once and taken off the list since would come back with the wheel.
    roots = [HERE, *(HERE / "build").glob("lib.*")]
    for root in roots:
        for pkg in PACKAGES:
            for so in (root / pkg).rglob("*.so"):
                stem = str(so.relative_to(root)).split(".", 1)[0]
                if stem not in stems and (HERE / stem).with_suffix(".py").exists():
                    so.unlink()
                    print(f"kvstore: removed the compiled {so.relative_to(HERE)}", file=sys.stderr)


def extensions() -> list[Any]:
    if os.environ.get("KVSTORE_PURE", "") not in ("", "0"):
        print("kvstore: KVSTORE_PURE is set: installing pure Python", file=sys.stderr)
        remove_stale([])
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as e:  # setup.py run by hand without the build requirements
        print(f"kvstore: mypyc not importable ({e}): installing pure Python", file=sys.stderr)
        return []
    modules = compiled_modules()
    remove_stale(modules)
    # The build environment has none of the runtime dependencies, so their types are Any
    # here: `make typecheck` checks the types (strict); this only has to compile.
    flags = [
        "--ignore-missing-imports", "--no-warn-return-any", "--no-warn-unused-ignores",
        "--allow-subclassing-any", "--allow-untyped-calls", "--allow-untyped-decorators",
    ]  # fmt: skip
    # A fixed name for the shared library of the compiled modules: an editable install maps
    # the top-level names it saw when it was made, so a name that changed with the module list
    # (mypyc's default, a hash of it) would not be found after a rebuild.
    try:
        exts = mypycify(
            [*flags, *modules], opt_level="3", debug_level="0", group_name="kvstore_compiled"
        )
    except (Exception, SystemExit) as e:  # mypy reports what it cannot compile by exiting
        # The package must install anyway; tests/integration/test_build.py fails a build with
        # a compiler that came out pure, so this does not go unnoticed.
        print(f"kvstore: mypyc failed ({e!r}): installing pure Python", file=sys.stderr)
        return []
    for ext in exts:
        # Without a compiler the build warns and goes on: the .py files are installed anyway.
        ext.optional = True
    return list(exts)


setup(ext_modules=extensions())
