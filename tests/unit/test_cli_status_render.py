"""`kv cluster status`'s table: hints pending per target and a progress bar per node while
a ring change hands partitions off."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from cli.cluster_cmds import render_status


def snapshot(transfers: dict[str, Any], hints: dict[str, int]) -> dict[str, Any]:
    members = [
        {"name": n, "addr": f"127.0.0.1:{7000 + i}", "up": True, "state": "alive", "incarnation": 1,
         "partitions": 8, "next_partitions": 6 if transfers else None}
        for i, n in enumerate(("n1", "n2"))
    ]
    first = {"node": "n1", "ring_version": 3, "n": 2, "r": 1, "w": 1, "pending": bool(transfers), "members": members}
    nodes = {"n1": {"keys": 10, "hints": hints}, "n2": None}
    return {"first": first, "nodes": nodes, "transfers": transfers}


def text(snap: dict[str, Any]) -> str:
    c = Console(record=True, width=200, force_terminal=False)
    c.print(render_status(snap))
    return c.export_text()


def test_hints_pending_per_target_and_unreachable_node() -> None:
    out = text(snapshot({}, {"n2": 5, "n3": 1}))
    assert "n2: 5, n3: 1" in out
    assert "alive, unreachable" in out
    assert "ring change" not in out


def test_progress_of_a_running_ring_change() -> None:
    transfers = {
        "n1": {"pending": True, "version": 4, "needed": 10, "done": 3, "keys_moved": 120, "complete": False},
        "n2": {"pending": True, "version": 4, "needed": -1, "done": 0, "keys_moved": 0, "complete": False},
    }
    out = text(snapshot(transfers, {}))
    assert "ring change to v4 running" in out
    assert "3/10 partitions, 120 keys" in out
    assert "starting" in out
    assert "8 -> 6" in out
    assert "██████░░░░░░░░░░░░░░ 3/10" in out  # the bar itself: 3 of 10 is 6 of 20 cells
