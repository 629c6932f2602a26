"""`kv cluster watch` stops on the first Ctrl-C even when it lands inside a look whose
coroutine does not let the cancellation through (Python 3.11's wait_for returns the result of
a connect that finished as it was cancelled: asyncio.run then returns normally, and the watch
went on refreshing)."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from typing import Any

import pytest
from click.testing import CliRunner

import cli.cluster_cmds as cluster_cmds
from cli.main import cli


def snapshot() -> dict[str, Any]:
    members = [{"name": "n1", "addr": "127.0.0.1:1", "up": True, "state": "alive", "incarnation": 1,
                "partitions": 8, "next_partitions": None}]  # fmt: skip
    first = {"node": "n1", "ring_version": 1, "n": 1, "r": 1, "w": 1, "pending": False, "members": members}
    return {"first": first, "nodes": {"n1": {"keys": 0, "hints": {}}}, "transfers": {}}


def test_one_sigint_inside_a_look_that_swallows_the_cancellation_stops_the_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    looks = 0

    async def look(_addrs: list[str], _timeout: float) -> dict[str, Any]:
        nonlocal looks
        looks += 1
        if looks == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while this look waits
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            pass  # what 3.11's wait_for does when the awaited connect is already done
        return snapshot()

    monkeypatch.setattr(cluster_cmds, "_gather", look)
    before = signal.getsignal(signal.SIGINT)
    result = CliRunner().invoke(cli, ["cluster", "watch", "--count", "5", "--interval", "0.1", "--node", "127.0.0.1:1"])
    assert result.exit_code == 0, result.output
    assert looks == 1, f"the watch went on for {looks} looks after Ctrl-C"
    assert signal.getsignal(signal.SIGINT) is before  # the watch's handler is gone with it


def test_a_sigint_inside_one_of_the_looks_tasks_leaves_no_traceback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The look asks every member at once, each in a task of its own. A Ctrl-C that lands
    while one of them runs raises KeyboardInterrupt in it: that task keeps the exception, and
    when it is collected asyncio logs "Task exception was never retrieved" with a traceback
    (CI saw it on the watch's stderr after a clean stop)."""

    async def look(_addrs: list[str], _timeout: float) -> dict[str, Any]:
        async def ask(i: int) -> int:
            await asyncio.sleep(0)
            if i == 0:
                os.kill(os.getpid(), signal.SIGINT)  # the handler runs inside this task's step
                for _ in range(10_000):
                    pass
            return i

        await asyncio.gather(*(ask(i) for i in range(3)))
        return snapshot()

    monkeypatch.setattr(cluster_cmds, "_gather", look)
    with caplog.at_level("WARNING", logger="asyncio"):
        result = CliRunner().invoke(cli, ["cluster", "watch", "--count", "5", "--interval", "0.1", "--node", "127.0.0.1:1"])
        gc.collect()  # the task that kept the KeyboardInterrupt logs when it is collected
    assert result.exit_code == 0, result.output
    assert not [r for r in caplog.records if r.name == "asyncio"], [r.getMessage() for r in caplog.records]
