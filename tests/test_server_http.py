"""The server as a browser, a shell and a reused connection meet it: Host names, CORS, content types,
keep-alive after errors, and the README's own curl lines."""

import http.client
import json
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from charloom.config import ServeConfig

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from charloom.server import create_app  # noqa: E402
from test_server import sse  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def make_client(model_dir):
    """A TestClient over an app with these ServeConfig fields."""
    def make(**fields) -> TestClient:
        return TestClient(create_app(model_dir, ServeConfig(**fields)), base_url="http://localhost:8000")
    return make


# ---- Host: DNS rebinding ----------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "LocalHost:1234", "127.0.0.1", "127.0.0.1:80",
                                  "[::1]", "[::1]:8000"])
def test_loopback_hosts_are_answered(make_client, host):
    r = make_client().get("/healthz", headers={"host": host})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "localhost.evil.example", "127.0.0.1.nip.io",
                                  "0.0.0.0:8000", "[::2]:8000"])
def test_other_hosts_are_403_naming_the_flag(make_client, host):
    # a page that points its own domain at 127.0.0.1 reaches the server with that domain as Host
    client = make_client()
    for r in (client.get("/v1/model", headers={"host": host}),
              client.post("/v1/generate", json={"length": 5}, headers={"host": host})):
        assert r.status_code == 403, r.text
        [detail] = r.json()["detail"]
        assert detail["loc"] == ["header", "host"] and "--allow-host" in detail["msg"]


def test_the_listen_address_and_allowed_hosts_are_answered(make_client):
    client = make_client(host="192.168.1.5", allow_hosts=("box.lan", "example.org:8443", "[fd00::7]"))
    for host in ("192.168.1.5:8000", "box.lan", "BOX.LAN:8000", "example.org", "[fd00::7]:80", "localhost"):
        assert client.get("/healthz", headers={"host": host}).status_code == 200, host
    assert client.get("/healthz", headers={"host": "other.lan"}).status_code == 403


def test_listening_on_every_interface_answers_no_more_names(make_client):
    client = make_client(host="0.0.0.0")
    assert client.get("/healthz", headers={"host": "0.0.0.0:8000"}).status_code == 403
    assert client.get("/healthz", headers={"host": "127.0.0.1:8000"}).status_code == 200


def test_a_star_allows_any_host(make_client):
    assert make_client(allow_hosts=("*",)).get("/healthz", headers={"host": "evil.example"}).status_code == 200


def test_listening_beyond_loopback_says_which_hosts_are_answered():
    from charloom.server.app import startup_lines

    assert len(startup_lines("m", ServeConfig())) == 1  # loopback only: nothing more to say
    first, access = startup_lines("m", ServeConfig(host="0.0.0.0", port=8123))
    assert "every interface at http://127.0.0.1:8123/" in first  # 0.0.0.0 as a Host gets 403
    assert "only requests to localhost, 127.0.0.1, [::1] are answered" in access
    assert "0.0.0.0" not in access and "--allow-host NAME" in access and "403" in access
    _, access = startup_lines("m", ServeConfig(host="192.168.1.5", allow_hosts=("box.lan", "[fd00::7]")))
    assert "only requests to localhost, 127.0.0.1, [::1], 192.168.1.5, box.lan, [fd00::7] are answered" in access
    _, any_host = startup_lines("m", ServeConfig(host="0.0.0.0", allow_hosts=("*",)))
    assert "whatever their Host" in any_host


def test_serve_prints_the_hosts_it_answers(model_dir, capsys, monkeypatch):
    import uvicorn

    from charloom.server import serve

    ran = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: ran.append(sockets))
    serve(model_dir, ServeConfig(host="0.0.0.0", port=0))
    first, access = capsys.readouterr().out.splitlines()
    assert first.startswith("charloom: serving") and "--allow-host NAME" in access
    (sock,) = ran[0]  # the socket bound before the line was printed, and the port it was given shown
    try:
        assert f"at http://127.0.0.1:{sock.getsockname()[1]}/" in first
    finally:
        sock.close()


# ---- CORS -------------------------------------------------------------------------------------------
def preflight(client, origin):
    return client.options("/v1/generate", headers={"origin": origin, "access-control-request-method": "POST",
                                                  "access-control-request-headers": "content-type"})


def test_no_origin_may_read_replies_by_default(make_client):
    client = make_client()
    assert "access-control-allow-origin" not in preflight(client, "https://evil.example").headers
    r = client.get("/v1/model", headers={"origin": "https://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_cors_origin_allows_that_origin_only(make_client):
    client = make_client(cors_origins=("http://localhost:3000/",))
    ok = preflight(client, "http://localhost:3000")
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://localhost:3000"
    r = client.post("/v1/generate", json={"length": 5}, headers={"origin": "http://localhost:3000"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "access-control-allow-origin" not in preflight(client, "https://evil.example").headers
    other = client.get("/v1/model", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_a_cors_origin_given_in_capitals_matches_the_browsers_lower_case(make_client):
    client = make_client(cors_origins=("HTTP://LocalHost:3000",))  # scheme and host know no case
    ok = preflight(client, "http://localhost:3000")
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://localhost:3000"


# ---- content type -----------------------------------------------------------------------------------
@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "text/plain"])
def test_a_body_not_sent_as_json_is_415_naming_the_header(make_client, content_type):
    # a cross-site page may send form or text bodies without a preflight: they are never read as JSON
    headers = {"content-type": content_type} if content_type else {}
    r = make_client().post("/v1/generate", content=b'{"length": 5}', headers=headers)
    assert r.status_code == 415, r.text
    [detail] = r.json()["detail"]
    assert detail["loc"] == ["header", "content-type"] and "Content-Type: application/json" in detail["msg"]


def test_json_content_types_with_parameters_are_read(make_client):
    r = make_client().post("/v1/generate", content=b'{"length": 5}',
                           headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200 and len(r.json()["samples"][0]["text"]) == 5


# ---- one connection, many errors (a real uvicorn server) --------------------------------------------
ERRORS = [  # (body, extra headers, status)
    (b'{"temperature": NaN}', {}, 422),
    (b'{"length": 1e999}', {}, 422),
    (b'{"start": "\\ud800"}', {}, 422),
    (b'{"stop": [Infinity]}', {}, 422),
    (b'{"seed": 1' + b"0" * 4400 + b"}", {}, 422),
    (b'{"start": "\xff"}', {}, 422),
    (b'{"start": 1', {}, 422),
    (b'{"stop": ["' + b"e" * 7900 + b'"]}', {}, 422),
    (b'{"length": 5}', {"Host": "evil.example"}, 403),
    (b'{"length": 5}', {"Content-Type": "application/x-www-form-urlencoded"}, 415),
    (b'{"start": "' + b"x" * 70000 + b'"}', {}, 413),
    (iter([b'{"start": "', b"y" * 70000, b'"}']), {}, 413),  # chunked: refused while it is read
]


def test_the_connection_stays_usable_after_every_error(live):
    url, _ = live
    conn = http.client.HTTPConnection(urlsplit(url).hostname, urlsplit(url).port, timeout=30)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() and conn.sock is not None
        sock = conn.sock
        for body, headers, status in ERRORS:
            conn.request("POST", "/v1/generate", body=body,
                         headers={"Content-Type": "application/json", **headers})
            r = conn.getresponse()
            reply = json.loads(r.read())  # every error is JSON
            assert r.status == status, (body[:40] if isinstance(body, bytes) else body, reply)
            assert isinstance(reply["detail"], list) and reply["detail"][0]["msg"]
            assert conn.sock is sock, f"the server closed the connection after a {status}"
            conn.request("POST", "/v1/generate", body=b'{"length": 7, "seed": 3}',
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            assert r.status == 200 and len(json.loads(r.read())["samples"][0]["text"]) == 7
            assert conn.sock is sock
    finally:
        conn.close()


# ---- the README's curl lines, as written ------------------------------------------------------------
def readme_curl_lines() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Serve a model", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("curl ")]


def test_the_readme_curl_lines_work(live):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    url, _ = live
    lines = readme_curl_lines()
    assert len(lines) == 2, lines
    replies = []
    for line in lines:
        assert "localhost:8000" in line
        args = shlex.split(line.replace("localhost:8000", f"localhost:{urlsplit(url).port}"), comments=True)
        p = subprocess.run([curl, *args[1:], "--max-time", "60"], capture_output=True, text=True, timeout=90)
        assert p.returncode == 0, p.stderr
        replies.append(p.stdout)
    plain = json.loads(replies[0])
    assert "samples" in plain, plain
    assert len(plain["samples"][0]["text"]) == 200 and plain["settings"]["seed"] == 1
    events = sse(replies[1])
    assert events[0][0] == "start" and events[-1][0] == "done", replies[1][:300]
    streamed = "".join(data["text"] for event, data in events if event == "message")
    assert len(streamed) == events[-1][1]["characters"] == events[0][1]["settings"]["length"]


# ---- malformed HTTP: refused by the HTTP layer, never an exception in the app ------------------------------
MALFORMED = [  # framing a parser refuses only after the headers, sent with a Host the app refuses at once
    b"Content-Length: 24\r\nContent-Length: 25",
    b"Content-Length: -1",
    b"Transfer-Encoding: chunked\r\n\r\n" + b"f" * 40 + b"\r\n",
]


@pytest.mark.parametrize("framing", MALFORMED)
def test_malformed_framing_gets_one_answer_and_no_exception(live, framing):
    import logging
    import socket

    url, _ = live
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.ERROR)
    handler.emit = records.append
    logging.getLogger("uvicorn.error").addHandler(handler)
    try:
        head, _, rest = framing.partition(b"\r\n\r\n")
        with socket.create_connection((urlsplit(url).hostname, urlsplit(url).port), timeout=30) as sock:
            sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: evil.example\r\nContent-Type: application/json\r\n"
                         + head + b"\r\n\r\n" + (rest or b'{"length": 3, "seed": 1}'))
            reply = b""
            while chunk := sock.recv(65536):  # the server closes: a malformed stream cannot be trusted
                reply += chunk
    finally:
        logging.getLogger("uvicorn.error").removeHandler(handler)
    assert reply.startswith((b"HTTP/1.1 400", b"HTTP/1.1 403")) and reply.count(b"HTTP/1.1 ") == 1, reply[:300]
    # an app answering a request its HTTP layer has already refused raises inside the server
    assert not records, [r.getMessage() for r in records]
