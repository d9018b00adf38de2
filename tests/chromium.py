"""The one headless Chromium setup of the tests (selenium + Debian's chromium/chromium-driver): start
it, open a page, list the requests it made, measure where elements lie.

    from chromium import CHROMIUM, open_page, start_chromium   (tests/ on sys.path)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SKIP_REASON = ("headless browser test needs /usr/bin/chromium (apt-get install chromium chromium-driver; "
               ".ci/run does this)")


def start_chromium(profile: Path, width: int = 1300, height: int = 2400):
    """A headless Chromium driven by selenium, with a window of width x height CSS pixels and the
    DevTools performance log on (every request the page makes). Skips without selenium."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs the 'browser' extra (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--hide-scrollbars", f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    # The performance log carries the DevTools Network.* events: every request the page made.
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(str(DRIVER)))


def requested_urls(drv) -> list[str]:
    """Every URL requested since the log was last read."""
    urls = []
    for entry in drv.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def open_page(drv, path: Path) -> list[str]:
    """Load a local page; returns the URLs it requested."""
    drv.get_log("performance")  # drop events of earlier pages
    drv.get(path.resolve().as_uri())
    drv.execute_script("return document.readyState")
    return requested_urls(drv)


def set_viewport(drv, width: int, height: int) -> None:
    """Make the page's viewport exactly width x height CSS pixels (the window's frame not counted)."""
    drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})


def viewport_box(drv, selector: str) -> dict:
    """The element's box in CSS pixels relative to the viewport at the top of the page (top, bottom,
    left, right), with the viewport's innerWidth / innerHeight and whether it is rendered at all."""
    return drv.execute_script(
        "window.scrollTo(0, 0); const el = document.querySelector(arguments[0]); if (!el) return null;"
        "const r = el.getBoundingClientRect(); return {top: r.top, bottom: r.bottom, left: r.left, right: r.right,"
        "width: r.width, height: r.height, vw: window.innerWidth, vh: window.innerHeight,"
        "rendered: el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden'};", selector)
