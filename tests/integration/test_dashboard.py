"""The dashboard in a real headless browser: Debian's chromium driven by Playwright (its own
browser download cannot be fetched here, so the test points it at the system binary).

A 3-node cluster; the page served by n1 shows the ring and the members, keeps updating, and
shows a killed member as dead. A screenshot goes to the test's tmp dir (and, when
KV_DASHBOARD_SCREENSHOT names a path, there too, for a report)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from kvstore.client import Client
from kvstore.errors import KVError
from kvstore.testing.processes import LocalCluster, give_http_ports, http_get

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run does)"),
]


def _load(addrs: list[str], stop: threading.Event) -> None:
    """Writes for the page's live figures (and hints once n3 is down): bounded in count and time."""
    deadline = time.monotonic() + 120
    with Client(addrs, timeout_s=3.0) as kv:
        for i in range(20_000):
            if stop.is_set() or time.monotonic() > deadline:
                return
            try:
                kv.put(f"load{i % 500}", str(i))
            except KVError:
                time.sleep(0.05)


def test_dashboard_shows_a_killed_node_dead(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (dev dependency)")
    with LocalCluster(tmp_path, nodes=3) as c:
        ports = give_http_ports(c)
        c.start_all()
        kv = c.client()
        for i in range(200):
            kv.put(f"k{i}", "v")
        # The JSON the page polls: every member, the ring by owner.
        doc = json.loads(http_get(ports["n1"], "/api/cluster"))
        assert sorted(m["name"] for m in doc["members"]) == ["n1", "n2", "n3"]
        assert set(doc["ring"]["owners"]) == {"n1", "n2", "n3"}
        stop = threading.Event()
        loader = threading.Thread(target=_load, args=(c.addrs("n1", "n2"), stop), daemon=True)
        loader.start()
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 800})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(f"http://127.0.0.1:{ports['n1']}/")
                for n in ("n1", "n2", "n3"):
                    page.wait_for_selector(f'tr[data-member="{n}"][data-state="alive"]', timeout=30_000)
                # The ring is drawn: one arc per partition.
                assert page.locator("#ring path").count() == doc["ring"]["partitions"]
                # It updates itself.
                page.wait_for_function("Number(document.body.dataset.updates || 0) >= 3", timeout=30_000)
                c.kill("n3")
                page.wait_for_selector('tr[data-member="n3"][data-state="dead"]', timeout=60_000)
                assert page.get_attribute('tr[data-member="n3"]', "data-reachable") == "false"
                assert page.locator('#events li[data-kind="member"]', has_text="n3").count() >= 1
                # Live figures of a member under load, and hints kept for the dead one.
                page.wait_for_function(
                    """() => [...document.querySelectorAll('#members tr[data-member="n1"] td')]
                        .some((td, i) => i === 7 && Number(td.textContent) > 0)""",
                    timeout=30_000,
                )
                shot = tmp_path / "dashboard.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
                if os.environ.get("KV_DASHBOARD_SCREENSHOT"):
                    shutil.copy(shot, os.environ["KV_DASHBOARD_SCREENSHOT"])
                assert not errors, errors
            finally:
                browser.close()
                stop.set()
                loader.join(30)
