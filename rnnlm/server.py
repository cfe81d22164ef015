"""`rnnlm serve`: a local web page and JSON API over one loaded model.

    GET  /                 the page (rnnlm/static/: plain HTML, CSS and JavaScript)
    GET  /api/info         the model, its sampling defaults and the API's limits
    POST /api/generate     a continuation, streamed as server-sent events as it is made
    POST /api/next-words   the next-word table of `rnnlm predict`
    POST /api/activations  one hidden unit's value at every character of a text, and the
                           units that best follow quotes, line position, line ends, brackets

Built on Starlette and uvicorn (the `serve` extra): they parse HTTP, stream the response
and report a client that went away, which stops its generation. The model runs in worker
threads, one call at a time behind a lock, so two browsers both get their answers. A bad
request (malformed JSON, a setting out of range, an unknown layer) is a 400 with one
line, {"error": "..."}; the server carries on.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import socket
import threading
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from rnnlm import activations as inside
from rnnlm.config import check_sampling
from rnnlm.errors import RnnlmError
from rnnlm.inference import LoadedModel
from rnnlm.sample import encode_prompt, generate
from rnnlm.tokenizer import replace_surrogates, tokenizer_kind

STATIC = Path(__file__).parent / "static"
LIMITS = {"prompt_chars": 10_000, "max_new_tokens": 2_000, "k": 100, "passage_chars": 20_000,
          "body_bytes": 1_000_000, "top": 20}


class BadRequest(Exception):
    """A request the server refuses with this one-line message and a 4xx `status` (400 unless said)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Stopped(Exception):
    """Raised inside generation when its client has gone."""


# ---------------------------------------------------------------------------------------
# reading a request


async def read_json(request: Request) -> dict:
    """The request's JSON object, its strings with any lone surrogate (half of an emoji cut by
    the page) replaced by U+FFFD; a body too large, not JSON, nested too deep to parse or not
    an object is a BadRequest."""
    body = await read_body(request, LIMITS["body_bytes"])
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"the request body is not valid JSON ({e}); send a JSON object") from None
    except RecursionError:
        raise BadRequest("the request body is nested too deeply; send a flat JSON object of the fields") from None
    if not isinstance(data, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(data).__name__}")
    return {plain_text(key): plain_text(value) if isinstance(value, str) else value for key, value in data.items()}


async def read_body(request: Request, limit: int) -> bytes:
    """The body, read no further than `limit` bytes: a larger one is a 413 before it is all in memory."""
    too_large = BadRequest(f"the request body is over {limit} bytes; send at most {limit}", status=413)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def plain_text(text: str) -> str:
    """`text` with each lone surrogate, which no UTF-8 response or tokenizer can hold, as U+FFFD."""
    return replace_surrogates(text)[0]


def shown(value) -> str:
    """A request's value as an error message shows it: JSON, cut short, a list or object by its kind."""
    if isinstance(value, (list, dict)):
        return "a JSON " + ("array" if isinstance(value, list) else "object")
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def field(data: dict, key: str, kind: type, default=None, *, lo=None, hi=None):
    """data[key] as `kind` (int, float or str), `default` when absent; a wrong type, NaN,
    infinity or a value outside [lo, hi] is a BadRequest naming the field."""
    value = data.get(key, default)
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) < 2**1023 else math.inf  # past float's range: refused below
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadRequest(f"{key} must be {'a number' if kind is float else 'an integer' if kind is int else 'a string'}"
                         f", got {shown(value)}")
    if kind is float and not math.isfinite(value):
        raise BadRequest(f"{key} must be a finite number, got {shown(value)}")
    if kind is str:
        if hi is not None and len(value) > hi:
            raise BadRequest(f"{key} is {len(value)} characters long; at most {hi} are allowed")
        return value
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise BadRequest(f"{key} must be from {lo} to {hi}, got {shown(value)}")
    return value


def check_fields(data: dict, allowed: set) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; the fields are {', '.join(sorted(allowed))}")


def prompt_of(data: dict, key: str = "prompt", limit: str = "prompt_chars") -> str:
    text = field(data, key, str, "", hi=LIMITS[limit])
    if not text:
        raise BadRequest(f"{key} is empty; give some text")
    return text


# ---------------------------------------------------------------------------------------
# the model behind a lock


class Session:
    """The loaded model, the lock its calls take turns on, and the run's validation text."""

    def __init__(self, lm: LoadedModel):
        self.lm = lm
        self.lock = threading.Lock()
        self.generations = {"finished": 0, "stopped": 0}
        self._valid: str | None = None

    def info(self) -> dict:
        cfg = self.lm.config
        return {"cell": cfg.model.cell, "layers": cfg.model.num_layers, "hidden_size": cfg.model.hidden_size,
                "kinds": inside.state_kinds(cfg.model.cell), "tokenizer": tokenizer_kind(self.lm.tokenizer),
                "step": self.lm.checkpoint_step, "sample": {
                    "temperature": cfg.sample.temperature, "top_k": cfg.sample.top_k, "top_p": cfg.sample.top_p,
                    "max_new_tokens": min(cfg.sample.max_new_tokens, LIMITS["max_new_tokens"])},
                "signals": inside.SIGNALS, "limits": LIMITS, "generations": dict(self.generations)}

    def validation_window(self, chars: int, seed) -> str:
        with self.lock:
            if self._valid is None:
                self._valid = inside.validation_text(self.lm.config)
        return inside.random_window(self._valid, chars, random.Random(seed))

    def look_inside(self, text: str, layer: int, kind: str, unit: int, top: int) -> dict:
        with self.lock:
            acts = inside.activations(self.lm, text)
        values = acts.unit(layer, kind, unit)
        scale = float(values.abs().max()) or 1.0
        return {"text": text, "layer": layer, "kind": kind, "unit": unit, "scale": round(scale, 4),
                "values": [round(v, 4) for v in values.tolist()], "offsets": acts.offsets,
                "ranked": inside.ranked_units(acts, top)}

    def generate_thread(self, prompt: str, settings: dict, put, stop: threading.Event) -> threading.Thread:
        """Start generating in a thread; `put((event, data))` receives each piece, then "done" or "error"."""

        def emit(piece: str) -> None:
            if stop.is_set():
                raise Stopped
            put(("text", piece))

        def run() -> None:
            try:
                with self.lock:
                    if stop.is_set():
                        raise Stopped
                    generate(self.lm, prompt, on_text=emit, **settings)
                self.generations["finished"] += 1
                put(("done", ""))
            except Stopped:
                self.generations["stopped"] += 1
            except RnnlmError as e:
                put(("error", str(e)))
            except Exception as e:  # noqa: BLE001 - the page is told; the server carries on
                put(("error", f"generation failed: {type(e).__name__}: {e}"))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread


# ---------------------------------------------------------------------------------------
# endpoints


def sampling_settings(data: dict) -> dict:
    settings = {"max_new_tokens": field(data, "max_new_tokens", int, 100, lo=1, hi=LIMITS["max_new_tokens"]),
                "temperature": field(data, "temperature", float, 0.8),
                "top_k": field(data, "top_k", int, 0),
                "top_p": field(data, "top_p", float, 1.0),
                "seed": field(data, "seed", int, None, lo=0, hi=2**63 - 1)}
    try:
        check_sampling({k: v for k, v in settings.items() if k != "seed"}, name=lambda key: key)
    except RnnlmError as e:
        raise BadRequest(str(e)) from None
    return settings


async def api_generate(request: Request):
    session: Session = request.app.state.session
    data = await read_json(request)
    check_fields(data, {"prompt", "max_new_tokens", "temperature", "top_k", "top_p", "seed"})
    prompt = prompt_of(data)
    settings = sampling_settings(data)
    try:
        encode_prompt(session.lm.tokenizer, prompt)
    except RnnlmError as e:
        raise BadRequest(str(e)) from None
    return StreamingResponse(stream_events(request, session, prompt, settings), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


async def stream_events(request: Request, session: Session, prompt: str, settings: dict):
    """Server-sent events: `data: {"text": piece}` per piece, then `event: done` (or `event: error`)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()
    session.generate_thread(prompt, settings, lambda item: loop.call_soon_threadsafe(queue.put_nowait, item), stop)
    try:
        while True:
            try:
                event, text = await asyncio.wait_for(queue.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return
                continue
            name = "" if event == "text" else f"event: {event}\n"
            yield f"{name}data: {json.dumps({'text': text} if event == 'text' else {'message': text})}\n\n"
            if event != "text":
                return
            if await request.is_disconnected():
                return
    finally:
        stop.set()


async def api_next_words(request: Request):
    session: Session = request.app.state.session
    data = await read_json(request)
    check_fields(data, {"prompt", "k"})
    prompt = prompt_of(data)
    k = field(data, "k", int, 10, lo=1, hi=LIMITS["k"])

    def call():
        with session.lock:
            return session.lm.next_words(prompt, k, beam=max(16, k))

    words = await run_model(call)
    return JSONResponse({"prompt": prompt, "words": [{"word": w, "p": p} for w, p in words]})


async def api_activations(request: Request):
    session: Session = request.app.state.session
    data = await read_json(request)
    check_fields(data, {"text", "source", "chars", "seed", "layer", "kind", "unit", "top"})
    source = field(data, "source", str, "text")
    if source not in ("text", "validation"):
        raise BadRequest(f"source must be 'text' or 'validation', got {shown(source)}")
    chars = field(data, "chars", int, 2000, lo=1, hi=LIMITS["passage_chars"])
    seed = field(data, "seed", int, None, lo=0, hi=2**63 - 1)
    text = prompt_of(data, "text", limit="passage_chars") if source == "text" else None
    layer, unit = field(data, "layer", int, 0), field(data, "unit", int, 0)
    kind = field(data, "kind", str, "h", hi=10)
    top = field(data, "top", int, 5, lo=1, hi=LIMITS["top"])

    def call():
        passage = text if text is not None else session.validation_window(chars, seed)
        return session.look_inside(passage, layer, kind, unit, top)

    return JSONResponse(await run_model(call))


async def run_model(call):
    """Run a model call in a worker thread; its RnnlmError (e.g. an unknown unit) is a 400."""
    try:
        return await run_in_threadpool(call)
    except RnnlmError as e:
        raise BadRequest(str(e)) from None


async def api_info(request: Request):
    return JSONResponse(request.app.state.session.info())


async def index(request: Request):
    return FileResponse(STATIC / "index.html")


async def bad_request(request: Request, exc: BadRequest):
    return JSONResponse({"error": plain_text(str(exc))}, status_code=exc.status)


async def http_error(request: Request, exc: HTTPException):
    return JSONResponse({"error": f"{exc.detail}: {request.method} {request.url.path}"}, status_code=exc.status_code)


def create_app(lm: LoadedModel) -> Starlette:
    """The Starlette application serving `lm` (see the module doc)."""
    routes = [
        Route("/", index),
        Route("/api/info", api_info),
        Route("/api/generate", api_generate, methods=["POST"]),
        Route("/api/next-words", api_next_words, methods=["POST"]),
        Route("/api/activations", api_activations, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={BadRequest: bad_request, HTTPException: http_error})
    app.state.session = Session(lm)
    return app


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: a free one); a port in use is one line."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        sock = socket.socket(infos[0][0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(infos[0][4])
    except OSError as e:
        raise RnnlmError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host") from None
    sock.listen(64)
    return sock


def make_server(lm: LoadedModel, sock: socket.socket):
    """A uvicorn server of create_app(lm) on `sock`; ``.run(sockets=[sock])`` serves until stopped."""
    import uvicorn

    config = uvicorn.Config(create_app(lm), log_level="warning", timeout_graceful_shutdown=1)
    return uvicorn.Server(config)


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"
