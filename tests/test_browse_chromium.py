"""The ERF browser in a real browser: Debian's chromium, headless, driven by selenium through chromedriver.

Screenshots of the overview, a unit page and the side-by-side view go to
``build/test-output/browse/`` (or ``$ERF_TEST_OUTPUT/browse``) for a person to look at.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from browse_helpers import tiny_results
from conftest import ROOT
from lab.browse import write_browser

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = os.environ.get("ERF_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("ERF_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
SHOTS = Path(os.environ.get("ERF_TEST_OUTPUT", ROOT / "build" / "test-output")) / "browse"
# No network, no updates, a fresh profile: the page must work from disk alone.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,1000")


@pytest.fixture(scope="module")
def driver():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip(f"no browser: {CHROMIUM} and {CHROMEDRIVER} are needed "
                    "(apt-get install chromium chromium-driver; .ci/run installs them)")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="erf-browse-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + (f"--user-data-dir={profile}",):
        options.add_argument(flag)
    drv = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("browse")
    tiny_results(root / "probes")
    return write_browser([root / "probes"], root / "site")


def _loaded(drv, element) -> bool:
    return drv.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", element)


def test_overview_click_sort_and_unit_page(driver, site):
    from selenium.webdriver.common.by import By

    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.get((site / "model0--layer2" / "index.html").as_uri())
    rows = driver.find_elements(By.CSS_SELECTOR, "#units tbody tr")
    assert [r.get_attribute("data-unit") for r in rows] == ["0", "1", "2", "3", "4"]
    assert len(driver.find_elements(By.CSS_SELECTOR, "#scatter circle")) == 5
    thumbs = driver.find_elements(By.CSS_SELECTOR, "#units img.thumb")
    assert thumbs and all(_loaded(driver, t) for t in thumbs)

    # Sort by the half-max side, both ways: the column's numbers come out ordered.
    header = driver.find_element(By.CSS_SELECTOR, '#units th[data-key="side"]')
    col = [h.get_attribute("data-key") for h in driver.find_elements(By.CSS_SELECTOR, "#units th")].index("side")

    def column():
        cells = driver.find_elements(By.CSS_SELECTOR, f"#units tbody tr td:nth-child({col + 1})")
        return [float(c.text) for c in cells if c.text != "\u2013"]

    header.click()
    assert column() == sorted(column()) and "asc" in header.get_attribute("class")
    header.click()
    assert column() == sorted(column(), reverse=True) and "desc" in header.get_attribute("class")
    driver.save_screenshot(str(SHOTS / "overview.png"))

    # Click the unit now in the third row; its page names it and shows its map.
    row = driver.find_elements(By.CSS_SELECTOR, "#units tbody tr")[2]
    unit = row.get_attribute("data-unit")
    row.click()
    assert driver.current_url.endswith(f"/unit/{unit}.html")
    assert driver.find_element(By.ID, "unit-number").text == unit
    erf = driver.find_element(By.ID, "erf-map")
    assert erf.get_attribute("src").endswith(f"/img/erf_{unit}.png") and _loaded(driver, erf)
    assert _loaded(driver, driver.find_element(By.ID, "topk"))
    driver.save_screenshot(str(SHOTS / "unit.png"))

    # Back on the overview a dot of the scatter plot opens its unit too.
    driver.back()
    dot = driver.find_elements(By.CSS_SELECTOR, "#scatter circle")[0]
    dot_unit = dot.get_attribute("data-unit")
    dot.click()
    assert driver.find_element(By.ID, "unit-number").text == dot_unit


def test_side_by_side(driver, site):
    from selenium.webdriver.common.by import By

    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.get((site / "compare" / "model0--layer2--model1--layer2.html").as_uri())
    assert len(driver.find_elements(By.CSS_SELECTOR, "#hists svg")) >= 4
    rows = driver.find_elements(By.CSS_SELECTOR, "#pairs tbody tr")
    assert [r.get_attribute("data-unit") for r in rows] == ["0", "1", "2", "3", "4"]
    images = driver.find_elements(By.CSS_SELECTOR, "#pairs img.thumb")
    assert len(images) == 10 and all(_loaded(driver, i) for i in images)
    driver.set_window_size(1280, 1500)  # the histograms and the paired table in one picture
    driver.save_screenshot(str(SHOTS / "side_by_side.png"))
    driver.set_window_size(1280, 1000)
    images[3].click()  # unit 1 of the second model
    assert "/model1--layer2/unit/1.html" in driver.current_url
    assert driver.find_element(By.ID, "unit-number").text == "1"
