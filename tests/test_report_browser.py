"""The QC report in a real browser (headless Chromium): opened from a file:// URL,
every picture loads, the console stays clean, and a planted fault (an i-contour
outside its o-contour) is flagged on the page.

``DASKMRI_SCREENSHOTS=1`` also saves the patient page as docs/images/qc-report.png
(from the real sample when it is there), the picture of docs/guide/qc.md.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import daskmri

from .browser import all_images_loaded, browser, console_errors  # noqa: F401 (a fixture)

DOCS_IMAGE = Path(__file__).resolve().parents[1] / "docs" / "images" / "qc-report.png"


def push_out(contour: Path, by: float) -> None:
    """Move a contour sideways, past its o-contour: the planted fault."""
    np.savetxt(contour, np.loadtxt(contour) + np.array([by, 0.0]), fmt="%.6f")


@pytest.fixture(scope="module")
def leaking_report(tmp_path_factory):
    base = tmp_path_factory.mktemp("browser")
    root = daskmri.synth.make_dataset(base / "sb", patients=2, slices=12, shape=(96, 96))
    push_out(root / "contourfiles/SYN-C-1/i-contours/IM-0001-0006-icontour-manual.txt", 18.0)
    ds = daskmri.load_dataset(root, chunk_size=5, scheduler="sync")
    return daskmri.report(ds, base / "qc", scheduler="sync")


def open_page(session, path: Path) -> None:
    session.get(path.resolve().as_uri())
    assert session.execute_script("return document.readyState") == "complete"


def test_the_report_opens_from_disk_loads_every_picture_and_flags_the_leak(
    browser,  # noqa: F811
    leaking_report,
):
    console_errors(browser)  # empty the log
    open_page(browser, leaking_report.index)
    count, broken = all_images_loaded(browser)
    assert broken == []
    assert "2 patients" in browser.find_element("tag name", "body").text
    browser.find_element("link text", "SYN0001").click()
    count, broken = all_images_loaded(browser)
    assert count == 8 and broken == []
    flagged = browser.find_elements("css selector", ".record.flagged")
    assert [
        (f.get_attribute("data-patient"), f.get_attribute("data-instance")) for f in flagged
    ] == [("SYN0001", "6")]
    assert "icontour leaks out of ocontour" in flagged[0].text
    browser.find_element("id", "only-flagged").click()  # the inline script runs
    shown = [f for f in browser.find_elements("css selector", ".record") if f.is_displayed()]
    assert shown == flagged
    assert console_errors(browser) == []


def test_a_screenshot_for_the_docs(browser, tmp_path, request):  # noqa: F811
    if not os.environ.get("DASKMRI_SCREENSHOTS"):
        pytest.skip("set DASKMRI_SCREENSHOTS=1 to save docs/images/qc-report.png")
    real = request.getfixturevalue("real_root")
    root = shutil.copytree(real, tmp_path / "real", copy_function=os.link)
    contours = sorted((root / "contourfiles").glob("*/i-contours/*.txt"))
    planted = contours[1]  # near the top of its patient's page
    points = np.loadtxt(planted)
    planted.unlink()  # a hard link: replaced, never written through
    np.savetxt(planted, points + np.array([30.0, 0.0]), fmt="%.6f")
    ds = daskmri.load_dataset(root, scheduler="sync")
    summary = daskmri.report(ds, tmp_path / "qc", scheduler="threads")
    with open(summary.verdicts, newline="", encoding="utf-8") as fh:
        leaking = [r for r in csv.DictReader(fh) if "leaks" in r["flags"]]
    assert leaking, "the planted leak was not flagged"
    page = summary.out / "patients" / f"{leaking[0]['patient_id']}.html"
    browser.set_window_size(1280, 900)
    open_page(browser, page)
    assert all_images_loaded(browser)[1] == []
    DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(DOCS_IMAGE))
