"""SWIM membership between real node processes: join through one seed, detection of a
killed node, refutation by a paused one."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from kvstore.testing.processes import LocalCluster, wait_until


def _view(c: LocalCluster, observer: str) -> dict[str, dict[str, Any]]:
    st = c.status(observer)
    return {} if st is None else {m["name"]: m for m in st["members"]}


def test_five_nodes_detect_a_kill_and_a_paused_node_refutes(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, nodes=5) as c:
        c.start_all()
        names = list(c.nodes)
        wait_until(
            lambda: all(
                len(v := _view(c, o)) == 5 and all(m["state"] == "alive" for m in v.values()) for o in names
            ),
            60, 0.2, "every node to see five alive members",
        )
        c.kill("n5")
        others = names[:4]
        wait_until(
            lambda: all(_view(c, o).get("n5", {}).get("state") == "dead" for o in others),
            60, 0.2, "every node to mark n5 dead",
        )
        # n5 is dead but still owns its partitions: failure never changes the ring.
        st = c.status("n1")
        assert st is not None and next(m for m in st["members"] if m["name"] == "n5")["partitions"] > 0

        before = _view(c, "n1")["n4"]["incarnation"]
        proc = c.nodes["n4"].proc
        assert proc is not None
        proc.send_signal(signal.SIGSTOP)
        try:
            wait_until(
                lambda: _view(c, "n1").get("n4", {}).get("state") in ("suspect", "dead"), 60, 0.1,
                "n1 to suspect the paused n4",
            )
        finally:
            proc.send_signal(signal.SIGCONT)
        wait_until(
            lambda: all(
                _view(c, o).get("n4", {}).get("state") == "alive"
                and _view(c, o)["n4"]["incarnation"] > before
                for o in ("n1", "n2", "n3")
            ),
            60, 0.2, "n4 to refute and be alive everywhere with a higher incarnation",
        )
