import contextlib
import os
import socket
import threading
import time

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "kernel: depends on the CPU's kernels or precision; `make test` runs these "
                                       "a second time on oneDNN's AVX2 path")
    config.addinivalue_line("markers", "bf16: computes in bf16: runs where this CPU has a bf16 LSTM kernel, "
                                       "skips elsewhere")
    config.addinivalue_line("markers", "alone: reads the machine's load, which other test processes would make "
                                       "noise in: skips in a suite of several processes (`make test` runs these "
                                       "after it, in one)")


def bf16_runs() -> bool:
    """This CPU runs the LSTM's fused kernel in bf16 (found by the runtime's probe, not from CPU flags)."""
    from charloom.runtime import probe

    return probe("cpu", "lstm", "bf16").runs


def pytest_runtest_setup(item):
    if item.get_closest_marker("bf16") and not bf16_runs():
        pytest.skip("no bf16 LSTM kernel on this CPU (the clear error is pinned by test_runtime)")
    if item.get_closest_marker("alone") and WORKERS > 1:
        pytest.skip("reads the machine's load: runs where the suite runs in one process")


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    """Every test caches encoded corpora in a fresh folder, never in the user's ~/.cache."""
    monkeypatch.setenv("CHARLOOM_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


# the CPUs each test process may take: all of them, or their share when the suite runs in several processes
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
CPUS = max(1, (os.cpu_count() or 1) // WORKERS)


@pytest.fixture(autouse=True, scope="session")
def _share_of_the_cpus():
    """In several test processes each takes its share of the cores: threads beyond them wait on each other."""
    import torch

    torch.set_num_threads(min(CPUS, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _quiet_cpus(monkeypatch):
    """Runs in a test take the threads of a quiet machine (its share of one, in several test processes): tests
    compare runs to the bit, and the threads a run takes otherwise follow whatever else the machine is doing
    (test_runtime tests that choice itself)."""
    import math

    from charloom import runtime

    monkeypatch.setattr(runtime, "TORCH_THREADS", min(CPUS, runtime.TORCH_THREADS))  # the CPUs it may use ...
    monkeypatch.setattr(runtime, "idle_cpus", lambda *_: CPUS)  # ... all idle
    monkeypatch.setattr(runtime, "WATCH_SECONDS", math.inf)  # nor do they move as the run goes
    monkeypatch.setattr(runtime, "other_work", lambda: lambda: (0.0, CPUS))


TEXT = ("First Citizen: Before we proceed any further, hear me speak.\n"
        "All: Speak, speak.\n"
        "First Citizen: You are all resolved rather to die than to famish?\n"
        "All: Resolved. resolved.\n") * 12


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "play.txt"
    p.write_text(TEXT)
    return p


@pytest.fixture
def tiny():
    """Options for a model and run small enough for a test: (batch, model, train) overrides."""
    return dict(batch_size=4, seq_len=16, hidden_size=16, num_layers=1, embedding=8, eval_every=5, eval_chars=0,
                sample_length=0, progress=False, warmup=2, lr=1e-2)


SERVED_TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny model trained once for the server and browser tests."""
    import charloom

    folder = tmp_path_factory.mktemp("served")
    src = folder / "play.txt"
    src.write_text(SERVED_TEXT)
    charloom.train(source=str(src), out=str(folder / "run"), max_steps=30, batch_size=4, seq_len=16, hidden_size=32,
                   num_layers=1, embedding=8, eval_every=10, sample_length=0, progress=False, warmup=2, lr=1e-2,
                   cache_dir=str(folder / "cache"), fit_chars=150)  # text left out: the mixture has its last layer
    return folder / "run"


@contextlib.contextmanager
def serving(model, **limits):
    """A model (a run folder, model file or loaded Checkpoint) served by uvicorn on a free loopback port:
    (base URL, app)."""
    pytest.importorskip("fastapi")
    import uvicorn

    from charloom.config import ServeConfig
    from charloom.server import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # held from here on: no other test process can take the port meanwhile
    port = sock.getsockname()[1]
    app = create_app(model, ServeConfig(port=port, **limits))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "the test server did not start"
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="session")
def live(model_dir):
    """The app served by uvicorn on a free loopback port: (base URL, app)."""
    with serving(model_dir, max_length=100000, max_concurrent=2) as served:
        yield served


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium (or CHARLOOM_CHROMIUM) driven by Playwright, headless, its background services off:
    this machine's closed network refuses their connections."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=os.environ.get("CHARLOOM_CHROMIUM", "/usr/bin/chromium"), headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                    "--disable-component-update", "--disable-sync"])
        yield b
        b.close()
