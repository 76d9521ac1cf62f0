"""Headless Chromium driven by selenium, for the page tests and bench/web.py.

    with chromium(tmp_path) as driver:
        driver.get(url)

Debian's `chromium` and `chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver), started as the
machine's closed network and running as root need: no sandbox, no GPU, no background traffic, a fresh
profile. When they are missing this raises (the tests fail rather than skip; .ci/run installs them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

CHROMIUM = os.environ.get("MMSEARCH_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MMSEARCH_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-extensions", "--disable-default-apps", "--metrics-recording-only", "--mute-audio",
         "--hide-scrollbars", "--force-device-scale-factor=1")


class BrowserMissing(RuntimeError):
    pass


@contextlib.contextmanager
def chromium(profile_parent: str | os.PathLike | None = None, *, width: int = 1400, height: int = 1000):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        raise BrowserMissing("selenium is not installed: pip install -e '.[test]'") from exc
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise BrowserMissing(f"{path} not found: apt-get install -y chromium chromium-driver ({package})")
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=profile_parent)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.set_script_timeout(60)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver) -> list[str]:
    """Severe messages from the page's console (script errors, failed fetches) since the last call."""
    return [entry["message"] for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]
