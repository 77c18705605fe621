"""A FastAPI app over one checkpoint: POST /v1/generate (JSON or server-sent events), GET /v1/model,
GET /healthz, the playground at /, OpenAPI docs at /docs.

The model is loaded once, at start, from the path given on the command line; no request can name a
file. Every limit answers with a 4xx that names the field: 422 for a value out of range or an unknown
field, 413 for a body over `max_body`, 429 when `max_concurrent` generations are already running.
A streaming client that goes away stops its generation within a step.
"""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from importlib import resources
from pathlib import Path
from typing import Any

from ..checkpoint import Checkpoint
from ..checkpoint import load as load_checkpoint
from ..config import ServeConfig
from ..errors import CharloomError
from ..sampling import Generator

try:
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.concurrency import run_in_threadpool
except ImportError as e:  # pragma: no cover - depends on the environment
    raise CharloomError("the server needs the 'serve' extra: pip install 'charloom[serve]'") from e


class GenerateRequest(BaseModel):
    """Every field is optional; the defaults are the CLI's."""

    model_config = ConfigDict(extra="forbid")

    start: str = Field("", description="text to continue (a records model starts from <bos> before it)")
    length: int | None = Field(None, ge=0, description="characters per sample (default: the server's)")
    temperature: float = Field(0.8, ge=0, le=10, description="0 = greedy")
    top_k: int = Field(0, ge=0, description="sample among the k most likely characters (0: all)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus: the smallest set whose mass reaches p")
    repetition_penalty: float = Field(1.0, ge=1, le=10, description="1 = off")
    n: int = Field(1, ge=1, description="samples, made in parallel")
    seed: int | None = Field(None, ge=0, le=2**62, description="the same seed gives the same text")
    stop: list[str] = Field(default_factory=list, max_length=8, description="end a sample before any of these")
    stream: bool = Field(False, description="send characters as server-sent events as they are made")


def _field_error(field: str, msg: str, status: int = 422) -> HTTPException:
    return HTTPException(status, detail=[{"loc": ["body", field], "msg": msg, "type": "value_error"}])


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


def create_app(checkpoint: str | Path | Checkpoint, cfg: ServeConfig | None = None) -> FastAPI:
    cfg = cfg or ServeConfig()
    ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    ck.model.eval()
    gen = Generator(ck.model, ck.vocab, records=ck.records)
    gen.stepper()  # prepare the step's tables now, not inside the first request
    slots = _Slots(cfg.max_concurrent)
    # one generation step at a time: concurrent requests interleave step by step instead of fighting
    # over the cores (and the interpreter) with a thread each
    step_lock = threading.Lock()
    sentinel = object()

    def next_piece(it):
        with step_lock:
            return next(it, sentinel)

    app = FastAPI(title="charloom", version="1", summary="Character-level text generation from one model.")
    app.state.slots = slots
    page = (resources.files("charloom.server") / "static" / "index.html").read_text(encoding="utf-8")

    def checked(req: GenerateRequest) -> dict[str, Any]:
        length = cfg.default_length if req.length is None else req.length
        if length > cfg.max_length:
            raise _field_error("length", f"at most {cfg.max_length} characters per sample")
        if req.n > cfg.max_n:
            raise _field_error("n", f"at most {cfg.max_n} samples per request")
        if len(req.start) > cfg.max_start:
            raise _field_error("start", f"at most {cfg.max_start} characters")
        if ck.vocab.unknown == "error" and gen.unknown_characters(req.start):
            raise _field_error("start", f"characters not in the model's vocabulary: "
                                        f"{''.join(gen.unknown_characters(req.start))!r}")
        return {"start": req.start, "length": length, "n": req.n, "temperature": req.temperature,
                "top_k": req.top_k, "top_p": req.top_p, "repetition_penalty": req.repetition_penalty,
                "seed": req.seed, "stop": req.stop}

    def pieces(s: dict[str, Any]):
        return gen.stream(s["start"], s["length"], s["n"], s["temperature"], s["top_k"], s["top_p"],
                          s["repetition_penalty"], s["seed"], s["stop"])

    @app.post("/v1/generate")
    async def generate(req: GenerateRequest):
        settings = checked(req)
        if settings["seed"] is None:  # say which seed was used, so the text can be made again
            settings["seed"] = int.from_bytes(os.urandom(6), "big")
        slots.take()
        if req.stream:
            release = _Once(slots.give)
            events = _events(settings, release)
            weakref.finalize(events, release)  # a stream that never starts still gives its slot back
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            t0 = time.perf_counter()
            texts = await run_in_threadpool(_collect, settings)
            dt = time.perf_counter() - t0
        finally:
            slots.give()
        chars = sum(map(len, texts))
        return {"samples": [{"text": t} for t in texts], "settings": settings,
                "timing": {"seconds": round(dt, 4), "characters": chars, "chars_per_s": round(chars / dt) if dt else None}}

    def _collect(settings: dict[str, Any]) -> list[str]:
        out = [""] * settings["n"]
        it = pieces(settings)
        while (item := next_piece(it)) is not sentinel:
            i, piece = item
            out[i] += piece
            slots.count(len(piece))
        return out

    async def _events(settings: dict[str, Any], release: _Once):
        """Server-sent events: one `data: {"index", "text"}` per piece, then `event: done` with the totals."""
        it = pieces(settings)
        t0 = time.perf_counter()
        chars = 0
        try:
            yield f"event: start\ndata: {json.dumps({'settings': settings})}\n\n"
            while True:
                item = await run_in_threadpool(next_piece, it)
                if item is sentinel:
                    break
                i, piece = item
                chars += len(piece)
                slots.count(len(piece))
                # a client that goes away makes this yield fail or be cancelled: the finally below ends the work
                yield f"data: {json.dumps({'index': i, 'text': piece}, ensure_ascii=False)}\n\n"
            dt = time.perf_counter() - t0
            done = {"characters": chars, "seconds": round(dt, 4), "chars_per_s": round(chars / dt) if dt else None}
            yield f"event: done\ndata: {json.dumps(done)}\n\n"
        finally:
            it.close()  # a client that went away stops the generation here
            release()

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

    @app.exception_handler(CharloomError)
    async def charloom_error(request: Request, exc: CharloomError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    app.add_middleware(_BodyLimit, limit=cfg.max_body)
    return app


def serve(checkpoint: str | Path, cfg: ServeConfig) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    app = create_app(checkpoint, cfg)
    print(f"charloom: serving {checkpoint} at http://{cfg.host}:{cfg.port}/ (API docs at /docs)", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")


__all__ = ["GenerateRequest", "create_app", "serve"]
