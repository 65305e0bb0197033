"""The generated leaderboard page in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
installed by tests/browser/install_chromium.sh), driven by Selenium: no console errors, sorting by a
column header, filtering, every plot drawn. A screenshot is kept in test-artifacts/.

Skips, saying why, where Selenium, Chromium or its driver is missing or the browser does not start."""
import shutil
from pathlib import Path

import pytest

from harness import leaderboard, results
from synthetic_records import grid, record

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip("no chromium / chromedriver on PATH (bash tests/browser/install_chromium.sh installs Debian's)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    except Exception as err:  # the browser or its driver did not start on this machine
        pytest.skip(f"chromium did not start: {type(err).__name__}: {str(err).splitlines()[0]}")
    yield driver
    driver.quit()


def console_errors(driver):
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_console_errors_are_seen(browser):
    """The check below can fail: a page that throws shows up in the browser log."""
    browser.get("data:text/html,<script>undefinedFunction()</script>")
    assert any("undefinedFunction" in e["message"] for e in console_errors(browser))


def test_page_sorts_filters_and_draws_every_plot(browser, tmp_path):
    for rec in grid(80) + [record(model="model-0", method="rtn", bits=2, status="failed", error="ValueError: boom")]:
        results.write(tmp_path / "runs_dir", rec)
    board = leaderboard.build([str(tmp_path / "runs_dir")], tmp_path / "site")
    browser.get((tmp_path / "site" / "index.html").as_uri())
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    assert console_errors(browser) == []
    rows = lambda: browser.find_elements(By.CSS_SELECTOR, "#board tbody tr")  # noqa: E731
    run_ids = lambda: [r.get_attribute("data-run") for r in rows()]  # noqa: E731
    values = lambda: [float(r.find_elements(By.TAG_NAME, "td")[column].get_attribute("data-v")) for r in rows()]  # noqa: E731
    assert len(rows()) == len(board.runs)

    header = browser.find_element(By.XPATH, "//table[@id='board']//th[text()='pydoc/ppl']")
    column = int(header.get_attribute("cellIndex"))
    before = run_ids()
    header.click()
    assert run_ids() != before and values() == sorted(values())
    header.click()
    assert values() == sorted(values(), reverse=True)

    Select(browser.find_element(By.CSS_SELECTOR, "select.filter[data-col='method']")).select_by_value("rtn")
    shown = [r for r in rows() if r.is_displayed()]
    assert 0 < len(shown) < len(board.runs) == len(rows())
    assert {r.get_attribute("data-method") for r in shown} == {"rtn"}
    assert browser.find_element(By.ID, "shown").text == str(len(shown))
    search = browser.find_element(By.ID, "search")
    search.send_keys("model-3")
    assert {r.get_attribute("data-model") for r in rows() if r.is_displayed()} == {"model-3"}

    svgs = browser.find_elements(By.CSS_SELECTOR, "svg.plot")
    assert len(svgs) == 4 * (2 * 2 + 1)  # per model: 2 headline scores x (bits, decode speed) + 1 LLM-KICK plot
    for svg in svgs:
        assert svg.size["width"] > 100 and svg.size["height"] > 100
        assert svg.find_elements(By.TAG_NAME, "circle"), svg.find_element(By.CLASS_NAME, "title").text
    assert browser.find_elements(By.CSS_SELECTOR, "svg .front")
    assert "ValueError: boom" in browser.find_element(By.ID, "failed").text
    assert console_errors(browser) == []

    shot = tmp_path / "leaderboard.png"
    browser.save_screenshot(str(shot))
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "leaderboard_browser_test.png")
    assert shot.stat().st_size > 10_000
