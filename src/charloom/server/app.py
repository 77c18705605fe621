"""A FastAPI app over one checkpoint: POST /v1/generate (JSON or server-sent events), GET /v1/model,
GET /healthz, the playground at /, OpenAPI docs at /docs.

The model is loaded once, at start, from the path given on the command line; no request can name a
file. Every limit answers with a 4xx that names the field: 422 for a value out of range or an unknown
field, 413 for a body over `max_body`, 429 when `max_concurrent` generations are already running.
A streaming client that goes away stops its generation within a step.

The sampling fields of a request are SampleOptions' (config.py): their defaults, ranges and messages are
the CLI's and the Python API's. Only the server's own limits (`max_length`, `max_n`, `max_start`,
MAX_STOPS) and the transport (`stream`) are added here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
import time
import typing
import weakref
from importlib import resources
from pathlib import Path
from typing import Any

from ..checkpoint import Checkpoint
from ..checkpoint import load as load_checkpoint
from ..config import SampleOptions, ServeConfig
from ..errors import CharloomError, ConfigError
from ..sampling import Generator

try:
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field, SkipValidation, create_model
    from starlette.concurrency import run_in_threadpool
except ImportError as e:  # pragma: no cover - depends on the environment
    raise CharloomError("the server needs the 'serve' extra: pip install 'charloom[serve]'") from e


MAX_STOPS = 8  # stop strings one request may send: each is searched for after every character


def _request_model() -> type[BaseModel]:
    """The request body as the OpenAPI docs show it: SampleOptions' fields with their defaults and help,
    and `stream`. Pydantic checks none of SampleOptions' values (SkipValidation): SampleOptions does, so
    a request is refused by the CLI's rules with the CLI's messages."""
    hints = typing.get_type_hints(SampleOptions)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(SampleOptions):
        tp, default, about = hints[f.name], f.default, f.metadata["help"]
        if f.name == "length":  # the server's operator chooses this default
            tp, default, about = tp | None, None, f"{about}; default: the server's --default-length"
        fields[f.name] = (SkipValidation[tp], Field(default, description=about))
    fields["stream"] = (bool, Field(False, description="send characters as server-sent events as they are made"))
    return create_model("GenerateRequest", __config__=ConfigDict(extra="forbid"),
                        __doc__="Every field is optional; the sampling fields and their defaults are `charloom "
                                "sample`'s (n is --num-samples).", **fields)


GenerateRequest = _request_model()


def _field_error(field: str, msg: str, status: int = 422) -> HTTPException:
    return HTTPException(status, detail=[{"loc": ["body", field], "msg": msg, "type": "value_error"}])


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
        body = json.dumps({"detail": [{"loc": ["body"], "msg": f"request body over {self.limit} bytes",
                                       "type": "too_large"}]}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(BaseException):
    """Raised from inside the body reader; a BaseException so that the framework's handlers for
    Exception (which would answer 400) let it through to _BodyLimit."""


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
    if len(opts.stop) > MAX_STOPS:
        raise _field_error("stop", f"at most {MAX_STOPS} stop strings")
    if gen.vocab.unknown == "error" and (unknown := gen.unknown_characters(opts.start)):
        raise _field_error("start", f"characters not in the model's vocabulary: {''.join(unknown)!r}")
    if opts.seed is None:  # say which seed was used, so the text can be made again
        opts = opts.replace(seed=int.from_bytes(os.urandom(6), "big"))
    return opts


class _Runner:
    """Runs the generations of all requests over one Generator, one step at a time: concurrent requests
    interleave step by step instead of fighting over the cores (and the interpreter) with a thread each."""

    _END = object()

    def __init__(self, gen: Generator, slots: _Slots):
        self.gen, self.slots = gen, slots
        self._step = threading.Lock()

    def _next(self, it):
        with self._step:
            return next(it, self._END)

    def collect(self, opts: SampleOptions) -> list[str]:
        out = [""] * opts.n
        it = self.gen.stream(opts)
        while (item := self._next(it)) is not self._END:
            i, piece = item
            out[i] += piece
            self.slots.count(len(piece))
        return out

    async def events(self, opts: SampleOptions, release: _Once):
        """Server-sent events: one `data: {"index", "text"}` per piece, then `event: done` with the totals."""
        it = self.gen.stream(opts)
        t0 = time.perf_counter()
        chars = 0
        try:
            yield f"event: start\ndata: {json.dumps({'settings': opts.to_dict()})}\n\n"
            while True:
                item = await run_in_threadpool(self._next, it)
                if item is self._END:
                    break
                i, piece = item
                chars += len(piece)
                self.slots.count(len(piece))
                # a client that goes away makes this yield fail or be cancelled: the finally below ends the work
                yield f"data: {json.dumps({'index': i, 'text': piece}, ensure_ascii=False)}\n\n"
            dt = time.perf_counter() - t0
            done = {"characters": chars, "seconds": round(dt, 4), "chars_per_s": round(chars / dt) if dt else None}
            yield f"event: done\ndata: {json.dumps(done)}\n\n"
        finally:
            it.close()  # a client that went away stops the generation here
            release()


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    # pydantic's errors carry the input they refused, which may be NaN or a lone surrogate: neither can be
    # written in a JSON reply, so the answer keeps where and what, as _field_error's do
    detail = [{"loc": [_printable(p) for p in e["loc"]], "msg": _printable(e["msg"]), "type": e["type"]}
              for e in exc.errors()]
    return JSONResponse({"detail": detail}, status_code=422)


async def _charloom_error(request: Request, exc: CharloomError) -> JSONResponse:
    return JSONResponse({"detail": _printable(str(exc))}, status_code=422)


def create_app(checkpoint: str | Path | Checkpoint, cfg: ServeConfig | None = None) -> FastAPI:
    cfg = cfg or ServeConfig()
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    ck.model.eval()
    gen = Generator.from_checkpoint(ck)
    gen.stepper()  # prepare the step's tables now, not inside the first request
    slots = _Slots(cfg.max_concurrent)
    runner = _Runner(gen, slots)
    app = FastAPI(title="charloom", version="1", summary="Character-level text generation from one model.")
    app.state.slots = slots
    page = (resources.files("charloom.server") / "static" / "index.html").read_text(encoding="utf-8")

    @app.post("/v1/generate")
    async def generate(req: GenerateRequest):
        opts = request_options(req, cfg, gen)
        slots.take()
        if req.stream:
            release = _Once(slots.give)
            events = runner.events(opts, release)
            weakref.finalize(events, release)  # a stream that never starts still gives its slot back
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            t0 = time.perf_counter()
            texts = await run_in_threadpool(runner.collect, opts)
            dt = time.perf_counter() - t0
        finally:
            slots.give()
        chars = sum(map(len, texts))
        return {"samples": [{"text": t} for t in texts], "settings": opts.to_dict(),
                "timing": {"seconds": round(dt, 4), "characters": chars, "chars_per_s": round(chars / dt) if dt else None}}

    @app.get("/v1/model")
    def model_info() -> dict[str, Any]:
        return {"config": ck.config.to_dict(), "vocab_size": len(ck.vocab), "characters": "".join(ck.vocab.chars),
                "records": ck.records, "parameters": ck.model.num_parameters(), "training": ck.info,
                "limits": cfg.to_dict()}

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "active_generations": slots.active, "generated_characters": slots.characters}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def playground() -> str:
        return page

    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(CharloomError, _charloom_error)
    app.add_middleware(_BodyLimit, limit=cfg.max_body)
    return app


def serve(checkpoint: str | Path, cfg: ServeConfig) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    app = create_app(checkpoint, cfg)
    print(f"charloom: serving {checkpoint} at http://{cfg.host}:{cfg.port}/ (API docs at /docs)", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")


__all__ = ["GenerateRequest", "create_app", "request_options", "serve"]
