"""The playground in a real browser: Playwright driving Debian's Chromium against the live test server."""

import os
from pathlib import Path

import httpx
import pytest

CHROMIUM = os.environ.get("CHARLOOM_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (make test installs Debian's chromium when run as root)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                    "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


def set_range(page, selector, value):
    page.eval_on_selector(selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", value)


def test_typed_start_text_streams_into_the_page(live, browser):
    url, _ = live
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.goto(url + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('parameters')")
    page.fill("#start", "To be")
    page.fill("#seed", "7")
    set_range(page, "#length", "200")
    set_range(page, "#temperature", "0.9")
    assert page.text_content("#temperature-value") == "0.9"
    page.click("#generate")
    page.wait_for_function("document.getElementById('status').dataset.state === 'done'", timeout=60_000)
    shown = page.text_content("#generated")
    assert page.text_content("#output").startswith("To be")
    expected = httpx.post(f"{url}/v1/generate", json={"start": "To be", "seed": 7, "length": 200, "temperature": 0.9,
                                                      "top_p": 1.0}).json()["samples"][0]["text"]
    assert shown == expected and len(shown) == 200
    assert "seed 7" in page.text_content("#status")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
    page.close()


def test_text_appears_while_it_is_made_and_stop_ends_it(live, browser):
    url, _ = live
    page = browser.new_page()
    page.goto(url + "/")
    page.eval_on_selector("#length", "el => { el.max = 100000; }")
    set_range(page, "#length", "100000")
    page.click("#generate")
    # streamed: characters are on the page while the status still says the text is being made
    page.wait_for_function("document.getElementById('generated').textContent.length > 20 && "
                           "document.getElementById('status').textContent === 'generating…'", timeout=30_000)
    page.click("#stop")
    page.wait_for_function("document.getElementById('status').textContent === 'stopped'", timeout=30_000)
    assert 20 < len(page.text_content("#generated")) < 100000
    page.close()


def test_temperature_sweep_shows_five_columns(live, browser):
    url, _ = live
    page = browser.new_page()
    page.goto(url + "/")
    page.fill("#start", "Whether")
    page.fill("#seed", "3")
    set_range(page, "#length", "80")
    page.click("#sweep-button")
    page.wait_for_function("document.getElementById('status').textContent === 'sweep done'", timeout=60_000)
    columns = page.query_selector_all("#sweep .text")
    assert [c.get_attribute("data-temperature") for c in columns] == ["0.3", "0.8", "1", "1.3", "1.8"]
    texts = [c.text_content() for c in columns]
    assert all(t.startswith("Whether") and len(t) == len("Whether") + 80 for t in texts) and len(set(texts)) > 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "playground-sweep.png"), full_page=True)
    page.close()


def test_a_bad_value_shows_the_servers_message(live, browser):
    url, _ = live
    page = browser.new_page()
    page.goto(url + "/")
    page.fill("#seed", "-5")
    page.click("#generate")
    page.wait_for_function("document.getElementById('status').dataset.state === 'error'", timeout=30_000)
    assert "422" in page.text_content("#status") and "seed" in page.text_content("#status")
    page.close()
