"""The exported web page in a real browser: Playwright driving Debian's Chromium against the folder
`charloom export --web DIR --runtime ...` writes, served from 127.0.0.1 with every other address refused,
so the page is shown to work offline and to write the Python backends' text."""

import functools
import os
import threading
import time
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch

from charloom import checkpoint
from charloom.config import ExportConfig, ModelConfig
from charloom.model import CharRNN
from charloom.vocab import Vocab

CHROMIUM = os.environ.get("CHARLOOM_CHROMIUM", "/usr/bin/chromium")
ORT_WEB = Path(os.environ.get("CHARLOOM_ORT_WEB", Path.home() / ".cache" / "charloom" / "ort-web"))
RUNTIME = ORT_WEB / "node_modules" / "onnxruntime-web" / "dist"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
TEXT = ("First Citizen: Before we proceed any further, hear me speak.\n"
        "All: Speak, speak.\n"
        "First Citizen: You are all resolved rather to die than to famish?\n") * 8
SEED = 2**33 - 1  # sample 0 draws from the stream seeded 2**32 - 1, sample 1 from the one seeded 0

pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytest.importorskip("onnx", reason="the web export needs the 'onnx' extra")
pytest.importorskip("onnxruntime", reason="the web export needs the 'onnx' extra")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (make test installs Debian's chromium when run as root)",
                allow_module_level=True)
if not (RUNTIME / "ort.wasm.min.mjs").is_file():
    pytest.skip(f"no onnxruntime-web at {ORT_WEB} (scripts/ensure_ort_web.sh installs it with npm)",
                allow_module_level=True)


class _Files(SimpleHTTPRequestHandler):
    """A static host: the page's modules as JavaScript and the runtime as WebAssembly, whatever mimetypes says."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript", ".js": "text/javascript",
                      ".wasm": "application/wasm", ".onnx": "application/octet-stream"}

    def log_message(self, *args):
        pass


@dataclass
class Site:
    folder: Path  # the model file, and the exported page in web/
    url: str


LABELS = ("World", "Sports")


def export_site(folder: Path, *, records: bool) -> None:
    """A tiny random LSTM exported with its web page and the runtime copied in (a records model has labels; the
    other reads hashed contexts and has an attention head, so the page carries their recent ids and its memory
    too)."""
    from charloom.export import export

    vocab = Vocab.build(TEXT, labels=LABELS) if records else Vocab.build(TEXT)
    torch.manual_seed(1)
    model = CharRNN(ModelConfig(cell="lstm", num_layers=2, hidden_size=24, embedding=8, vocab_size=len(vocab),
                                grams=0 if records else 4, gram_buckets=97, attention=0 if records else 4, memory=6))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)  # peaked distributions, as a trained model's are, rather than near-uniform ones
        if model.recall is not None:
            torch.nn.init.normal_(model.recall.out.weight, std=0.5)  # it starts by adding nothing
        if records:
            model.head.bias[vocab.eos_id] += 4.0  # records end within a few dozen characters
    checkpoint.save(folder / "model.safetensors", model, vocab, records=records)
    ck = checkpoint.load(folder / "model.safetensors")
    export(ck, ExportConfig(web=str(folder / "web"), runtime=str(RUNTIME)), out=folder / "web" / "model.onnx")


@pytest.fixture(scope="module")
def serve():
    """serve(folder) -> the URL of a static host for it on 127.0.0.1, on a free port."""
    servers = []

    def start(folder: Path) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Files, directory=str(folder)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def served(serve, tmp_path_factory):
    """served(records) -> the Site of a model exported once for the module."""
    sites = {}

    def site(records: bool = False) -> Site:
        if records not in sites:
            folder = tmp_path_factory.mktemp("records" if records else "continuous")
            export_site(folder, records=records)
            sites[records] = Site(folder, serve(folder / "web"))
        return sites[records]

    return site


@pytest.fixture
def open_page(browser):
    """open_page(url) -> (page, requested, refused): the page loaded (and ready, unless `ready` is false),
    every request not to 127.0.0.1 refused and listed."""
    pages = []

    def open_(url: str, ready: bool = True):
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        requested, refused = [], []

        def only_local(route):
            url = route.request.url
            if urlsplit(url).hostname == "127.0.0.1":
                requested.append(url)
                route.continue_()
            else:
                refused.append(url)
                route.abort()

        page.route("**/*", only_local)
        pages.append(page)
        page.goto(url + "/index.html")
        page.wait_for_function("['ready', 'error'].includes(document.getElementById('status').dataset.state)",
                               timeout=60_000)
        if ready:
            assert page.get_attribute("#status", "data-state") == "ready", page.text_content("#status")
        return page, requested, refused

    yield open_
    for page in pages:
        page.close()


def set_range(page, selector, value):
    page.eval_on_selector(selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", value)


def wait_done(page, timeout=60_000):
    page.wait_for_function("['done', 'error'].includes(document.getElementById('status').dataset.state)",
                           timeout=timeout)
    assert page.get_attribute("#status", "data-state") == "done", page.text_content("#status")


def samples(page, within="#output"):
    return [e.text_content() for e in page.query_selector_all(f"{within} .sample")]


def test_page_writes_the_onnx_backends_text_offline(served, open_page):
    from charloom.onnx_generator import OnnxGenerator

    site = served()
    page, requested, refused = open_page(site.url)
    assert page.text_content("#model").startswith(
        "lstm 2x24, attention 4 (shifted keys) over 6 characters, head layer 24, vocabulary ")  # -1: as wide
    assert "continuous text" in page.text_content("#model")
    assert "served from ./ort/" in page.text_content("#runtime")
    page.fill("#start", "Before we")
    page.fill("#seed", str(SEED))
    page.fill("#n", "2")
    set_range(page, "#temperature", "0.9")
    set_range(page, "#top_p", "0.95")
    set_range(page, "#length", "300")
    assert page.text_content("#temperature-value") == "0.9"
    page.click("#generate")
    wait_done(page)
    want = OnnxGenerator.load(site.folder / "web" / "model.onnx").generate(
        "Before we", 300, n=2, seed=SEED, temperature=0.9, top_p=0.95)
    assert samples(page) == want and all(len(t) == 300 for t in want) and want[0] != want[1]
    assert f"seed {SEED}" in page.text_content("#status")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-export.png"), full_page=True)
    assert any(u.endswith("/ort/ort-wasm-simd-threaded.wasm") for u in requested)
    assert refused == []


def test_temperature_zero_is_the_pytorch_generators_greedy_text(served, open_page):
    from charloom.sampling import Generator

    site = served()
    page, _, refused = open_page(site.url)
    got = page.evaluate("o => window.charloom.generate(o)",
                        {"start": "All: Ré", "length": 200, "n": 3, "temperature": 0})
    generator = Generator.from_checkpoint(checkpoint.load(site.folder / "model.safetensors"))
    with pytest.warns(UserWarning, match="read as <unk>"):
        want = generator.generate("All: Ré", 200, temperature=0)  # neither R nor é is in the vocabulary
    assert got == want * 3
    assert '"Ré" not in the model\'s vocabulary, read as <unk>' in page.text_content("#status")
    assert refused == []


def test_a_top_p_below_float32s_least_number_keeps_the_most_likely_character(served, open_page):
    """top_p 1e-50 reads as 0 in float32, which the most likely character's preceding mass of 0 "reaches": it must
    still stay, so the page writes the greedy text, as the Python samplers do, and never an empty one."""
    from charloom.sampling import Generator

    site = served()
    page, _, _ = open_page(site.url)
    got = page.evaluate("o => window.charloom.generate(o)",
                        {"start": "Before we", "length": 80, "n": 2, "temperature": 1.0, "top_p": 1e-50, "seed": 3})
    want = Generator.from_checkpoint(checkpoint.load(site.folder / "model.safetensors")).generate(
        "Before we", 80, temperature=0)
    assert got == want * 2 and len(want[0]) == 80


def test_text_appears_while_it_is_made_and_stop_ends_it(served, open_page):
    page, _, refused = open_page(served().url)
    page.evaluate("() => { window.made = window.charloom.generate({ start: 'You', length: 1000000, seed: 5 }); }")
    seen = []
    for _ in range(4):
        longer = seen[-1] if seen else 0
        page.wait_for_function(f"document.querySelector('#output .sample').textContent.length > {longer} + 50",
                               timeout=30_000)
        assert page.get_attribute("#status", "data-state") == "running"
        seen.append(len(page.text_content("#output .sample")))
        time.sleep(0.05)
    assert seen == sorted(seen) and len(set(seen)) == 4
    assert "characters/s" in page.text_content("#status")
    page.click("#stop")
    wait_done(page)
    texts = page.evaluate("() => window.made")
    assert page.text_content("#status").startswith("stopped") and seen[-1] <= len(texts[0]) < 1_000_000
    assert refused == []


def test_a_records_model_stops_at_end_of_record(served, open_page):
    from charloom.onnx_generator import OnnxGenerator

    site = served(records=True)
    page, _, refused = open_page(site.url)
    assert "records model" in page.text_content("#model")
    got = page.evaluate("o => window.charloom.generate(o)",
                        {"start": "", "length": 400, "n": 4, "seed": "11", "temperature": 1.0})
    want = OnnxGenerator.load(site.folder / "web" / "model.onnx").generate("", 400, n=4, seed=11, temperature=1.0)
    assert got == want and all(len(t) < 400 for t in got)
    assert samples(page) == want
    assert refused == []


def test_a_labelled_model_writes_for_the_chosen_label_and_never_a_label_token(served, open_page):
    from charloom.onnx_generator import OnnxGenerator

    site = served(records=True)
    page, _, refused = open_page(site.url)
    assert page.is_visible("#label") and page.eval_on_selector_all(
        "#label option", "os => os.map(o => o.value)") == ["", *LABELS]
    gen = OnnxGenerator.load(site.folder / "web" / "model.onnx")
    for label in (*LABELS, None):
        got = page.evaluate("o => window.charloom.generate(o)", {"start": "", "length": 200, "n": 3, "seed": "5",
                                                                   "temperature": 1.0, "label": label})
        assert got == gen.generate("", 200, n=3, seed=5, temperature=1.0, label=label)
        assert not any("<label:" in t for t in got)
    page.select_option("#label", "Sports")
    page.fill("#seed", "8")
    page.click("#generate")
    wait_done(page)
    assert samples(page) == gen.generate("", int(page.input_value("#length")), seed=8,
                                         temperature=float(page.input_value("#temperature")), label="Sports")
    error = page.evaluate("o => window.charloom.generate(o).then(() => '', e => e.message)",
                          {"start": "", "length": 5, "label": "Sprots"})
    assert error == 'label: "Sprots" is not one of World, Sports'
    spaced = page.evaluate("o => window.charloom.generate(o)", {"start": "", "length": 50, "n": 2, "seed": "5",
                                                                "temperature": 1.0, "label": " Sports "})
    assert spaced == gen.generate("", 50, n=2, seed=5, temperature=1.0, label=" Sports ")  # as Python asks it
    assert refused == []


def test_temperature_sweep_writes_five_labelled_samples(served, open_page):
    from charloom.onnx_generator import OnnxGenerator

    site = served()
    page, _, refused = open_page(site.url)
    page.fill("#start", "Speak")
    page.fill("#seed", "3")
    set_range(page, "#length", "80")
    page.click("#sweep-button")
    wait_done(page)
    assert [h.text_content() for h in page.query_selector_all("#sweep h3")] == [
        "temperature 0.3", "temperature 0.8", "temperature 1", "temperature 1.3", "temperature 1.8"]
    columns = page.query_selector_all("#sweep .sample")
    assert [c.get_attribute("data-temperature") for c in columns] == ["0.3", "0.8", "1", "1.3", "1.8"]
    gen = OnnxGenerator.load(site.folder / "web" / "model.onnx")
    want = [gen.generate("Speak", 80, seed=3, temperature=t)[0] for t in (0.3, 0.8, 1.0, 1.3, 1.8)]
    assert samples(page, "#sweep") == want and len(set(want)) > 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-export-sweep.png"), full_page=True)
    assert refused == []


def test_without_a_runtime_the_page_says_it_loads_one_from_the_cdn(served, serve, open_page, tmp_path):
    from charloom.export import ORT_WEB_URL, ORT_WEB_VERSION, write_web

    folder = write_web(served().folder / "web" / "model.onnx", tmp_path / "web", runtime=None)
    assert not (folder / "ort").exists()
    page, _, refused = open_page(serve(folder), ready=False)
    note = page.text_content("#runtime")
    assert f"onnxruntime-web {ORT_WEB_VERSION}" in note and "public CDN" in note and ORT_WEB_URL in note
    assert page.get_attribute("#status", "data-state") == "error"
    status = page.text_content("#status")
    assert status.startswith(f"could not load onnxruntime-web {ORT_WEB_VERSION} from {ORT_WEB_URL}")
    assert refused == [ORT_WEB_URL + "ort.wasm.min.mjs"]  # it asked the CDN, and nothing went out
