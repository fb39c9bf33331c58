"""A headless Chromium driven by selenium, for the tests that open pages as a person would.

Skips, saying what is missing, where selenium (PyPI), ``chromium`` or ``chromium-driver``
(Debian) is not installed: ``.ci/run`` installs them as it installs dcmtk.
"""

from __future__ import annotations

import shutil

import pytest

#: Where Debian puts them; a PATH lookup comes first.
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)


def _which(names: tuple[str, ...]) -> str | None:
    return next((path for name in names if (path := shutil.which(name))), None)


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium whose console log can be read (``browser.get_log("browser")``)."""
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (pip install selenium)"
    )
    binary, driver = _which(BROWSERS), _which(DRIVERS)
    if binary is None or driver is None:
        pytest.skip("chromium and chromium-driver (Debian packages) are not installed")
    options = webdriver.ChromeOptions()
    # No sandbox: CI runs as root, where Chromium refuses its sandbox.
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,900")
    options.binary_location = binary
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=driver)
    session = webdriver.Chrome(service=service, options=options)
    session.set_page_load_timeout(60)
    try:
        yield session
    finally:
        session.quit()


def console_errors(session) -> list[dict]:
    """The browser console's errors since the last call (reading the log empties it)."""
    return [entry for entry in session.get_log("browser") if entry["level"] == "SEVERE"]


def all_images_loaded(session) -> tuple[int, list[str]]:
    """How many ``<img>`` the page has, and the sources of those that did not load."""
    broken = session.execute_script(
        "return Array.from(document.images)"
        ".filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src);"
    )
    count = session.execute_script("return document.images.length;")
    return count, broken
