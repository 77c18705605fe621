"""A fuzzed and loaded server: hypothesis-drawn requests and raw bytes against `charloom serve`, then load
at and twice over its concurrency limit.

    python bench/fuzz_server.py [--requests 1500] [--raw 300] [--seconds 15] [--limit 4] [--seed 0] [--no-write]

Starts `charloom serve` (as bench/serve_bench.py does: a small random-weight LSTM on a free loopback port,
at most --limit generations at once) and then:

1. Fuzz. --requests requests drawn by hypothesis go over one keep-alive connection (httpx.Client): JSON
   bodies over the request schema, each field valid or not (huge, negative, NaN, Infinity and 1e999
   numbers, integers of thousands of digits, lone surrogates and odd Unicode, wrong types, unknown fields,
   deep nesting, long and many stop strings, bodies that are not UTF-8); raw bodies (random bytes, cut or
   damaged JSON, UTF-16, wrong content types); odd methods, paths, Host and Origin headers. Then --raw
   requests written byte by byte to raw sockets (odd request lines and targets, bytes that are not ASCII
   in headers, missing or repeated Host, broken framing, pipelining, bytes that are not HTTP at all).
   Invariants: no answer of 500 or over; no reset, protocol error or hang; every error from the app is
   JSON with a non-empty `detail`; after an error the same connection still answers a valid request
   (200); the server logs no traceback. A malformed message that the HTTP layer refuses with its own
   plain-text 400 and a close (before the app sees it; with httptools that includes methods it does not
   know) is counted apart, and a new connection must then answer. Raw requests are written as a client
   must write them (RFC 9110): a large one in pieces, stopping when the server answers and closes, and a
   body after `Expect: 100-continue` or over the size limit only after a moment's wait for that answer.
2. Load. For --seconds each: --limit clients, then twice as many, each sending 200-character requests back
   to back, plain and streamed, and streamed to slow readers (a pause after every event). 429 is the limit
   working and is counted apart; anything else but a complete 200 is a failure. After each phase every
   generation slot must be free again.

Exits 1 when an invariant breaks, printing each failing request (cut short). --no-write prints the section
instead of writing it to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

import httpx
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
from serve_bench import free_port  # noqa: E402

from charloom import CharRNN, ModelConfig, checkpoint  # noqa: E402
from charloom.vocab import Vocab  # noqa: E402

COMMAND = "python bench/fuzz_server.py"
LENGTH = 200  # characters per load request
CONTROL = b'{"length": 3, "seed": 1}'  # the valid request sent after every error
TIMEOUT = 60.0  # a reply slower than this is a hang
MAX_LENGTH = 2000  # the server's defaults, which the fuzzed values straddle
MAX_START, MAX_STOPS, MAX_STOP_LENGTH, MAX_BODY = 2000, 8, 64, 65536


# ---- the server -------------------------------------------------------------------------------------
def start_server(tmp: Path, limit: int) -> tuple[subprocess.Popen, str, Path]:
    """`charloom serve` over a 1x64 LSTM with random weights: (process, base URL, its log file)."""
    vocab = Vocab.build("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\n")
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(num_layers=1, hidden_size=64, embedding=16, vocab_size=len(vocab)))
    path = checkpoint.save(tmp / "model.safetensors", model, vocab, records=False)
    port = free_port()
    log = tmp / "server.log"  # a file, not a pipe: a full pipe would stall the server's logging
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "charloom", "serve", "--checkpoint", str(path), "--port",
                                 str(port), "--max-concurrent", str(limit)], stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600  # minutes on a busy machine: Python and torch load first
    while time.time() < deadline:
        try:
            if httpx.get(base + "/healthz").status_code == 200:
                return proc, base, log
        except httpx.HTTPError:
            time.sleep(0.1)
        if proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"the server did not start:\n{log.read_text(errors='replace')}")


# ---- JSON with what json.dumps will not write ---------------------------------------------------------
class Raw(str):
    """Text put into a body as it is: NaN, 1e999, an integer of 5,000 digits, deep nesting, cut JSON."""


def dumps(value, ascii_only: bool = True) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return "{" + ", ".join(f"{dumps(str(k), ascii_only)}: {dumps(v, ascii_only)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(dumps(v, ascii_only) for v in value) + "]"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # json.dumps refuses an integer over 4300 digits
    return json.dumps(value, ensure_ascii=ascii_only)


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate written raw: bytes that are not UTF-8


# ---- strategies ---------------------------------------------------------------------------------------
ODD_CHARS = ["\x00", "\x7f", "\ufeff", "\u202e", "\u200b", "\ufffd", "\uffff", "\U0001f600", "\U0010ffff", "e\u0301",
             "\r\n", "\\", '"', "<bos>", "<eos>", "<unk>", "\ud800", "\udfff", "\udbff\udfff"]
TOKENS = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-999", "-0", "0e0", "1E+2", "1.0", "0.5e1", "-NaN",
          "+1", "01", ".5", "1.", "0x10", "nan", "inf", "true", "null", "1_000"]

texts = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(categories=["Cs"]) | st.characters(), max_size=12),
    st.lists(st.sampled_from(ODD_CHARS) | st.characters(), max_size=12).map("".join),
    st.sampled_from([MAX_START - 1, MAX_START, MAX_START + 1, MAX_STOP_LENGTH, MAX_STOP_LENGTH + 1, 8000, 40000,
                     MAX_BODY]).map(lambda k: "x" * k),
)
numbers = st.one_of(
    st.integers(-3, 40), st.integers(), st.integers(min_value=2**61),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-2, 12),
    st.sampled_from(TOKENS).map(Raw),
    st.integers(300, 5000).map(lambda k: Raw("9" * k)),  # past float's range; past 4300 digits json.loads refuses
    st.integers(300, 5000).map(lambda k: Raw("0." + "0" * k + "1")),
)
leaves = st.one_of(st.none(), st.booleans(), numbers, texts)
nested = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                          max_size=4), max_leaves=12)
deep = st.integers(1, 30000).flatmap(lambda d: st.sampled_from([
    Raw("[" * d + "]" * d), Raw('{"a": ' * d + "1" + "}" * d), Raw("[" * d), Raw('{"start": ' + "[" * d + "]" * d + "}")]))
anything = st.one_of(leaves, nested, deep)


def field_values(valid: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(valid, valid, anything)


stops = st.one_of(
    st.lists(texts, max_size=10),
    st.tuples(st.integers(0, 300), st.integers(0, 200)).map(lambda t: ["s" * t[1]] * t[0]),
)
FIELDS = {
    "start": field_values(st.text(max_size=20) | st.sampled_from(["ROMEO.", "To be", "\U0001f600", "\u00e9t\u00e9"])),
    "length": field_values(st.integers(0, 60) | st.sampled_from([MAX_LENGTH, MAX_LENGTH + 1])),
    "n": field_values(st.integers(0, 17)),
    "temperature": field_values(st.floats(0, 10) | st.integers(0, 10)),
    "top_k": field_values(st.integers(-1, 100)),
    "top_p": field_values(st.floats(0, 1.5)),
    "repetition_penalty": field_values(st.floats(0.5, 11)),
    "seed": field_values(st.integers(-1, 2**62 + 1)),
    "stop": field_values(stops),
    "stream": field_values(st.booleans()),
}
schema_bodies = st.builds(
    lambda fields, extra: {**fields, **extra},
    st.fixed_dictionaries({}, optional=FIELDS),
    st.dictionaries(st.text(max_size=12), anything, max_size=2) | st.just({}) | st.just({}),
)
json_bodies = st.one_of(schema_bodies, schema_bodies, schema_bodies, anything)


@dataclass
class Case:
    kind: str
    method: str = "POST"
    path: str = "/v1/generate"
    headers: dict = field(default_factory=lambda: {"content-type": "application/json"})
    body: bytes = b""
    raw: bytes = b""  # raw-socket cases: the bytes sent as they are
    replies: int = 1  # raw-socket cases: the requests in `raw`
    desync: bool = False  # raw-socket cases framed so the two ends disagree on where the message ends: what
    # follows it on the connection is read as part of it, so no valid request is sent after it

    def show(self) -> str:
        data = self.raw or self.body
        return f"{self.kind} {self.method} {self.path} {self.headers} {data[:160]!r}{'...' if len(data) > 160 else ''}"


json_cases = st.builds(lambda body, ascii_only: Case("json", body=encode(dumps(body, ascii_only))),
                       json_bodies, st.booleans())

CONTENT_TYPES = [None, "application/json", "application/json; charset=utf-8", "application/json; charset=utf-16",
                 "APPLICATION/JSON", "application/vnd.api+json", "application/json;;;", "application/jsonx",
                 "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "", " ",
                 "application/json, text/plain", b"application/json\xff"]


def damaged(data: st.DataObject) -> bytes:
    """A valid body cut short or with bytes changed."""
    body = bytearray(encode(dumps(data.draw(schema_bodies))))
    if body and data.draw(st.booleans()):
        return bytes(body[:data.draw(st.integers(0, len(body) - 1))])
    for _ in range(data.draw(st.integers(1, 4))):
        if body:
            body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    return bytes(body)


@st.composite
def byte_cases(draw) -> Case:
    kind = draw(st.sampled_from(["random", "damaged", "utf16", "empty", "large"]))
    if kind == "random":
        body = draw(st.binary(max_size=2000))
    elif kind == "damaged":
        body = damaged(draw(st.data()))
    elif kind == "utf16":
        body = dumps(draw(schema_bodies)).encode(draw(st.sampled_from(["utf-16", "utf-16-be", "utf-32"])), "surrogatepass")
    elif kind == "empty":
        body = b""
    else:
        body = b'{"start": "' + b"x" * draw(st.sampled_from([MAX_BODY - 14, MAX_BODY - 13, 200000])) + b'"}'
    ctype = draw(st.sampled_from(CONTENT_TYPES))
    return Case("bytes", headers={} if ctype is None else {"content-type": ctype}, body=body)


PATHS = ["/v1/generate", "/v1/generate/", "/V1/generate", "/v1/model", "/healthz", "/", "/docs", "/redoc",
         "/openapi.json", "/docs/oauth2-redirect", "/static/index.html", "/v1/generate?stream=true&length=-1",
         "/v1//generate", "/%2e%2e/%2e%2e/etc/passwd", "/v1/generate%00", "/\u00e9", "/" + "a" * 6000, "/nope"]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO"]
HOSTS = [None, "localhost", "evil.example", "", "localhost:99999", "[::1", "127.0.0.1:abc", "LOCALHOST.",
         "localhost, evil.example", "[::1]:80", "a" * 3000, "0.0.0.0", "127.0.0.1.nip.io", "xn--80ak6aa92e.com",
         b"\xff\xfe.example", b"localhost\x80"]
ORIGINS = [None, "null", "https://evil.example", "http://localhost:8000", "http://127.0.0.1", b"\xff"]


@st.composite
def odd_cases(draw) -> Case:
    method, path = draw(st.sampled_from(METHODS)), draw(st.sampled_from(PATHS))
    headers = {}
    for name, values in (("host", HOSTS), ("origin", ORIGINS), ("content-type", CONTENT_TYPES)):
        if (value := draw(st.sampled_from(values))) is not None:
            headers[name] = value
    if draw(st.booleans()):
        headers["access-control-request-method"] = draw(st.sampled_from(["POST", "GET", "PUT", "X"]))
    body = encode(dumps(draw(schema_bodies))) if method not in ("GET", "HEAD") and draw(st.booleans()) else b""
    return Case("method, path, host", method=method, path=path, headers=headers, body=body)


# raw sockets: the request written as bytes
REQUEST_LINES = [b"POST /v1/generate HTTP/1.1", b"GET /healthz HTTP/1.1", b"GET /healthz HTTP/1.0",
                 b"GET * HTTP/1.1", b"OPTIONS * HTTP/1.1", b"GET http://evil.example/v1/model HTTP/1.1",
                 b"GET http://localhost/v1/model HTTP/1.1", b"GET /\xff\xfe HTTP/1.1", b"GET /v1/model?\xe9=\xff HTTP/1.1",
                 b"GET /healthz HTTP/2.0", b"GET /healthz HTTP/9.9", b"GET /healthz", b"GET  /healthz  HTTP/1.1",
                 b"get /healthz HTTP/1.1", b"G\xc3\x89T /healthz HTTP/1.1", b"POST /v1/generate HTTP/1.1 extra",
                 b"GET /" + b"b" * 20000 + b" HTTP/1.1", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"]
RAW_HOSTS = [b"Host: localhost", b"Host: localhost", b"Host: 127.0.0.1", b"", b"Host: evil.example",
             b"Host: localhost\r\nHost: evil.example", b"Host: localhost\r\nHost: localhost", b"Host: \xff\xfe",
             b"Host:", b"Host : localhost", b"Host: local\x00host", b"Host:\tlocalhost", b"Host: localhost\r\n extra"]
RAW_EXTRA = [b"", b"", b"X-Long: " + b"v" * 70000, b"No colon here", b"Content-Type: \xff", b": empty name",
             b"X-\xff: 1", b"Connection: close", b"Connection: keep-alive, Upgrade\r\nUpgrade: websocket",
             b"Expect: 100-continue", b"Content-Type: application/json"]


@st.composite
def raw_cases(draw) -> Case:
    kind = draw(st.sampled_from(["request", "request", "framing", "pipelined", "garbage"]))
    if kind == "garbage":  # ended with an empty line, so no parser waits for more
        return Case("raw socket", raw=draw(st.binary(min_size=1, max_size=3000)) + b"\r\n\r\n")
    body = encode(dumps(draw(schema_bodies))) if draw(st.booleans()) else CONTROL
    host = draw(st.sampled_from(RAW_HOSTS))
    head = [b"POST /v1/generate HTTP/1.1", host or b"", b"Content-Type: application/json"]
    if kind == "request":
        head[0] = draw(st.sampled_from(REQUEST_LINES))
        head.append(draw(st.sampled_from(RAW_EXTRA)))
        head.append(b"Content-Length: %d" % len(body))
        data = b"\r\n".join(h for h in head if h) + b"\r\n\r\n" + body
    elif kind == "framing":
        framing = draw(st.sampled_from(["chunked", "bad chunk", "two lengths", "length and chunked", "length words",
                                        "negative", "plus", "huge chunk", "length short"]))
        if framing == "chunked":
            cut = draw(st.integers(0, len(body)))
            parts = [p for p in (body[:cut], body[cut:]) if p]
            data = (b"\r\n".join(h for h in head if h) + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n")
        elif framing in ("bad chunk", "huge chunk"):
            size = b"zz" if framing == "bad chunk" else b"f" * 40
            data = b"\r\n".join(h for h in head if h) + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\n"
        else:
            lengths = {"two lengths": [b"%d" % len(body), b"%d" % (len(body) + 1)], "length words": [b"ten"],
                       "length and chunked": [b"%d\r\nTransfer-Encoding: chunked" % len(body)], "negative": [b"-1"],
                       "plus": [b"+%d" % len(body)], "length short": [b"%d" % max(len(body) - 3, 0)]}[framing]
            head += [b"Content-Length: " + v for v in lengths]
            # ended with a line break, so a parser that reads the body as chunks has a whole (bad) size line
            end = b"\r\n" if framing == "length and chunked" else b""
            data = b"\r\n".join(h for h in head if h) + b"\r\n\r\n" + body + end
            return Case("raw socket", raw=data, desync=framing in ("length short", "length and chunked"))
    else:  # two requests in one write: both answered, in order
        one = b"\r\n".join(h for h in head if h) + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        return Case("raw socket", raw=one + b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", replies=2)
    return Case("raw socket", raw=data)


# ---- checks -------------------------------------------------------------------------------------------
def strict_json(data: bytes):
    def refuse(token):
        raise ValueError(f"{token} is not JSON")
    return json.loads(data, parse_constant=refuse)


def error_body_problem(status: int, content_type: str, body: bytes, method: str = "POST") -> str | None:
    """Why an error reply breaks the rules, or None."""
    if status < 400 or method == "HEAD":
        return None
    if not content_type.startswith("application/json"):
        return f"{status} error body is {content_type or 'untyped'}, not JSON: {body[:100]!r}"
    try:
        detail = strict_json(body).get("detail")
    except (ValueError, AttributeError) as e:
        return f"{status} error body is not a JSON object: {e}: {body[:100]!r}"
    if not detail:
        return f"{status} error body has no detail: {body[:100]!r}"
    return None


def stream_problem(body: bytes) -> str | None:
    """Why a 200 event stream is not complete, or None."""
    blocks = body.decode("utf-8", "replace").strip().split("\n\n")
    if not blocks[0].startswith("event: start") or not blocks[-1].startswith("event: done"):
        return f"incomplete stream: {body[:80]!r} ... {body[-80:]!r}"
    return None


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)
    counts: Counter = field(default_factory=Counter)  # resets, hangs, ... by name
    failures: list = field(default_factory=list)

    def fail(self, what: str, case: Case, why: str) -> None:
        self.counts[what] += 1
        self.failures.append(f"[{what}] {case.show()}\n    -> {why[:300]}")


class HttpFuzzer:
    """Sends cases over one keep-alive httpx connection and checks each reply."""

    def __init__(self, base: str, tally: dict[str, Tally]):
        self.base, self.tallies = base, tally
        self.client = httpx.Client(base_url=base, timeout=TIMEOUT, limits=httpx.Limits(max_connections=1))
        self.stream_id = None
        self.controls = 0

    def _send(self, method, path, headers, body):
        request = self.client.build_request(method, path, headers=headers, content=body)
        r = self.client.send(request, stream=True)
        try:
            r.read()
        finally:
            r.close()
        stream = r.extensions.get("network_stream")
        same = stream is self.stream_id or self.stream_id is None
        self.stream_id = stream
        return r, same

    def run(self, case: Case) -> None:
        tally = self.tallies.setdefault(case.kind, Tally())
        try:
            r, _ = self._send(case.method, case.path, case.headers, case.body)
        except httpx.LocalProtocolError:
            tally.statuses["not sendable"] += 1  # the client refuses to write it: see the raw-socket cases
            return
        except httpx.TimeoutException as e:
            tally.fail("hang", case, repr(e))
            self.reconnect()
            return
        except httpx.HTTPError as e:
            tally.fail("reset or protocol error", case, repr(e))
            self.reconnect()
            return
        tally.statuses[r.status_code] += 1
        ctype = r.headers.get("content-type", "")
        closed = r.headers.get("connection", "").lower() == "close"
        if r.status_code >= 500:
            tally.fail("5xx", case, f"{r.status_code} {r.content[:200]!r}")
        elif http_layer_refusal(r.status_code, ctype, closed):
            tally.counts["refused by the HTTP layer"] += 1  # e.g. a method the parser does not know
            self.control(case, tally, closed=True, expected=True)
            return
        elif problem := error_body_problem(r.status_code, ctype, r.content, case.method):
            tally.fail("error body", case, problem)
        elif r.status_code == 200 and ctype.startswith("text/event-stream") and (problem := stream_problem(r.content)):
            tally.fail("incomplete stream", case, problem)
        if r.status_code >= 400 or closed:
            self.control(case, tally, closed=closed)

    def control(self, case: Case, tally: Tally, closed: bool, expected: bool = False) -> None:
        """A valid request after an error: answered, and on the same connection unless the error was one
        that must close it (`expected`: malformed HTTP, after which the stream cannot be trusted)."""
        self.controls += 1
        try:
            r, same = self._send("POST", "/v1/generate", {"content-type": "application/json"}, CONTROL)
        except httpx.HTTPError as e:
            tally.fail("next request failed", case, repr(e))
            self.reconnect()
            return
        if r.status_code != 200:
            tally.fail("next request failed", case, f"{r.status_code} {r.content[:200]!r}")
        elif not same and not expected:
            tally.fail("connection closed after error", case, "the valid request after it needed a new connection"
                       + (" (the error said Connection: close)" if closed else ""))

    def reconnect(self) -> None:
        self.client.close()
        self.client = httpx.Client(base_url=self.base, timeout=TIMEOUT, limits=httpx.Limits(max_connections=1))
        self.stream_id = None


def http_layer_refusal(status: int, content_type: str, closed: bool) -> bool:
    """The HTTP layer's own answer to a message it cannot parse, given before the app sees it: a plain-text 400
    that closes the connection."""
    return status == 400 and content_type.startswith("text/plain") and closed


def read_response(f, method: bytes) -> tuple[int, dict, bytes] | None:
    """One HTTP/1.1 response from a socket file (after any 100 Continue): (status, headers, body), or None at
    a clean end of stream."""
    status = 100
    while 100 <= status < 200:
        line = f.readline(70000)
        if not line:
            return None
        status = int(line.split(None, 2)[1])
        headers = {}
        while (h := f.readline(70000)) not in (b"\r\n", b"\n", b""):
            name, _, value = h.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
    if method == b"HEAD" or status in (204, 304):
        return status, headers, b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while (size := int(f.readline(100).split(b";")[0], 16)):
            body += f.read(size)
            f.readline(10)
        f.readline(10)
        return status, headers, body
    if "content-length" in headers:
        return status, headers, f.read(int(headers["content-length"]))
    return status, headers, f.read()


def send_like_a_client(sock: socket.socket, raw: bytes, requests: int) -> None:
    """Writes a request as RFC 9110 asks of a client: a large request goes in pieces while watching for an
    early reply, and a body the server may not want (over its size limit, or after `Expect: 100-continue`)
    only after a moment's wait for one. When a reply says the connection closes, the rest is not sent: a
    server that refuses from the headers and closes (as it must, not to read without bound) has unread bytes in
    its socket, and the kernel answers them with a reset that can discard its reply. A reply that keeps the
    connection open means the server reads on, so the rest goes to keep the connection framed."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    unwanted = sep and (len(body) > MAX_BODY or b"100-continue" in head.lower())
    if requests > 1 or (len(raw) <= 16384 and not unwanted):
        pieces = [(raw, 0.0)]
    else:
        pieces = [(head[i:i + 16384], 0.05) for i in range(0, len(head), 16384)]
        pieces += [(sep + body[:16384], 1.0 if unwanted else 0.05)]
        pieces += [(body[i:i + 16384], 0.05) for i in range(16384, len(body), 16384)]
    answered = False  # a reply was seen: the rest is sent without waiting again
    for n, (piece, wait) in enumerate(pieces):
        if n and not answered and select.select([sock], [], [], wait)[0]:
            answered = True
            reply = sock.recv(4096, socket.MSG_PEEK).lower()
            if not reply.startswith(b"http/1.1 100") and b"\r\nconnection: close" in reply:
                return
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return  # the server answered and closed before reading it all: its reply is still read after


def raw_exchange(port: int, case: Case, tally: Tally) -> None:
    """Writes the case's bytes and reads every reply; a reply that keeps the connection open must be
    followed by a valid request answered on it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    f = sock.makefile("rb")
    try:
        send_like_a_client(sock, case.raw, case.replies)
        methods = [m.split(b" ")[0] for m in case.raw.split(b"\r\n") if b" HTTP/" in m] or [b"?"]
        replies = []
        try:
            for i in range(case.replies):
                reply = read_response(f, methods[min(i, len(methods) - 1)])
                if reply is None:
                    break
                replies.append(reply)
                if reply[1].get("connection", "").lower() == "close":
                    break
        except ConnectionResetError as e:
            tally.fail("reset or protocol error", case, repr(e))
            return
        except TimeoutError as e:
            tally.fail("hang", case, repr(e))
            return
        except (ValueError, IndexError) as e:
            tally.fail("reset or protocol error", case, f"unreadable reply: {e!r}")
            return
        if not replies:
            tally.fail("closed without a reply", case, "the server closed the connection and sent nothing")
            return
        for status, headers, body in replies:
            tally.statuses[status] += 1
            ctype = headers.get("content-type", "")
            if status >= 500:
                tally.fail("5xx", case, f"{status} {body[:200]!r}")
            elif http_layer_refusal(status, ctype, headers.get("connection", "").lower() == "close"):
                tally.counts["refused by the HTTP layer"] += 1  # malformed HTTP, answered before the app
            elif problem := error_body_problem(status, ctype, body, "GET"):
                tally.fail("error body", case, problem)
        status, headers, _ = replies[-1]
        if headers.get("connection", "").lower() == "close" or case.desync:
            return
        sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(CONTROL), CONTROL))
        try:
            reply = read_response(f, b"POST")
        except OSError as e:
            reply = None
            tally.fail("next request failed", case, repr(e))
            return
        if reply is None or reply[0] != 200:
            tally.fail("next request failed", case, f"after {status}: {reply and (reply[0], reply[2][:200])!r}")
    finally:
        f.close()
        sock.close()


def fuzz(base: str, requests: int, raw: int, seed: int) -> tuple[dict[str, Tally], int, float]:
    tallies: dict[str, Tally] = {}
    fuzzer = HttpFuzzer(base, tallies)
    port = int(base.rsplit(":", 1)[1])
    options = settings(max_examples=requests, database=None, deadline=None, phases=[Phase.generate],
                       suppress_health_check=list(HealthCheck))
    t0 = time.perf_counter()
    sent = [0]

    @hypothesis_seed(seed)
    @options
    @given(st.one_of(json_cases, json_cases, json_cases, byte_cases(), odd_cases()))
    def over_http(case):
        try:
            fuzzer.run(case)
        except Exception as e:  # the client's own trouble: shown, and the run goes on
            tallies.setdefault(case.kind, Tally()).fail("client error", case, repr(e))
            fuzzer.reconnect()
        sent[0] += 1
        if sent[0] % 250 == 0:
            print(f"  {sent[0]} requests, {time.perf_counter() - t0:.0f} s", flush=True)

    @hypothesis_seed(seed + 1)
    @settings(options, max_examples=raw)
    @given(raw_cases())
    def over_sockets(case):
        tally = tallies.setdefault(case.kind, Tally())
        try:
            raw_exchange(port, case, tally)
        except OSError as e:
            tally.fail("reset or protocol error", case, repr(e))
        except Exception as e:
            tally.fail("client error", case, repr(e))

    over_http()
    fuzzer.client.close()
    if raw:
        over_sockets()
    return tallies, fuzzer.controls, time.perf_counter() - t0


# ---- load ---------------------------------------------------------------------------------------------
def load_client(url: str, until: float, stream: bool, pause: float, out: list, seed: int) -> None:
    body = {"start": "ROMEO.", "length": LENGTH, "temperature": 0.8}
    with httpx.Client(timeout=TIMEOUT) as c:
        while time.perf_counter() < until:
            t0, first, why = time.perf_counter(), None, None
            try:
                if stream:
                    with c.stream("POST", url, json={**body, "seed": seed, "stream": True}) as r:
                        status, chars, done = r.status_code, 0, None
                        if status == 200:
                            for line in r.iter_lines():
                                if line.startswith('data: {"index"'):
                                    first = first or time.perf_counter() - t0
                                    chars += len(json.loads(line[6:])["text"])
                                    if pause:
                                        time.sleep(pause)
                                elif line.startswith("data: ") and chars == LENGTH:
                                    done = json.loads(line[6:])
                            if done is None or done["characters"] != LENGTH:
                                why = f"incomplete stream: {chars} characters, done={done}"
                        else:
                            r.read()
                            content = r.content
                else:
                    r = c.post(url, json={**body, "seed": seed})
                    status, content = r.status_code, r.content
                    if status == 200 and len(r.json()["samples"][0]["text"]) != LENGTH:
                        why = "short sample"
                if status == 429 and "too many generations" not in json.loads(content)["detail"]:
                    why = f"429 without its message: {content[:100]!r}"
                elif status not in (200, 429):
                    why = f"{status} {content[:200]!r}"
            except (httpx.HTTPError, ValueError, KeyError) as e:
                status, why = -1, repr(e)
            out.append((status, time.perf_counter() - t0, first, why))
            seed += 1
            if status == 429:
                time.sleep(0.01)


def free_slots(base: str, seconds: float = 10.0) -> int:
    """Active generations once the server settles (0 unless a slot leaked)."""
    deadline = time.time() + seconds
    while True:
        active = httpx.get(base + "/healthz", timeout=TIMEOUT).json()["active_generations"]
        if active == 0 or time.time() > deadline:
            return active
        time.sleep(0.05)


def quantiles(values: list[float]) -> tuple[str, str]:
    if not values:
        return "-", "-"
    values = sorted(v * 1000 for v in values)
    q = statistics.quantiles(values, n=100) if len(values) > 1 else values * 99
    return f"{q[49]:.0f}", f"{q[98]:.0f}"


def load(base: str, limit: int, seconds: float, pause: float) -> tuple[list[str], list[str]]:
    phases = [(f"{limit} clients (at the limit)", limit, False, 0.0),
              (f"{limit} clients, streamed", limit, True, 0.0),
              (f"{2 * limit} clients (twice over)", 2 * limit, False, 0.0),
              (f"{2 * limit} clients, streamed", 2 * limit, True, 0.0),
              (f"{2 * limit} clients, streamed, slow readers", 2 * limit, True, pause)]
    rows, failures = [], []
    for name, n, stream, slow in phases:
        results: list = []
        until = time.perf_counter() + seconds
        threads = [threading.Thread(target=load_client, args=(base + "/v1/generate", until, stream, slow, results,
                                                              1000 * i)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ok = [r for r in results if r[0] == 200 and r[3] is None]
        failed = [r for r in results if r[3] is not None]
        failures += [f"[load: {name}] {r[3][:300]}" for r in failed]
        if (active := free_slots(base)):
            failures.append(f"[load: {name}] {active} generation slots still taken afterwards")
        p50, p99 = quantiles([r[1] for r in ok])
        f50, f99 = quantiles([r[2] for r in ok if r[2] is not None]) if stream else ("-", "-")
        rows.append(report.row(name, len(results), len(ok), sum(r[0] == 429 and r[3] is None for r in results),
                               len(failed), p50, p99, f50, f99))
        print(rows[-1], flush=True)
    return rows, failures


# ---- main ---------------------------------------------------------------------------------------------
FAILURES = ["5xx", "reset or protocol error", "hang", "closed without a reply", "error body", "incomplete stream",
            "next request failed", "connection closed after error", "client error"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1500, help="fuzzed requests over one keep-alive connection")
    ap.add_argument("--raw", type=int, default=300, help="fuzzed requests written to raw sockets")
    ap.add_argument("--seconds", type=float, default=15.0, help="length of each load phase")
    ap.add_argument("--limit", type=int, default=4, help="the server's --max-concurrent")
    ap.add_argument("--pause", type=float, default=0.01, help="slow readers: seconds between events")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md as it is")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, base, log = start_server(Path(tmp), args.limit)
        try:
            print(f"fuzzing {base}: {args.requests} requests over one connection, {args.raw} over raw sockets",
                  flush=True)
            tallies, controls, fuzz_s = fuzz(base, args.requests, args.raw, args.seed)
            failures = [f for t in tallies.values() for f in t.failures]
            if (active := free_slots(base)):
                failures.append(f"[fuzz] {active} generation slots still taken afterwards")
            rows, load_failures = load(base, args.limit, args.seconds, args.pause) if args.seconds > 0 else ([], [])
            failures += load_failures
            alive = proc.poll() is None
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        server_log = log.read_text(errors="replace")
    tracebacks = server_log.count("Traceback")
    if tracebacks:
        at = server_log.index("Traceback")
        failures.append(f"[server log] {tracebacks} tracebacks, the first:\n{server_log[max(at - 300, 0):at + 3000]}")
    if not alive:
        failures.append("[server] the process died")

    kinds = ["json", "bytes", "method, path, host", "raw socket"]
    fuzz_rows = []
    for kind in [k for k in kinds if k in tallies]:
        t = tallies[kind]
        statuses = " ".join(f"{s}: {n}" for s, n in sorted(t.statuses.items(), key=lambda kv: str(kv[0])))
        fuzz_rows.append(report.row(kind, sum(t.statuses.values()), statuses,
                                    t.counts["refused by the HTTP layer"] or "-",
                                    *(t.counts[f] for f in FAILURES)))
    all_statuses = Counter()
    for t in tallies.values():
        all_statuses.update(t.statuses)
    n_http = sum(sum(t.statuses.values()) for k, t in tallies.items() if k != "raw socket")
    body = "\n".join([
        "## A fuzzed and loaded server: no 5xx, no reset",
        "",
        f"Command: `{COMMAND} --requests {args.requests} --raw {args.raw} --seconds {args.seconds:g} "
        f"--limit {args.limit} --pause {args.pause:g} --seed {args.seed}`.",
        f"Machine: {report.machine()}; client threads and the server share its {os.cpu_count()} cores; uvicorn "
        f"{version('uvicorn')} parsing HTTP with "
        f"{'httptools ' + version('httptools') if find_spec('httptools') else 'h11 ' + version('h11')}.",
        f"`charloom serve` over a 1x64 LSTM with random weights, at most {args.limit} generations at once, its "
        "other limits at their defaults.",
        "",
        f"Fuzz: {n_http} hypothesis-drawn requests over one keep-alive connection (JSON over the request schema, "
        "raw bodies and content types, odd methods, paths and headers) and "
        f"{sum(tallies['raw socket'].statuses.values()) if 'raw socket' in tallies else 0} replies to bytes "
        f"written to raw sockets, in {fuzz_s:.0f} s; {controls} valid requests followed the errors on the same "
        "connection. A reply is counted by status; the failure columns must all be 0 (an error body that is not "
        "JSON with a `detail`; a valid request after an error that failed or needed a new connection). Malformed "
        "HTTP that the HTTP layer refuses with its own plain-text 400 and a close, before the app (with httptools, "
        "methods it does not know too), is counted apart; a new connection must then answer.",
        "",
        *report.table(["requests", "replies", "by status", "HTTP-layer 400s", *FAILURES], fuzz_rows),
        "",
        f"All replies by status: {', '.join(f'{s}: {n}' for s, n in sorted(all_statuses.items(), key=lambda kv: str(kv[0])))}.",
        f"Tracebacks in the server's log: {tracebacks}.",
    ])
    if rows:
        body += "\n" + "\n".join([
            "",
            f"Load: each phase {args.seconds:g} s of clients sending {LENGTH}-character requests back to back "
            f"(one keep-alive connection each); slow readers pause {args.pause * 1000:g} ms after every event. "
            "A 429 is the limit working; a failure is anything but a complete 200 or a 429. Latency is of the "
            "complete replies; first chunk is the time to the first generated text of a stream. After each phase "
            + ("a generation slot was still taken (see the failures)." if any("slots still taken" in f for f in failures)
               else "every generation slot was free again."),
            "",
            *report.table(["phase", "requests", "complete", "429s", "failures", "p50 ms", "p99 ms",
                           "first chunk p50 ms", "first chunk p99 ms"], rows),
        ])
    body += f"\n\nInvariants broken: {len(failures)}.\n"
    print(body)
    if not args.no_write:
        report.write_section("fuzz-server", body)
    if failures:
        print(f"\n{len(failures)} failures:", file=sys.stderr)
        for f in failures:
            print(f if f.startswith("[server log]") else f[:1500], file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
