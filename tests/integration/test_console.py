"""The web console end to end in headless Chromium (Debian ``chromium`` + ``chromium-driver``,
driven by Selenium): the page loads with no external asset, shows a running task the test
started (a slow dfget with --locallimit) and updates. The screenshot goes to a temp dir, or to
$DAMSELFLY_CONSOLE_SCREENSHOT when set (how docs/img/console.png is made): a test run never
writes into the source tree.
The JSON summary it polls is checked without a browser too."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from damselfly.core.pieces import MiB
from tests.integration.test_swarm import SUCCESS_RE, Peer
from tests.procs import Procs, http_get, start_origin, start_supernode, wait_until

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")
SCREENSHOT = os.environ.get("DAMSELFLY_CONSOLE_SCREENSHOT", "")


def test_console_summary_and_assets(procs: Procs, tmp_path: Path, random_file) -> None:  # type: ignore[no-untyped-def]
    random_file(tmp_path / "www", "c.bin", 2 * MiB)
    origin = start_origin(procs, tmp_path / "www")
    sn = start_supernode(procs, tmp_path / "sn")
    peer = Peer(procs, tmp_path, "p")
    code, out = peer.finish(peer.start(origin.url("c.bin") + "?sig=SECRET", sn.addr))
    assert code == 0, out
    # the engine sends its last piece report just after placing the output: wait for it
    d: dict[str, Any] = wait_until(
        lambda: (
            (c := sn.api("/api/v1/console"))["tasks"] and c["tasks"][0]["peers_done"] == 1 and c
        ),
        timeout=10,
        what="the console to show the download done",
    )
    assert d["tasks_total"] == 1 and d["peers_total"] == 1
    (task,) = d["tasks"]
    assert task["peers_done"] == 1 and task["progress"] == 1.0 and task["cdn_complete"]
    assert "SECRET" not in str(d)
    assert d["bytes_delivered"] == 2 * MiB
    status, page = http_get(f"http://{sn.addr}/console")
    assert status == 200 and b"console.js" in page
    for name in ("console.js", "console.css"):
        assert http_get(f"http://{sn.addr}/console/{name}")[0] == 200
    assert http_get(f"http://{sn.addr}/console/..%2Fapp.py")[0] == 404
    for body in (page, http_get(f"http://{sn.addr}/console/console.js")[1]):
        assert b"https://" not in body and b"http://" not in body  # nothing external


@pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="needs headless Chromium: apt-get install chromium chromium-driver",
)
def test_console_in_headless_chromium(procs: Procs, tmp_path: Path, random_file) -> None:  # type: ignore[no-untyped-def]
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs pip install selenium")
    from selenium.webdriver.chrome.service import Service

    size = 12 * MiB
    random_file(tmp_path / "www", "slow.bin", size)
    origin = start_origin(procs, tmp_path / "www")
    sn = start_supernode(procs, tmp_path / "sn")
    peer = Peer(procs, tmp_path, "slowpeer")
    run = peer.start(origin.url("slow.bin"), sn.addr, "--locallimit", "2M")

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1366,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        opts.add_argument(flag)
    service = Service(executable_path=DRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=opts)
    try:
        driver.get(f"http://{sn.addr}/console")
        assert "Damselfly" in driver.title

        def task_row() -> str:
            # read the table's text in one script call: the page re-renders the rows on every
            # update, so element handles found earlier can go stale between two calls
            text = str(
                driver.execute_script(
                    "const b = document.querySelector('#tasks tbody');"
                    "return b ? b.innerText.replace(/\\s+/g, ' ') : '';"
                )
            )
            return text if "slow.bin" in text else ""

        first = wait_until(task_row, timeout=30, what="the running task in the console")
        updates = int(driver.find_element("id", "status").get_attribute("data-updates") or 0)
        # the page keeps polling: the update counter grows and the progress moves
        wait_until(
            lambda: (
                int(driver.find_element("id", "status").get_attribute("data-updates") or 0)
                >= updates + 2
            ),
            timeout=30,
            what="the console to update",
        )
        wait_until(lambda: task_row() != first, timeout=30, what="the task row to change")
        assert "0 / 1" in task_row()  # running, not done yet
        assert "live" in driver.find_element("id", "status").text
        shot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "console.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 0
        code, out = peer.finish(run)
        assert code == 0 and SUCCESS_RE.search(out), out
        wait_until(lambda: "1 / 1" in task_row(), timeout=30, what="the task to show done")
    finally:
        driver.quit()
