"""The playground at ``/`` in a real browser: Debian's headless chromium driven by Selenium (nothing downloaded).

The test moves a direction's strength slider, presses Generate, waits for the unsteered and steered answers to
stream in side by side, checks the copyable snippets, and saves a screenshot (``POLYSTEER_PLAYGROUND_PNG`` names
where; by default the test's tmp folder).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from test_serve import make_app, running_server

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--window-size=1280,900"]

pytestmark = pytest.mark.filterwarnings("ignore:steering at .* adds a vector of norm")


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="polysteer-chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # no Selenium Manager download
        try:
            yield driver
        finally:
            driver.quit()


def _slide(driver, element_id: str, value: float) -> None:
    driver.execute_script("const s = document.getElementById(arguments[0]); s.value = arguments[1];"
                          "s.dispatchEvent(new Event('input'));", element_id, str(value))


def test_playground_streams_steered_and_unsteered_side_by_side(browser, llama, tokenizer, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    app = make_app(llama, tokenizer, max_wait_ms=100)
    with running_server(app) as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: d.find_element(By.ID, "directions").get_attribute("data-loaded") == "2")
        names = [e.get_attribute("data-name") for e in browser.find_elements(By.CSS_SELECTOR, ".direction")]
        assert names == ["cake", "sea"]
        _slide(browser, "strength-sea", 8)
        schedule = browser.find_element(By.CSS_SELECTOR, ".direction[data-name='sea'] .schedule")
        schedule.clear()
        schedule.send_keys("generated-only")
        browser.find_element(By.ID, "max-tokens").clear()
        browser.find_element(By.ID, "max-tokens").send_keys("12")
        browser.find_element(By.ID, "generate").click()
        for side in ("plain", "steered"):
            wait.until(lambda d: d.find_element(By.ID, f"status-{side}").get_attribute("data-done") == "1")
        plain = browser.find_element(By.ID, "out-plain").text
        steered = browser.find_element(By.ID, "out-steered").text
        status = browser.find_element(By.ID, "status-steered").text
        curl = browser.find_element(By.ID, "snippet-curl").text
        python = browser.find_element(By.ID, "snippet-python").text
        png = Path(os.environ.get("POLYSTEER_PLAYGROUND_PNG", tmp_path / "playground.png"))
        png.parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(png))
    assert plain and steered and plain != steered, (plain, steered)
    assert status.startswith("done:") and "error" not in status
    assert '"steer":[{"direction":"sea","coefficient":8,"schedule":"generated-only"}]' in curl
    assert "extra_body={\"steer\": [{\"direction\":\"sea\"" in python and "cake" not in python
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert max(app.state.batcher.batch_sizes) == 2  # the two answers were one mixed batch
