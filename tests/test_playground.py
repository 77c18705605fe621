"""The playground in a real browser: Playwright driving Debian's Chromium against the live test server."""

import os
from pathlib import Path

import httpx
import pytest

CHROMIUM = os.environ.get("CHARLOOM_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (make test installs Debian's chromium when run as root)",
                allow_module_level=True)


def set_range(page, selector, value):
    page.eval_on_selector(selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", value)


def swept(browser, url, start, seed, length):
    """A new page that has run the temperature sweep for `start` with this seed and length."""
    page = browser.new_page()
    page.goto(url + "/")
    page.fill("#start", start)
    page.fill("#seed", str(seed))
    set_range(page, "#length", str(length))
    page.click("#sweep-button")
    page.wait_for_function("document.getElementById('status').textContent === 'sweep done'", timeout=60_000)
    return page


def test_typed_start_text_streams_into_the_page(live, browser):
    url, _ = live
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.goto(url + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('parameters')")
    assert page.text_content("#model").startswith(
        "lstm 1x32, attention 64 (shifted keys) over 256 characters, head layer 32, ")
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
    page = swept(browser, url, "Whether", seed=3, length=80)
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


# ---- text as the model sees it ---------------------------------------------------------------------------
def expected_band(p):
    """The class the page gives a character of probability p: the terminal's bands (insight.SHADES)."""
    from charloom.insight import SHADES

    return next((f"p{i}" for i, (bound, _) in enumerate(SHADES) if p < bound), None)


def chars(page, selector):
    """(text, data-p or data-value, classes) of each character span under `selector`."""
    return page.eval_on_selector_all(selector, "els => els.map(e => [e.textContent, e.dataset.p ?? e.dataset.value, "
                                               "[...e.classList]])")


def tooltip(page):
    """The tooltip's character label and its alternatives [(label, p)]."""
    page.wait_for_selector("#tooltip", state="visible")
    alts = page.eval_on_selector_all("#tooltip .alt", "els => els.map(e => [e.dataset.char, Number(e.dataset.p)])")
    return page.text_content("#tooltip .tip-char"), alts


def generate_in(page, start, seed, length):
    page.fill("#start", start)
    page.fill("#seed", str(seed))
    set_range(page, "#length", str(length))
    page.click("#generate")
    page.wait_for_function("document.getElementById('status').dataset.state === 'done'", timeout=60_000)


def test_generated_text_is_coloured_by_the_models_own_probabilities(live, browser):
    url, _ = live
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(url + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('parameters')")
    set_range(page, "#temperature", "1.2")
    generate_in(page, "To be", 11, 150)
    want = httpx.post(f"{url}/v1/generate", json={"start": "To be", "seed": 11, "length": 150, "temperature": 1.2,
                                                  "top_p": 1.0, "logprobs": True}).json()["samples"][0]
    spans = chars(page, "#output .char")
    assert "".join(t for t, _, _ in spans) == want["text"] == page.text_content("#generated")
    for (ch, p, classes), c in zip(spans, want["logprobs"], strict=True):
        assert ch == c["char"] and abs(float(p) - c["p"]) < 1e-4
        assert [k for k in classes if k.startswith("p")] == ([expected_band(c["p"])] if expected_band(c["p"]) else [])
    assert page.is_visible("#legend")
    # the least expected character: its tooltip lists the model's 5 likeliest, the first the same as the API's
    k = min(range(len(spans)), key=lambda i: want["logprobs"][i]["p"])
    page.hover(f"#output .char >> nth={k}")
    shown, alts = tooltip(page)
    assert len(alts) == 5 and alts[0][1] == pytest.approx(want["logprobs"][k]["top"][0][1], abs=1e-4)
    assert [a for a, _ in alts] == [a for a, _ in want["logprobs"][k]["top"]]
    assert f"{want['logprobs'][k]['p']:.4f}" in page.text_content("#tooltip .tip-p")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "playground-colour.png"), full_page=True)
    # the keyboard reaches the same tooltips: focus a character, then move along the text
    page.focus("#output .char >> nth=0")
    page.keyboard.press("ArrowRight")
    page.wait_for_function("document.activeElement.dataset.i === '1'")
    assert tooltip(page)[1][0][1] == pytest.approx(want["logprobs"][1]["top"][0][1], abs=1e-4)
    page.keyboard.press("Escape")
    assert page.is_hidden("#tooltip")
    page.close()


def test_the_sweep_columns_are_coloured_too(live, browser):
    url, _ = live
    page = swept(browser, url, "To", seed=2, length=40)
    for column in page.query_selector_all("#sweep .text"):
        assert len(column.query_selector_all(".char[data-p]")) == 40
    page.close()


def test_a_scored_text_is_coloured_with_its_bpc(live, browser):
    url, _ = live
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(url + "/")
    text = "To be, or not to be,\nthat is the question"
    page.fill("#score-text", text)
    page.click("#score")
    page.wait_for_function("document.getElementById('score-status').dataset.state === 'done'", timeout=30_000)
    want = httpx.post(f"{url}/v1/score", json={"text": text}).json()
    spans = chars(page, "#score-output .char")
    assert "".join(t for t, _, _ in spans) == text
    for (_, p, _), c in zip(spans, want["characters"], strict=True):
        assert abs(float(p) - c["p"]) < 1e-4
    assert f"{want['bpc']:.3f} bits per character" in page.text_content("#score-status")
    # a newline and a space are named in the tooltip, not shown as blanks
    page.hover(f"#score-output .char >> nth={text.index(chr(10))}")
    shown, alts = tooltip(page)
    assert shown == "⏎" and len(alts) == 5
    assert alts[0][1] == pytest.approx(want["characters"][text.index("\n")]["top"][0][1], abs=1e-4)
    page.hover(f"#score-output .char >> nth={text.index(' ')}")
    page.wait_for_function("document.querySelector('#tooltip .tip-char').textContent === '␣'")
    # what was scored is the text the hidden-units view reads next
    assert page.input_value("#unit-text") == text
    page.close()


def test_a_bad_score_request_shows_the_servers_message(live, browser):
    url, _ = live
    page = browser.new_page()
    page.goto(url + "/")
    limit = httpx.get(f"{url}/v1/model").json()["limits"]["max_score"]
    page.fill("#score-text", "x" * (limit + 1))
    page.click("#score")
    page.wait_for_function("document.getElementById('score-status').dataset.state === 'error'", timeout=30_000)
    assert "422" in page.text_content("#score-status") and "text" in page.text_content("#score-status")
    page.close()


def test_characters_the_model_reads_as_unk_show_the_servers_warning(live, browser):
    url, _ = live
    page = browser.new_page()
    page.goto(url + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('parameters')")
    msg = "characters not in the model's vocabulary, read as <unk>: 'Z~'"  # the served corpus has neither
    page.fill("#score-text", "To Z~ be")
    page.click("#score")
    page.wait_for_function("document.getElementById('score-status').dataset.state === 'done'", timeout=30_000)
    assert page.text_content("#score-status .warning") == f"text: {msg}"
    assert "bits per character" in page.text_content("#score-status")  # under the status, not instead of it
    page.click("#unit-read")  # the scored text
    page.wait_for_function("document.getElementById('unit-status').dataset.state === 'done'", timeout=30_000)
    assert page.text_content("#unit-status .warning") == f"text: {msg}"
    generate_in(page, "Z~", 3, 20)
    assert page.text_content("#status .warning") == f"start: {msg}"
    generate_in(page, "To be", 3, 20)
    assert page.query_selector("#status .warning") is None
    page.close()


def unit_values(page):
    return [float(v) for _, v, _ in chars(page, "#unit-view .char")]


def test_hidden_units_of_generated_text_are_read_after_its_start(live, browser):
    url, _ = live
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(url + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('parameters')")
    generate_in(page, "Whether", 4, 80)
    made = page.text_content("#generated")
    assert page.input_value("#unit-text") == made
    page.click("#unit-read")
    page.wait_for_function("document.getElementById('unit-status').dataset.state === 'done'", timeout=30_000)
    want = httpx.post(f"{url}/v1/activations", json={"text": made, "context": "Whether", "state": "h",
                                                      "layer": 0, "top": 16}).json()
    listed = page.eval_on_selector_all("#units li", "els => els.map(e => Number(e.dataset.unit))")
    assert listed == [v["unit"] for v in want["varying"]]
    first = str(listed[0])  # shown until another is chosen
    assert page.get_attribute("#unit-view", "data-unit") == first
    assert unit_values(page) == pytest.approx(want["values"][first], abs=1e-6)
    page.close()


def test_hidden_units_list_the_most_varying_and_colour_the_text(live, browser):
    url, _ = live
    model = httpx.get(f"{url}/v1/model").json()["config"]
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    page.goto(url + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('parameters')")
    states = page.eval_on_selector_all("#unit-state option", "els => els.map(e => e.value)")
    assert states == (["h", "c"] if model["cell"] == "lstm" else ["h"])
    text = "To be, or not to be, that is the question:\nWhether 'tis nobler"
    page.fill("#unit-text", text)
    page.select_option("#unit-state", states[-1])
    page.click("#unit-read")
    page.wait_for_function("document.getElementById('unit-status').dataset.state === 'done'", timeout=30_000)
    body = {"text": text, "context": "", "state": states[-1], "layer": 0, "top": 16}
    want = httpx.post(f"{url}/v1/activations", json=body).json()
    listed = page.eval_on_selector_all("#units li", "els => els.map(e => Number(e.dataset.unit))")
    assert listed == [v["unit"] for v in want["varying"]]
    # a click on the third unit colours the text by its value at each character
    page.click("#units li >> nth=2")
    unit = str(listed[2])
    page.wait_for_function(f"document.getElementById('unit-view').dataset.unit === '{unit}'")
    spans = chars(page, "#unit-view .char")
    assert "".join(t for t, _, _ in spans) == text
    assert unit_values(page) == pytest.approx(want["values"][unit], abs=1e-6)
    assert page.eval_on_selector_all("#units li.selected", "els => els.map(e => e.dataset.unit)") == [unit]
    # most positive red, most negative blue
    values = want["values"][unit]
    colour = "(i) => getComputedStyle(document.querySelectorAll('#unit-view .char')[i]).backgroundColor"
    hi, lo = values.index(max(values)), values.index(min(values))
    if max(values) > 0.1:
        r, g, b = map(int, page.evaluate(colour, hi)[4:-1].split(","))
        assert r > b
    if min(values) < -0.1:
        r, g, b = map(int, page.evaluate(colour, lo)[4:-1].split(","))
        assert b > r
    page.hover(f"#unit-view .char >> nth={hi}")
    page.wait_for_selector("#tooltip .tip-value", state="visible")
    assert page.text_content("#tooltip .tip-value") == f"unit {unit}: {max(values):.4f}"
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#units-panel").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "playground-units.png"), full_page=True)
    # a unit that is not listed can be typed
    other = next(u for u in range(model["hidden_size"]) if u not in listed)
    page.fill("#unit", str(other))
    page.press("#unit", "Enter")
    page.dispatch_event("#unit", "change")
    page.wait_for_function(f"document.getElementById('unit-view').dataset.unit === '{other}'", timeout=30_000)
    one = httpx.post(f"{url}/v1/activations", json={**body, "units": [other]}).json()
    assert unit_values(page) == pytest.approx(one["values"][str(other)], abs=1e-6)
    page.close()


def test_the_model_panel_shows_the_report_and_the_training_chart(live, browser):
    url, _ = live
    model = httpx.get(f"{url}/v1/model").json()
    assert httpx.get(f"{url}/v1/curves.png").status_code == 200  # the test run was trained with matplotlib
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    page.goto(url + "/")
    page.wait_for_selector('#report [data-field="model.parameters"]')
    assert page.text_content('#report [data-field="model.cell"]') == model["config"]["cell"]
    assert page.text_content('#report [data-field="model.parameters"]') == f"{model['parameters']:,}"
    assert page.text_content('#report [data-field="training.steps"]') == str(model["training"]["step"])
    assert page.text_content('#report [data-field="training.model from step"]') == str(model["training"]["step"])
    for section in ("corpus", "model", "training", "bpc"):
        assert page.query_selector(f'#report [data-field^="{section}."]') is not None
    page.wait_for_function("(el => el.complete && el.naturalWidth > 0)(document.getElementById('curves'))",
                           timeout=30_000)
    assert page.is_visible("#curves")
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#model-panel").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "playground-report.png"), full_page=True)
    page.close()


def test_the_chart_is_hidden_when_the_run_has_none(live, browser):
    url, _ = live
    page = browser.new_page()
    page.route("**/v1/curves.png", lambda route: route.fulfill(status=404, body="{}"))
    page.goto(url + "/")
    page.wait_for_function("document.getElementById('curves-figure').hidden")
    page.close()


def test_the_label_picker_is_hidden_for_a_model_without_labels(live, browser):
    url, _ = live
    page = browser.new_page()
    page.goto(url + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('parameters')")
    assert page.is_hidden("#label-choice")
    page.close()


@pytest.fixture(scope="module")
def labelled_live(tmp_path_factory):
    """An untrained records model with three labels, served."""
    import torch

    from charloom import checkpoint
    from charloom.config import ModelConfig
    from charloom.model import CharRNN
    from charloom.vocab import Vocab

    from conftest import serving

    torch.manual_seed(0)
    vocab = Vocab("abcdefgh ", labels=["World", "Sports", "Sci/Tech"])
    path = tmp_path_factory.mktemp("labelled") / "model.safetensors"
    model = CharRNN(ModelConfig(hidden_size=16, embedding=8, vocab_size=len(vocab)))
    with torch.no_grad():
        model.head.weight.mul_(30.0)  # far from uniform, so what it read (the label) shows in what it writes
        model.head.bias[vocab.eos_id] = -100.0  # samples run their full length
    checkpoint.save(path, model, vocab, records=True)
    with serving(path) as served:
        yield served


def test_the_label_picker_sends_the_chosen_label(labelled_live, browser):
    url, _ = labelled_live
    page = browser.new_page()
    page.goto(url + "/")
    page.wait_for_selector("#label-choice", state="visible")
    assert page.eval_on_selector_all("#label option", "els => els.map((e) => e.textContent)") == [
        "(any)", "World", "Sports", "Sci/Tech"]
    page.select_option("#label", "World")
    page.fill("#seed", "3")
    set_range(page, "#length", "60")
    page.click("#generate")
    page.wait_for_function("document.getElementById('status').dataset.state === 'done'", timeout=60_000)
    body = {"seed": 3, "length": 60, "temperature": 0.8, "top_p": 1.0}
    world = httpx.post(f"{url}/v1/generate", json={**body, "label": "World"}).json()["samples"][0]["text"]
    plain = httpx.post(f"{url}/v1/generate", json=body).json()["samples"][0]["text"]
    assert len(world) == 60 and world != plain  # the label changes what is written
    assert page.text_content("#generated") == world
    page.close()
