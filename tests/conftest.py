"""Suite-wide guard: never test stale compiled code.

The request path's modules are compiled with mypyc in place (setup.py); Python imports such
a module's ``.so`` before its ``.py``, so after an edit without a rebuild the suite would
test the old code and pass. ``make test`` rebuilds first; this stops anything else.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def stale_compiled_modules(root: Path = ROOT) -> list[str]:
    """Sources newer than the compiled module next to them."""
    # A module's .so is a shim; the code of them all is in the one shared library.
    shared = max(
        (p.stat().st_mtime for p in root.glob("kvstore_compiled__mypyc.*.so")), default=0.0
    )
    stale = []
    for pkg in ("kvstore", "storage"):
        for so in (root / pkg).rglob("*.so"):
            src = so.with_name(so.name.split(".", 1)[0] + ".py")
            if src.exists() and src.stat().st_mtime > max(so.stat().st_mtime, shared):
                stale.append(str(src.relative_to(root)))
    return sorted(stale)


def pytest_sessionstart(session: pytest.Session) -> None:
    stale = stale_compiled_modules()
    if stale:
        raise pytest.UsageError(
            f"compiled modules older than their sources: {', '.join(stale)}; "
            "rebuild them (make setup, or .venv/bin/python setup.py build_ext --inplace) "
            "or remove them (KVSTORE_PURE=1 .venv/bin/python setup.py build_ext --inplace)"
        )
