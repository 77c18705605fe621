import json
import threading
import time

import httpx
import pytest

from charloom.config import ServeConfig

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from charloom.server import create_app  # noqa: E402
from charloom.server.app import SHUTDOWN_SECONDS  # noqa: E402

@pytest.fixture
def client(model_dir):
    app = create_app(model_dir, ServeConfig(max_length=500, max_n=4, max_start=50, max_body=2000, max_concurrent=2))
    return TestClient(app, base_url="http://localhost:8000")  # a Host the server answers, as a browser sends it


@pytest.fixture(scope="module")
def default_client(model_dir):
    """The server with its default limits (bodies up to 64 KiB)."""
    return TestClient(create_app(model_dir, ServeConfig()), base_url="http://localhost:8000")


def sse(text):
    """Parse a server-sent-events body into (event, data) pairs."""
    out = []
    for block in text.strip().split("\n\n"):
        event, data = "message", ""
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data += line[6:]
        out.append((event, json.loads(data)))
    return out


def test_generate_happy_path(client):
    r = client.post("/v1/generate", json={"start": "To be", "length": 40, "n": 3, "seed": 5, "temperature": 0.9})
    assert r.status_code == 200
    body = r.json()
    assert len(body["samples"]) == 3 and all(len(s["text"]) == 40 for s in body["samples"])
    assert body["settings"]["seed"] == 5 and body["settings"]["temperature"] == 0.9
    assert body["timing"]["characters"] == 120
    again = client.post("/v1/generate", json={"start": "To be", "length": 40, "n": 3, "seed": 5, "temperature": 0.9})
    assert again.json()["samples"] == body["samples"]


def test_the_model_runs_on_one_kernel_thread_in_the_workers_and_the_main_thread_keeps_its_own(client, monkeypatch):
    # from a worker thread, kernels spread over the cores wait on each other at every small operation; the
    # count is the calling thread's own, so the main thread, which has run torch already, keeps its count
    import threading

    import torch

    from charloom.sampling import Generator

    main = torch.get_num_threads()
    seen = []
    step = Generator._step

    def counted(self, ids, state):
        seen.append((threading.current_thread() is threading.main_thread(), torch.get_num_threads()))
        return step(self, ids, state)

    monkeypatch.setattr(Generator, "_step", counted)
    assert client.post("/v1/generate", json={"length": 20, "n": 2}).status_code == 200
    events = sse(client.post("/v1/generate", json={"length": 20, "stream": True}).text)
    assert events[-1][0] == "done"
    assert len(seen) >= 19 * 2 and set(seen) == {(False, 1)}
    assert torch.get_num_threads() == main


def test_every_field_is_optional(client):
    r = client.post("/v1/generate", json={})
    from charloom.config import SampleOptions

    assert r.status_code == 200 and len(r.json()["samples"][0]["text"]) == SampleOptions().length  # as the CLI
    assert isinstance(r.json()["settings"]["seed"], int)  # the seed used is reported


def test_model_health_docs_and_playground(client):
    m = client.get("/v1/model").json()
    assert m["config"]["cell"] == "lstm" and m["vocab_size"] > 4 and m["parameters"] > 0
    assert m["training"]["step"] == 30 and m["training"]["val_bpc"] > 0
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/docs").status_code == 200
    assert "/v1/generate" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "charloom playground" in page.text and "Generate" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN


def test_streamed_text_equals_the_non_streamed_text(client):
    req = {"start": "Whether", "length": 60, "n": 2, "seed": 11, "temperature": 1.0}
    plain = client.post("/v1/generate", json=req).json()["samples"]
    r = client.post("/v1/generate", json={**req, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert events[0][0] == "start" and events[-1][0] == "done"
    texts = ["", ""]
    for event, data in events:
        if event == "message":
            texts[data["index"]] += data["text"]
    assert texts == [s["text"] for s in plain]
    assert events[-1][1]["characters"] == 120


@pytest.mark.parametrize("body, field", [
    ({"length": 501}, "length"),
    ({"length": -1}, "length"),
    ({"n": 5}, "n"),
    ({"n": 0}, "n"),
    ({"temperature": -0.5}, "temperature"),
    ({"top_k": -1}, "top_k"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"start": "x" * 51}, "start"),
    ({"seed": -3}, "seed"),
    ({"temprature": 0.5}, "temprature"),
    ({"stream": "sometimes"}, "stream"),
])
def test_limits_answer_4xx_naming_the_field(client, body, field):
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 422
    assert any(d["loc"][-1] == field for d in r.json()["detail"]), r.json()


def test_server_cli_and_python_share_the_defaults(client, model_dir):
    from charloom.cli import build_parser, options
    from charloom.config import SampleConfig, SampleOptions

    defaults = SampleOptions()
    ns = build_parser().parse_args(["sample", "--checkpoint", str(model_dir)])
    cli, sweep = options(ns, SampleOptions), options(ns, SampleConfig)
    assert cli == defaults and sweep.each(cli) == [defaults]  # one generation, with every default
    settings = client.post("/v1/generate", json={"seed": 1}).json()["settings"]
    assert settings == {**defaults.to_dict(), "seed": 1}
    assert settings["temperature"] == defaults.temperature == sweep.temperature_list[0] == 0.8
    schema = client.get("/openapi.json").json()["components"]["schemas"]["GenerateRequest"]["properties"]
    assert schema["temperature"]["default"] == defaults.temperature and schema["n"]["default"] == defaults.n


@pytest.mark.parametrize("field, value, flag", [
    ("temperature", -0.5, "--temperature"),
    ("temperature", 10.5, "--temperature"),
    ("top_k", -1, "--top-k"),
    ("top_p", 1.5, "--top-p"),
    ("repetition_penalty", 0.5, "--repetition-penalty"),
    ("n", 0, "--num-samples"),
    ("length", -1, "--length"),
    ("seed", 2**70, "--seed"),
])
def test_an_out_of_range_value_reads_the_same_everywhere(client, model_dir, capsys, field, value, flag):
    from charloom.cli import main
    from charloom.config import SampleOptions
    from charloom.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        SampleOptions(**{field: value})
    python = str(e.value)
    assert main(["sample", "--checkpoint", str(model_dir), flag, str(value)]) == 2
    flagged = python.replace(f"{field}:", f"{field} ({flag}):", 1)  # the CLI names the flag the user typed too
    assert capsys.readouterr().err == f"charloom: error: {flagged}\n"  # one line
    r = client.post("/v1/generate", json={field: value})
    assert r.status_code == 422
    [detail] = r.json()["detail"]
    assert detail["loc"] == ["body", field] and detail["type"] == "value_error"
    assert python.startswith(field) and python.endswith(": " + detail["msg"])


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize("field", ["temperature", "top_p", "repetition_penalty", "top_k", "length", "n", "seed"])
def test_non_finite_numbers_are_422_not_500(client, field, number):
    r = client.post("/v1/generate", content=f'{{"{field}": {number}}}'.encode(),
                    headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", field]


@pytest.mark.parametrize("template", ['{"temperature": %s}', '{"length": %s}', '{"n": %s}', '{"seed": %s}',
                                      '{"stream": %s}', '{"stop": [%s]}', '{"unknown": %s}', "-%s"])
def test_an_integer_over_4300_digits_is_422_naming_the_body(default_client, template):
    # json.loads refuses it (CPython's limit on int-from-text), which FastAPI answered with a bare 400
    body = template % ("1" + "0" * 4300)
    r = default_client.post("/v1/generate", content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    [detail] = r.json()["detail"]
    assert detail["loc"] == ["body"] and "4300 digits" in detail["msg"] and detail["type"] == "json_invalid"


@pytest.mark.parametrize("body", ["[" * 5000 + "]" * 5000, '{"start": ' + "[" * 5000 + "]" * 5000 + "}",
                                  '{"a": ' * 3000 + "1" + "}" * 3000, "[" * 20000])
def test_deeply_nested_json_is_422_naming_the_body(default_client, body):
    # json.loads gives up with a RecursionError, which FastAPI answered with a bare 400
    r = default_client.post("/v1/generate", content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    [detail] = r.json()["detail"]
    assert detail["loc"] == ["body"] and "recursion" in detail["msg"] and detail["type"] == "json_invalid"


def test_a_body_that_is_not_utf8_is_422_naming_the_body(client):
    r = client.post("/v1/generate", content=b'{"start": "\xff"}', headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body"] and "utf-8" in r.json()["detail"][0]["msg"]


@pytest.mark.parametrize("field", ["temperature", "top_p", "repetition_penalty"])
def test_an_integer_past_float_range_is_422_not_500(client, field):
    r = client.post("/v1/generate", content=f'{{"{field}": 1{"0" * 400}}}'.encode(),
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", field], r.text


@pytest.mark.parametrize("body", ['{"stream": NaN}', '{"nope": Infinity}', '{"\\ud800": 1}', "NaN", '{"start": 1'])
def test_refused_bodies_that_pydantic_reads_still_answer_422(client, body):
    r = client.post("/v1/generate", content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert all(set(d) == {"loc", "msg", "type"} for d in r.json()["detail"])


@pytest.mark.parametrize("body, loc", [
    ('{"start": "To \\ud800be"}', ["body", "start"]),
    ('{"stop": ["ok", "\\udfff"]}', ["body", "stop", 1]),
])
def test_a_lone_surrogate_is_422_naming_the_field(client, body, loc):
    r = client.post("/v1/generate", content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    [detail] = r.json()["detail"]
    assert detail["loc"] == loc and "lone surrogate" in detail["msg"]


def test_wrong_types_and_server_limits_name_the_field(client):
    for body, field in (({"temperature": "0.5"}, "temperature"), ({"n": 1.5}, "n"), ({"stop": "x"}, "stop"),
                        ({"stop": ["a"] * 9}, "stop"), ({"seed": True}, "seed")):
        r = client.post("/v1/generate", json=body)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", field], r.text


@pytest.mark.parametrize("path, body, field", [
    ("/v1/generate", {"ngram": 1}, "ngram"),  # SampleOptions' own check, the rule every other field follows
    ("/v1/generate", {"stream": "true"}, "stream"),
    ("/v1/generate", {"stream": 1}, "stream"),
    ("/v1/generate", {"logprobs": 1}, "logprobs"),
    ("/v1/generate", {"logprobs": "false"}, "logprobs"),
    ("/v1/score", {"text": "To be", "ngram": 0}, "ngram"),
    ("/v1/score", {"text": "To be", "ngram": "yes"}, "ngram"),
    ("/v1/score", {"text": 5}, "text"),
    ("/v1/score", {"text": "To be", "context": ["To"]}, "context"),
    ("/v1/activations", {"text": "To be", "layer": "0"}, "layer"),
    ("/v1/activations", {"text": "To be", "layer": 0.0}, "layer"),
    ("/v1/activations", {"text": "To be", "layer": False}, "layer"),
    ("/v1/activations", {"text": "To be", "top": "3"}, "top"),
    ("/v1/activations", {"text": "To be", "top": 3.0}, "top"),
    ("/v1/activations", {"text": "To be", "units": ["1"]}, "units"),
    ("/v1/activations", {"text": "To be", "units": [1.0]}, "units"),
    ("/v1/activations", {"text": "To be", "state": 0}, "state"),
])
def test_every_field_takes_only_its_own_json_type(client, path, body, field):
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    [detail] = r.json()["detail"]
    assert detail["loc"][:2] == ["body", field], detail


def test_values_of_the_right_json_type_are_taken(client):
    r = client.post("/v1/generate", json={"length": 5, "stream": False, "logprobs": True, "ngram": False})
    assert r.status_code == 200 and len(r.json()["samples"][0]["logprobs"]) == 5, r.text
    assert client.post("/v1/score", json={"text": "To be", "context": "", "ngram": False}).status_code == 200
    r = client.post("/v1/activations", json={"text": "To be", "state": "h", "layer": 0, "top": 3, "units": [1]})
    assert r.status_code == 200 and list(r.json()["values"]) == ["1"], r.text


@pytest.fixture
def server_log():
    """The records the server logs on uvicorn's logger while the test runs. A handler on that logger itself:
    uvicorn's logging setup (once a live server has run) stops its records before the root logger."""
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    logging.getLogger("uvicorn.error").addHandler(handler)
    yield records
    logging.getLogger("uvicorn.error").removeHandler(handler)


def test_unknown_start_characters_are_one_log_line_and_a_warning_in_the_answer(client, server_log):
    import warnings

    body = {"start": "To Z\u00e9~", "length": 5, "seed": 1}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filters = list(warnings.filters)
        plain = client.post("/v1/generate", json=body)
        streamed = client.post("/v1/generate", json={**body, "stream": True})
        known = client.post("/v1/generate", json={**body, "start": "To be"})
        assert warnings.filters == filters  # the server's own filter is gone after each request
    assert not [str(w.message) for w in caught if "vocabulary" in str(w.message)]  # no raw Python warning
    note = {"loc": ["body", "start"], "msg": "characters not in the model's vocabulary, read as <unk>: 'Z~\u00e9'",
            "type": "unknown_characters"}
    assert plain.status_code == 200 and plain.json()["warnings"] == [note], plain.text
    assert len(plain.json()["samples"][0]["text"]) == 5
    assert sse(streamed.text)[0] == ("start", {"settings": plain.json()["settings"], "warnings": [note]})
    assert known.json()["warnings"] == []
    assert [r.getMessage() for r in server_log] == [f"/v1/generate: start: {note['msg']}"] * 2


@pytest.mark.parametrize("path", ["/v1/score", "/v1/activations"])
def test_unknown_characters_read_are_one_log_line_and_a_warning_in_the_answer(client, server_log, path):
    # the served corpus has no Z, ~, \u00e9 or Q: each is read as <unk>, and said so, per field
    unknown = client.post(path, json={"text": "To Z\u00e9~ be"})
    both = client.post(path, json={"text": "To Z\u00e9~ be", "context": "Q"})
    clean = client.post(path, json={"text": "To be", "context": "To"})
    refused = client.post(path, json={"text": "Z", "context": "Q" * 51})  # over max_start: 422, nothing read
    text = {"loc": ["body", "text"], "msg": "characters not in the model's vocabulary, read as <unk>: 'Z~\u00e9'",
            "type": "unknown_characters"}
    context = {**text, "loc": ["body", "context"],
               "msg": "characters not in the model's vocabulary, read as <unk>: 'Q'"}
    assert unknown.status_code == 200 and unknown.json()["warnings"] == [text], unknown.text
    assert unknown.json()["text"] == "To Z\u00e9~ be"  # still read, every character
    assert both.json()["warnings"] == [text, context]
    assert clean.status_code == 200 and clean.json()["warnings"] == []
    assert refused.status_code == 422
    assert [r.getMessage() for r in server_log] == [f"{path}: text: {text['msg']}",
                                                    f"{path}: text: {text['msg']}; context: {context['msg']}"]


def test_a_generation_past_memory_is_a_422_naming_the_field_before_any_stream(client, monkeypatch):
    import charloom.decoding

    monkeypatch.setattr(charloom.decoding, "memory_cap", lambda: 1000)  # bytes: any generation is too large
    for stream in (False, True):
        r = client.post("/v1/generate", json={"start": "To be", "length": 50, "n": 3, "stream": stream})
        assert r.status_code == 422, r.text  # not a 200 whose stream then breaks off
        (detail,) = r.json()["detail"]
        assert detail["loc"] == ["body", "n"] and "fewer or shorter samples" in detail["msg"]


def test_stop_strings_are_bounded_by_the_servers_limits(model_dir):
    # every stop string is looked for after every character: their number and length bound that work
    app = create_app(model_dir, ServeConfig(max_stops=2, max_stop_length=5))
    client = TestClient(app, base_url="http://localhost:8000")
    for stop, msg in ((["a", "b", "c"], "at most 2 stop strings"),
                      (["abcde", "abcdef"], "stop strings of at most 5 characters (stop[1] has 6)")):
        r = client.post("/v1/generate", json={"stop": stop, "length": 5})
        assert r.status_code == 422, r.text
        assert r.json()["detail"] == [{"loc": ["body", "stop"], "msg": msg, "type": "value_error"}]
    ok = client.post("/v1/generate", json={"stop": ["zzzzz", "qqqqq"], "length": 20, "seed": 1})
    assert ok.status_code == 200 and len(ok.json()["samples"][0]["text"]) == 20


def test_the_default_stop_limits_refuse_the_slow_request(default_client):
    # 8 stop strings of 7,900 characters once held a generation slot for 51 s instead of half a second
    r = default_client.post("/v1/generate", json={"stop": ["e" * 7900] * 8})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "stop"], r.text
    assert "at most 64 characters (stop[0] has 7900)" in r.json()["detail"][0]["msg"]


def test_body_over_the_limit_is_413(client):
    r = client.post("/v1/generate", content=json.dumps({"start": "x" * 3000}),
                    headers={"content-type": "application/json"})
    assert r.status_code == 413
    chunked = client.post("/v1/generate", content=iter([b'{"start": "', b"y" * 2500, b'"}']),
                          headers={"content-type": "application/json"})
    assert chunked.status_code == 413


def test_a_request_cannot_name_a_file(client, tmp_path):
    r = client.post("/v1/generate", json={"checkpoint": str(tmp_path)})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "checkpoint"


# ---- against a real server on a free loopback port (the `live` fixture) -----------------------------
def test_concurrency_over_the_limit_is_429(live):
    url, app = live
    clients = [httpx.Client(timeout=30) for _ in range(3)]  # one connection each
    streams = [c.stream("POST", f"{url}/v1/generate", json={"length": 100000, "stream": True}) for c in clients[:2]]
    readers = []  # kept alive: a dropped line iterator closes its connection, which stops that generation
    try:
        for s in streams:
            resp = s.__enter__()
            assert resp.status_code == 200
            readers.append(resp.iter_lines())
            while not next(readers[-1]).startswith('data: {"index"'):
                pass  # this one is generating now
        assert app.state.slots.active == 2
        third = clients[2].post(f"{url}/v1/generate", json={"length": 10})
        assert third.status_code == 429, third.text
        assert "too many generations" in third.json()["detail"]
    finally:
        for s in streams:
            s.__exit__(None, None, None)
        for c in clients:
            c.close()


def _characters_once_idle(slots) -> int:
    """The characters generated once no generation runs, checked to stay so for half a second."""
    deadline = time.time() + 5
    while slots.active and time.time() < deadline:
        time.sleep(0.02)
    assert slots.active == 0
    before = slots.characters
    time.sleep(0.5)
    assert slots.characters == before
    return before


def test_a_disconnect_mid_stream_stops_the_work(live):
    url, app = live
    slots = app.state.slots
    with httpx.Client(timeout=30) as c:
        with c.stream("POST", f"{url}/v1/generate", json={"length": 100000, "stream": True}) as resp:
            lines = resp.iter_lines()
            got = 0
            for line in lines:
                got += line.startswith("data: ")
                if got > 50:
                    break
            assert slots.active >= 1
    assert _characters_once_idle(slots) < 100000  # nothing is generated for a client that left
    assert httpx.get(f"{url}/healthz").json()["active_generations"] == 0


def test_a_client_that_leaves_a_plain_request_stops_its_work(live):
    """Not streamed, the answer comes at the end: a client that gives up before it (a timeout) ends the generation
    and gives its slot back, as a stream's does, rather than leave the work to run to its length."""
    url, app = live
    slots = app.state.slots
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{url}/v1/generate", json={"length": 100000, "n": 4}, timeout=0.5)
    assert _characters_once_idle(slots) < 400000  # stopped, far short of the four samples' length
    assert httpx.post(f"{url}/v1/generate", json={"length": 5}).status_code == 200


def test_serve_command_starts_and_refuses_a_bad_path(model_dir, tmp_path):
    import os
    import re
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "charloom", "serve", "--checkpoint", str(model_dir), "--port",
                             "0", "--max-n", "2", "--max-length", "1000000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=os.environ.copy())
    try:
        line = proc.stdout.readline()  # port 0: the system's free port, which the line shows
        assert "serving" in line
        port = int(re.search(r"at http://127\.0\.0\.1:(\d+)/", line).group(1))
        deadline = time.time() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/model")
                break
            except httpx.HTTPError:
                assert time.time() < deadline
                time.sleep(0.1)
        assert r.json()["limits"]["max_n"] == 2
        bad = httpx.post(f"http://127.0.0.1:{port}/v1/generate", json={"n": 3})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "n"
        # a long generation under way does not hold the server past SIGTERM's grace
        long = threading.Thread(target=lambda: httpx.post(f"http://127.0.0.1:{port}/v1/generate",
                                                          json={"length": 1000000, "n": 2}, timeout=60), daemon=True)
        long.start()
        while httpx.get(f"http://127.0.0.1:{port}/healthz").json()["active_generations"] == 0:
            assert time.time() < deadline
            time.sleep(0.05)
        t0 = time.time()
        proc.terminate()
        proc.wait(20)
        assert time.time() - t0 < SHUTDOWN_SECONDS + 5
    finally:
        proc.kill()  # whatever happened above, no server is left behind
        proc.wait(20)
    p = subprocess.run([sys.executable, "-m", "charloom", "serve", "--checkpoint", str(tmp_path / "none")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "no such model file or run folder" in p.stderr and "Traceback" not in p.stderr


def test_the_listening_socket_is_bound_before_the_server_starts():
    """A port in use is one line naming --port (uvicorn would log its own error after the line that says it
    serves); port 0 becomes the port the system gave, so the start-up line shows an address that works."""
    import socket

    from charloom.errors import CharloomError
    from charloom.server import app as server_app

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(CharloomError, match=rf"^--port {port}: cannot listen at 127.0.0.1:{port} \("):
            server_app._bind(ServeConfig(host="127.0.0.1", port=port))
    finally:
        taken.close()
    sock = server_app._bind(ServeConfig(host="127.0.0.1", port=0))
    try:
        given = sock.getsockname()[1]
        assert given > 0
        line = server_app.startup_lines("m.safetensors", ServeConfig(host="127.0.0.1", port=given))[0]
        assert f"http://127.0.0.1:{given}/" in line
    finally:
        sock.close()
