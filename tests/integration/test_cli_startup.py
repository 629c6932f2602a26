"""What a `kv get` loads (issue 15: start-up at most 100 ms, measured by
benchmarks/bench_cli_startup.py, not here), and click's shell completion."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def loaded_by(*args: str) -> set[str]:
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "cli", *args], capture_output=True,
                       text=True, timeout=120, cwd=REPO)
    return {line.rsplit("|", 1)[1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}


def test_get_and_put_load_no_asyncio_rich_or_other_commands() -> None:
    for args in (["get", "a"], ["put", "a", "1"], ["delete", "a"]):
        mods = loaded_by("--node", "127.0.0.1:1", *args)
        assert "cli.main" in mods and "kvstore.oneshot" in mods
        heavy = {m for m in mods if m.split(".")[0] in ("asyncio", "rich", "uvloop", "plyvel", "storage", "ssl")}
        heavy |= {m for m in mods if m in ("cli.cluster_cmds", "cli.bench_cmds", "cli.node_cmds", "cli.datatype_cmds",
                                           "kvstore.config", "kvstore.client", "kvstore.core.crdt", "hashlib")}
        assert not heavy, f"kv {' '.join(args)} loads {sorted(heavy)}"


def test_shell_completion_completes_commands_and_options() -> None:
    def complete(words: str, cword: int) -> str:
        env = {**os.environ, "COMP_WORDS": words, "COMP_CWORD": str(cword), "_KV_COMPLETE": "bash_complete"}
        return subprocess.run([sys.executable, "-m", "cli"], capture_output=True, text=True, timeout=60,
                              cwd=REPO, env=env).stdout

    assert "cluster" in complete("kv clu", 1)
    assert "--prefix" in complete("kv keys --pre", 2)
    assert "watch" in complete("kv cluster wa", 2)
