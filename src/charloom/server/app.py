"""A FastAPI app over one checkpoint: POST /v1/generate (JSON or server-sent events), GET /v1/model,
GET /healthz, the playground at /, OpenAPI docs at /docs.

The model is loaded once, at start, from the path given on the command line; no request can name a
file. Every limit answers with a 4xx that names the field: 422 for a value out of range or of the wrong
JSON type (true/false, an integer and a string are taken as they are written, never converted), an unknown
field or a body that is not readable JSON, 415 for a body not sent as JSON, 413 for a body over
`max_body`, 429 when `max_concurrent` generations are already running. A streaming client that goes
away stops its generation within a step.

Only loopback names, the address listened on and `allow_hosts` are answered (others get 403), and no
other web origin may read the replies unless `cors_origins` names it: a page on another site can
neither use the API from a visitor's browser nor reach it by pointing its own domain here.

The sampling fields of a request are SampleOptions' (config.py): their defaults, ranges and messages are
the CLI's and the Python API's. Only the server's own limits (`max_length`, `max_n`, `max_start`,
`max_stops`, `max_stop_length`) and the transport (`stream`) are added here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import socket
import threading
import time
import typing
import weakref
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import Checkpoint
from ..checkpoint import load as load_checkpoint
from ..config import SampleOptions, ServeConfig
from ..errors import CharloomError, ConfigError
from ..curves import CHART_FILE
from ..insight import activations, read
from ..runinfo import describe
from ..sampling import Generator

try:
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.exceptions import RequestValidationError
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field, SkipValidation, create_model
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # pragma: no cover - depends on the environment
    raise CharloomError("the server needs the 'serve' extra: pip install 'charloom[serve]'") from e


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
ANY_ADDRESS = ("0.0.0.0", "::")  # listen on every interface: an address to bind, never a name a client uses
# uvicorn's own logger: its lines come out with uvicorn's, at the level `serve` gives it
log = logging.getLogger("uvicorn.error")


def _request_model() -> type[BaseModel]:
    """The request body as the OpenAPI docs show it: SampleOptions' fields with their defaults and help,
    and `stream`. Pydantic checks none of SampleOptions' values (SkipValidation): SampleOptions does, so
    a request is refused by the CLI's rules with the CLI's messages. The fields added here are strict, as
    SampleOptions' are: `"stream": "true"` or `1` is refused, not read as true."""
    hints = typing.get_type_hints(SampleOptions)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(SampleOptions):
        tp, default, about = hints[f.name], f.default, f.metadata["help"]
        if f.name == "length":  # the server's operator chooses this default
            tp, default, about = tp | None, None, f"{about}; default: the server's --default-length"
        fields[f.name] = (SkipValidation[tp], Field(default, description=about))
    fields["stream"] = (bool, Field(False, description="send characters as server-sent events as they are made"))
    fields["logprobs"] = (bool, Field(False, description="with each sample, the probability the model gave each "
                                                         "character and the 5 likeliest alternatives"))
    return create_model("GenerateRequest", __config__=ConfigDict(extra="forbid", strict=True),
                        __doc__="Every field is optional; the sampling fields and their defaults are `charloom "
                                "sample`'s (n is --num-samples).", **fields)


GenerateRequest = _request_model()


class ReadRequest(BaseModel):
    """A text for the model to read."""

    model_config = ConfigDict(extra="forbid", strict=True)  # as GenerateRequest's: no "3" for 3, no 1 for true
    text: str = Field(description="the text to read")
    context: str = Field("", description="text read before it, not scored (a records model reads <bos> first)")


class ScoreRequest(ReadRequest):
    """A text to read: what the model expected at each of its characters."""

    ngram: bool = Field(True, description="a model with an n-gram of its training text: score with it mixed in "
                                          "(false: the network alone)")


class ActivationsRequest(ReadRequest):
    """A text to read one character at a time, keeping a layer's hidden units."""

    state: str = Field("h", description="which state: h, or c (an LSTM's cell)")
    layer: int = Field(0, description="which layer, from 0")
    units: list[int] | None = Field(None, description="the units whose values to return (default: the `top` that "
                                                      "vary most over the text)")
    top: int = Field(16, ge=1, le=64, description="how many of the most varying units to list")


def _field_error(field: str, msg: str, status: int = 422) -> HTTPException:
    return HTTPException(status, detail=[{"loc": ["body", field], "msg": msg, "type": "value_error"}])


async def _send_json(send, status: int, detail: list[dict[str, Any]]) -> None:
    """An answer from a middleware, before any route runs, shaped as the routes' errors are."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _options_error(e: ConfigError) -> HTTPException:
    """SampleOptions' `field: message` (or `field[i]: ...`, `field (--flag): ...`) as a 422 naming the field."""
    where, _, msg = str(e).partition(": ")
    m = re.fullmatch(r"(\w+)(?:\[(\d+)\])?(?: \(.*\))?", where)
    if m is None:
        return HTTPException(422, detail=[{"loc": ["body"], "msg": str(e), "type": "value_error"}])
    loc = ["body", m[1]] + ([int(m[2])] if m[2] else [])
    return HTTPException(422, detail=[{"loc": loc, "msg": msg, "type": "value_error"}])


def _printable(part: Any) -> Any:
    """A string with any lone surrogate written as an escape, so that it can be encoded in a reply."""
    return part.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(part, str) else part


class _BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 before any of it is parsed."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._refuse(send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send):
        await _send_json(send, 413, [{"loc": ["body"], "msg": f"request body over {self.limit} bytes",
                                      "type": "too_large"}])


class _TooLarge(BaseException):
    """Raised from inside the body reader; a BaseException so that the framework's handlers for
    Exception (which would answer 400) let it through to _BodyLimit."""


def _host_name(value: str) -> str:
    """The host part of a Host header (or of an --allow-host value): lower case, without the port, the
    brackets of an IPv6 address or a final dot, so that equal names compare equal."""
    value = value.strip().lower()
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:  # more than one colon: a bare IPv6 address, which has no port
        value = value.partition(":")[0]
    return value.rstrip(".")


def _allowed_hosts(cfg: ServeConfig) -> frozenset[str]:
    """The Host names the server answers: loopback, the address it listens on, and `allow_hosts`."""
    names = set(LOOPBACK_HOSTS) | {_host_name(h) for h in cfg.allow_hosts}
    if _host_name(cfg.host) not in ANY_ADDRESS:
        names.add(_host_name(cfg.host))
    return frozenset(names)


class _HostCheck:
    """ASGI middleware: a request whose Host header names none of `allowed` gets 403 ("*" allows any).

    A web page can point a domain of its own at this machine (DNS rebinding) and then read the replies
    as its own origin, past any CORS rule; its requests still carry that domain as Host, so they are
    refused here, before they reach a route."""

    def __init__(self, app, allowed: frozenset[str]):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or "*" in self.allowed:
            return await self.app(scope, receive, send)
        given = [v.decode("latin-1") for k, v in scope.get("headers") or [] if k == b"host"]
        if given and all(_host_name(h) in self.allowed for h in given):
            return await self.app(scope, receive, send)
        if given:
            bad = next(h for h in given if _host_name(h) not in self.allowed)
            msg = (f"host {bad!r} is not served here: start the server with --allow-host {_host_name(bad)} "
                   f"if clients reach it by that name")
        else:
            msg = "no Host header: send the name the server is reached by (see --allow-host)"
        await _send_json(send, 403, [{"loc": ["header", "host"], "msg": msg, "type": "host_not_allowed"}])


class _Once:
    """Calls `fn` the first time it is called, never again."""

    def __init__(self, fn):
        self._fn, self._lock, self._done = fn, threading.Lock(), False

    def __call__(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._fn()


class _Slots:
    """At most `n` generations at once; a request over the limit is refused at once (429), never queued."""

    def __init__(self, n: int):
        self._sem = threading.BoundedSemaphore(n)
        self._lock = threading.Lock()
        self.active = 0
        self.characters = 0  # generated since start, over all requests

    def take(self) -> None:
        if not self._sem.acquire(blocking=False):
            raise HTTPException(429, detail="too many generations running; try again shortly")
        with self._lock:
            self.active += 1

    def give(self) -> None:
        with self._lock:
            self.active -= 1
        self._sem.release()

    def count(self, n: int) -> None:
        with self._lock:
            self.characters += n


def request_options(req: BaseModel, cfg: ServeConfig, gen: Generator) -> SampleOptions:
    """A request's SampleOptions, within the server's limits, with the seed it will use."""
    given = {f.name: getattr(req, f.name) for f in dataclasses.fields(SampleOptions)}
    if given["length"] is None:
        given["length"] = cfg.default_length
    try:
        opts = SampleOptions(**given)
    except ConfigError as e:
        raise _options_error(e) from None
    if opts.length > cfg.max_length:
        raise _field_error("length", f"at most {cfg.max_length} characters per sample")
    if opts.n > cfg.max_n:
        raise _field_error("n", f"at most {cfg.max_n} samples per request")
    if len(opts.start) > cfg.max_start:
        raise _field_error("start", f"at most {cfg.max_start} characters")
    # each stop string is looked for after every character generated: their number and length bound what
    # that costs per character, however long the body that sent them
    if len(opts.stop) > cfg.max_stops:
        raise _field_error("stop", f"at most {cfg.max_stops} stop strings")
    for i, text in enumerate(opts.stop):
        if len(text) > cfg.max_stop_length:
            raise _field_error("stop", f"stop strings of at most {cfg.max_stop_length} characters "
                                       f"(stop[{i}] has {len(text)})")
    if gen.vocab.unknown == "error" and (unknown := gen.unknown_characters(opts.start)):
        raise _field_error("start", f"characters not in the model's vocabulary: {''.join(unknown)!r}")
    if opts.label is not None:  # said now: a stream that has begun can only break off
        try:
            gen.vocab.label_id(opts.label)
        except CharloomError as e:
            raise _options_error(ConfigError(str(e))) from None
    try:  # said now, naming the field: a stream that has begun can only break off
        gen.check_memory(opts)
    except ConfigError as e:
        raise _options_error(e) from None
    if opts.seed is None:  # say which seed was used, so the text can be made again
        opts = opts.replace(seed=int.from_bytes(os.urandom(6), "big"))
    return opts


# how long SIGTERM or Ctrl-C lets running generations go on before they are cut: a request may ask for minutes
SHUTDOWN_SECONDS = 3
GONE_SECONDS = 0.2  # how often a generation that answers at its end asks whether its client is still there
SHOWN_UNKNOWN = 40  # unknown characters a warning names at most: a text in another script has thousands


def unknown_warnings(gen: Generator, route: str, **texts: str) -> list[dict[str, Any]]:
    """What the answer says, one entry per field, and the server logs in one line per request, of the texts
    a request gave (`start=...`, or `text=..., context=...`) with characters the model has never seen and
    reads as <unk>. A vocabulary that refuses them has had the request answered 422 instead."""
    if gen.vocab.unknown != "unk":
        return []
    notes = []
    for field, text in texts.items():
        if unknown := gen.unknown_characters(text):
            more = f" and {len(unknown) - SHOWN_UNKNOWN:,} more" if len(unknown) > SHOWN_UNKNOWN else ""
            msg = f"characters not in the model's vocabulary, read as <unk>: {''.join(unknown[:SHOWN_UNKNOWN])!r}{more}"
            notes.append({"loc": ["body", field], "msg": msg, "type": "unknown_characters"})
    if notes:
        log.warning("%s: %s", route, "; ".join(f"{n['loc'][1]}: {n['msg']}" for n in notes))
    return notes


class _Runner:
    """Runs the generations of all requests over one Generator, one step at a time: concurrent requests
    interleave step by step instead of fighting over the cores (and the interpreter) with a thread each."""

    _END = object()

    def __init__(self, gen: Generator, slots: _Slots):
        self.gen, self.slots = gen, slots
        self.lock = threading.Lock()  # one step (or one reading) at a time

    @contextlib.contextmanager
    def turn(self) -> typing.Iterator[None]:
        """The model for one step or one reading: one caller at a time, its kernels on the calling thread alone.
        Work runs on the server's worker threads, not the main one, and there torch's kernels spread over the
        cores wait on each other at every small operation: a 10-minute model wrote 670-720 characters/s at batch
        1 on 2 kernel threads from a worker thread, 1,570 on one (2,000 from the main thread). The count is the
        calling thread's own (OpenMP's; a thread that has already run torch keeps its count, as the main thread,
        which loaded the model, does), and it is checked at every turn, since other code may set it again."""
        with self.lock:
            if torch.get_num_threads() != 1:
                torch.set_num_threads(1)
            yield

    def _next(self, it):
        with self.turn():
            return next(it, self._END)

    def read(self, text: str, opts: SampleOptions) -> list[dict[str, Any]]:
        """What the model expected at each character of a sample it wrote with `opts`."""
        with self.turn():
            return read(self.gen, text, opts.start, label=opts.label, ngram=opts.ngram).to_json()

    async def collect(self, opts: SampleOptions, gone: typing.Callable[[], typing.Awaitable[bool]]) -> list[str]:
        """The samples `opts` asks for, a step at a time as `events` writes them. `gone()`, asked every
        GONE_SECONDS, says whether the client left: its generation ends there, as a stream's does."""
        out = [""] * opts.n
        it = self.gen.quietly(opts)  # unknown_warnings has told of unknown start characters
        try:
            while True:
                items, ended = await run_in_threadpool(self._steps, it, GONE_SECONDS)
                for i, piece in items:
                    out[i] += piece
                    self.slots.count(len(piece))
                if ended or await gone():
                    break
        finally:
            it.close()
        return out

    def _steps(self, it, seconds: float) -> tuple[list[tuple[int, str]], bool]:
        """The pieces of `it`'s steps for about `seconds`, each step its own turn, so that other requests' steps
        interleave with them (one hop to a worker thread for many steps); and whether `it` ended."""
        items, until = [], time.monotonic() + seconds
        while time.monotonic() < until:
            if (item := self._next(it)) is self._END:
                return items, True
            items.append(item)
        return items, False

    async def events(self, opts: SampleOptions, release: _Once, logprobs: bool = False,
                     notes: list[dict[str, Any]] | None = None):
        """Server-sent events: `event: start` with the settings and `notes` (unknown_warnings), one
        `data: {"index", "text"}` per piece, then (asked for) one `event: logprobs` per sample with its
        characters' probabilities, then `event: done` with the totals."""
        t0 = time.perf_counter()
        chars = 0
        texts: list[list[str]] = [[] for _ in range(opts.n)]
        it = None
        try:
            it = self.gen.quietly(opts)  # unknown_warnings has told of unknown start characters
            start = {"settings": opts.to_dict(), "warnings": notes or []}
            yield f"event: start\ndata: {json.dumps(start)}\n\n"
            while True:
                item = await run_in_threadpool(self._next, it)
                if item is self._END:
                    break
                i, piece = item
                chars += len(piece)
                texts[i].append(piece)
                self.slots.count(len(piece))
                # a client that goes away makes this yield fail or be cancelled: the finally below ends the work
                yield f"data: {json.dumps({'index': i, 'text': piece}, ensure_ascii=False)}\n\n"
            for i, pieces in enumerate(texts if logprobs else ()):
                reading = await run_in_threadpool(self.read, "".join(pieces), opts)
                yield f"event: logprobs\ndata: {json.dumps({'index': i, 'logprobs': reading}, ensure_ascii=False)}\n\n"
            dt = time.perf_counter() - t0
            done = {"characters": chars, "seconds": round(dt, 4), "chars_per_s": round(chars / dt) if dt else None}
            yield f"event: done\ndata: {json.dumps(done)}\n\n"
        finally:
            if it is not None:
                it.close()  # a client that went away stops the generation here
            release()


def _is_json(content_type: str | None) -> bool:
    kind = (content_type or "").partition(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if not _is_json(request.headers.get("content-type")) and any(tuple(e["loc"]) == ("body",) for e in errors):
        # the body was never read as JSON, and pydantic's "valid dictionary" message does not say why. It
        # stays unread: a form or text body is what a page on another site may send without asking first
        given = request.headers.get("content-type") or "none"
        msg = f"send the body as a JSON object with the header Content-Type: application/json (got: {given})"
        return JSONResponse({"detail": [{"loc": ["header", "content-type"], "msg": _printable(msg),
                                         "type": "unsupported_media_type"}]}, status_code=415)
    # pydantic's errors carry the input they refused, which may be NaN or a lone surrogate: neither can be
    # written in a JSON reply, so the answer keeps where and what, as _field_error's do
    detail = [{"loc": [_printable(p) for p in e["loc"]], "msg": _printable(e["msg"]), "type": e["type"]}
              for e in errors]
    return JSONResponse({"detail": detail}, status_code=422)


async def _unreadable_body(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI answers a body that json.loads refuses with anything but a syntax error (an integer of over
    4300 digits, bytes that are not UTF-8, arrays or objects nested deeper than the interpreter's recursion
    limit) with a 400 that does not say what is wrong: say it, as the other errors do."""
    cause = exc.__cause__
    if exc.status_code == 400 and isinstance(cause, (ValueError, RecursionError)):
        why = str(cause).partition(";")[0]  # the rest is advice for the server's own code
        return JSONResponse({"detail": [{"loc": ["body"], "msg": f"not readable as JSON: {_printable(why)}",
                                         "type": "json_invalid"}]}, status_code=422)
    return await http_exception_handler(request, exc)


async def _charloom_error(request: Request, exc: CharloomError) -> JSONResponse:
    return JSONResponse({"detail": _printable(str(exc))}, status_code=422)


def create_app(checkpoint: str | Path | Checkpoint, cfg: ServeConfig | None = None) -> FastAPI:
    cfg = cfg or ServeConfig()
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    ck.model.eval()
    gen = Generator.from_checkpoint(ck)
    gen.stepper()  # prepare the step's tables now, not inside the first request
    if ck.mixture is not None:
        ck.mixture.ngram.orders()  # and the n-gram's counts
    slots = _Slots(cfg.max_concurrent)
    runner = _Runner(gen, slots)
    app = FastAPI(title="charloom", version="1", summary="Character-level text generation from one model.")
    app.state.slots = slots
    page = (resources.files("charloom.server") / "static" / "index.html").read_text(encoding="utf-8")

    @app.post("/v1/generate")
    async def generate(req: GenerateRequest, request: Request):
        opts = request_options(req, cfg, gen)
        slots.take()
        # after the slot: a request turned away logs nothing
        notes = unknown_warnings(gen, "/v1/generate", start=opts.start)
        if req.stream:
            release = _Once(slots.give)
            events = runner.events(opts, release, req.logprobs, notes)
            weakref.finalize(events, release)  # a stream that never starts still gives its slot back
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            t0 = time.perf_counter()
            texts = await runner.collect(opts, request.is_disconnected)
            dt = time.perf_counter() - t0
            samples = [{"text": t} for t in texts]
            for sample in samples if req.logprobs else ():
                sample["logprobs"] = await run_in_threadpool(runner.read, sample["text"], opts)
        finally:
            slots.give()
        chars = sum(map(len, texts))
        return {"samples": samples, "settings": opts.to_dict(), "warnings": notes,
                "timing": {"seconds": round(dt, 4), "characters": chars, "chars_per_s": round(chars / dt) if dt else None}}

    @app.get("/v1/model")
    def model_info() -> dict[str, Any]:
        return {"config": ck.config.to_dict(), "states": list(ck.model.cell.state), "vocab_size": len(ck.vocab),
                "characters": "".join(ck.vocab.chars), "labels": list(ck.vocab.labels),
                "records": ck.records, "parameters": ck.model.num_parameters(), "training": ck.info,
                "ngram": {"order": ck.mixture.ngram.order, "characters": len(ck.mixture.ngram.ids)} if ck.mixture else None,
                "limits": cfg.to_dict()}

    _add_reading_routes(app, runner, ck, cfg)
    _add_run_routes(app, ck)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "active_generations": slots.active, "generated_characters": slots.characters}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def playground() -> str:
        return page

    _add_guards(app, cfg)
    return app


def _add_run_routes(app: FastAPI, ck: Checkpoint) -> None:
    """The run the model came from: its report and its training chart."""

    @app.get("/v1/report")
    def report() -> dict[str, Any]:
        """`charloom info`'s report of the served model (without samples: the playground makes its own)."""
        return describe(ck.path, samples=0, ck=ck) if ck.path else {}

    @app.get("/v1/curves.png", include_in_schema=False)
    def curves_png() -> Response:
        """The training chart of the run folder the model was loaded from, when it has one."""
        chart = ck.path.parent / CHART_FILE if ck.path else None
        if chart is None or not chart.is_file():
            raise HTTPException(404, detail="no training chart beside this model (a run folder trained with the "
                                            "plot extra has one)")
        return Response(chart.read_bytes(), media_type="image/png", headers={"Cache-Control": "no-cache"})


def _add_reading_routes(app: FastAPI, runner: _Runner, ck: Checkpoint, cfg: ServeConfig) -> None:
    """What the model expects of a text, and what its hidden units do while it reads one."""
    gen, slots = runner.gen, runner.slots

    def checked(req: ScoreRequest, limit: int, flag: str) -> None:
        if len(req.text) > limit:
            raise _field_error("text", f"at most {limit} characters (the server's --{flag})")
        if len(req.context) > cfg.max_start:
            raise _field_error("context", f"at most {cfg.max_start} characters")
        for name in ("text", "context"):
            try:
                SampleOptions(start=getattr(req, name))  # the start text's checks: no lone surrogates
            except ConfigError as e:
                raise _field_error(name, str(e).partition(": ")[2]) from None

    def busy(fn, *args, **kwargs):
        slots.take()
        try:
            with runner.turn():
                return fn(*args, **kwargs)
        finally:
            slots.give()

    @app.post("/v1/score")
    async def score(req: ScoreRequest) -> dict[str, Any]:
        checked(req, cfg.max_score, "max-score")
        reading = await run_in_threadpool(busy, read, gen, req.text, req.context, ngram=req.ngram)
        # after the reading: a request turned away (429) or refused (422) logs nothing
        notes = unknown_warnings(gen, "/v1/score", text=req.text, context=req.context)
        return {"text": reading.text, "bpc": round(reading.bpc, 5) if len(reading.probs) else None,
                "characters": reading.to_json(), "warnings": notes}

    @app.post("/v1/activations")
    async def hidden(req: ActivationsRequest) -> dict[str, Any]:
        checked(req, cfg.max_trace, "max-trace")
        names = list(ck.model.cell.state)
        if req.state not in names:
            raise _field_error("state", f"one of {', '.join(names)} for this {ck.config.cell}")
        if not 0 <= req.layer < ck.config.num_layers:
            raise _field_error("layer", f"from 0 to {ck.config.num_layers - 1}")
        if req.units is not None and (len(req.units) > 64 or any(not 0 <= u < ck.config.hidden_size for u in req.units)):
            raise _field_error("units", f"at most 64 units, each from 0 to {ck.config.hidden_size - 1}")
        acts = await run_in_threadpool(busy, activations, gen, req.text, req.context)
        notes = unknown_warnings(gen, "/v1/activations", text=req.text, context=req.context)
        varying = acts.varying(req.state, req.layer, req.top)
        units = req.units if req.units is not None else [u for u, _ in varying]
        values = acts.values[req.state][req.layer]  # (N, H)
        return {"text": acts.text, "state": req.state, "layer": req.layer, "hidden_size": ck.config.hidden_size,
                "varying": [{"unit": u, "std": round(sd, 5)} for u, sd in varying],
                "values": {str(u): np.round(values[:, u], 4).tolist() for u in units}, "warnings": notes}


def _add_guards(app: FastAPI, cfg: ServeConfig) -> None:
    """The error answers and the middleware around every route."""
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _unreadable_body)
    app.add_exception_handler(CharloomError, _charloom_error)
    # the last added runs first: the Host check before anything else, then CORS, so that its headers are
    # on every answer from the body limit and the routes; a browser sends an Origin in lower case
    app.add_middleware(_BodyLimit, limit=cfg.max_body)
    if cfg.cors_origins:  # an Origin header is never sent with a trailing slash
        app.add_middleware(CORSMiddleware, allow_origins=[o.rstrip("/").lower() for o in cfg.cors_origins],
                           allow_methods=["GET", "POST"], allow_headers=["Content-Type"])
    app.add_middleware(_HostCheck, allowed=_allowed_hosts(cfg))


def _url_name(name: str) -> str:
    return f"[{name}]" if ":" in name else name


def startup_lines(checkpoint: str | Path, cfg: ServeConfig) -> list[str]:
    """What `charloom serve` prints as it starts: where it serves and, when it listens beyond loopback,
    which Host names it answers (a client that reaches it by any other name gets 403)."""
    listen = _host_name(cfg.host)
    # 0.0.0.0 is an address to bind, not one to browse to: such a Host is refused, so show one that works
    shown = f"127.0.0.1:{cfg.port}" if listen in ANY_ADDRESS else f"{_url_name(listen)}:{cfg.port}"
    where = " on every interface" if listen in ANY_ADDRESS else ""
    lines = [f"charloom: serving {checkpoint}{where} at http://{shown}/ (API docs at /docs)"]
    if listen in LOOPBACK_HOSTS:
        return lines
    allowed = _allowed_hosts(cfg)
    if "*" in allowed:
        lines.append("charloom: requests are answered whatever their Host header names (--allow-host '*')")
        return lines
    names = [*LOOPBACK_HOSTS, *([listen] if listen in allowed else []),
             *sorted(allowed - set(LOOPBACK_HOSTS) - {listen})]
    lines.append(f"charloom: only requests to {', '.join(map(_url_name, names))} are answered (loopback names, "
                 "the address listened on and --allow-host names); others get 403. To reach the server by another "
                 "name or address (this machine's name or LAN address, a domain), start it with --allow-host NAME "
                 "(repeatable)")
    return lines


def _bind(cfg: ServeConfig) -> socket.socket:
    """The listening socket, bound here: a port in use or a host that does not resolve is one line naming the
    flag before the server starts (uvicorn would log its own error after the line that says it serves), and a
    port of 0 becomes the one the system gave, which the start-up line can then show."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(cfg.host, cfg.port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise CharloomError(f"--host {cfg.host}: cannot be resolved to an address ({e})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart need not wait
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise CharloomError(f"--port {cfg.port}: cannot listen at {cfg.host}:{cfg.port} "
                            f"({e.strerror or e})") from None
    return sock


def serve(checkpoint: str | Path, cfg: ServeConfig) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    app = create_app(checkpoint, cfg)
    sock = _bind(cfg)
    cfg = cfg.replace(port=sock.getsockname()[1])
    print("\n".join(startup_lines(checkpoint, cfg)), flush=True)
    uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning",
                                  timeout_graceful_shutdown=SHUTDOWN_SECONDS)).run(sockets=[sock])


__all__ = ["GenerateRequest", "create_app", "request_options", "serve", "startup_lines"]
