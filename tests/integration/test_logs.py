"""--log-format json and per-module levels on a real node process."""

from __future__ import annotations

import json
from pathlib import Path

from kvstore.testing.processes import LocalCluster


def test_a_node_logs_one_json_object_a_line_with_module_levels(tmp_path: Path) -> None:
    extra = ["--log-format", "json", "--log-module-levels", "kvstore.gossip=WARNING,kvstore.node=DEBUG"]
    with LocalCluster(tmp_path, nodes=1, n=1, r=1, w=1, extra=extra) as c:
        c.start_all()
        c.client().put("a", "1")
        c.stop("n1")
        lines = c.nodes["n1"].log().splitlines()
    docs = [json.loads(x) for x in lines if x.strip()]  # every line is one JSON object
    assert docs
    for d in docs:
        assert {"ts", "level", "node", "logger", "event"} <= set(d), d
        assert d["node"] == "n1"
    loggers = {d["logger"] for d in docs}
    assert "kvstore.node" in loggers
    # kvstore.gossip logs its start at INFO, which its module level hides.
    assert not [d for d in docs if d["logger"] == "kvstore.gossip" and d["level"] == "INFO"]
    assert any("ready on" in d["event"] for d in docs)
