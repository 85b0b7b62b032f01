"""The FastAPI app: OpenAI-compatible completions and chat completions with a per-request ``steer`` field.

``create_app(model, tokenizer, ServeConfig(...))`` builds it around a loaded model (the CLI loads one; tests
inject a tiny one). Every error answers in OpenAI's JSON shape, ``{"error": {"message": ..., "type": ...}}``.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from polysteer.direction import Direction
from polysteer.errors import PolysteerError
from polysteer.modalities.text.serve import directions_api
from polysteer.modalities.text.serve.batcher import Batcher, Busy
from polysteer.modalities.text.serve.errors import ApiError, error_response, require_key
from polysteer.modalities.text.serve.registry import DirectionRegistry
from polysteer.modalities.text.serve.rows import Row
from polysteer.modalities.text.serve.schemas import (
    ChatRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    _GenerationRequest,
)
from polysteer.modalities.text.serve.streams import chat_body, completion_body, sse_events

DISCONNECT_POLL_S = 0.5


@dataclass
class ServeConfig:
    """Server limits and identity; the defaults suit a laptop."""

    model_name: str = "smollm2"
    api_key: str | None = None
    max_batch_size: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 256
    max_prompt_tokens: int = 2048
    max_tokens: int = 512
    default_max_tokens: int = 64
    max_upload_bytes: int = 16 * 2**20


def create_app(model: Any, tokenizer: Any, config: ServeConfig | None = None,
               directions: dict[str, Direction] | None = None) -> FastAPI:
    """The app serving ``model``; ``directions`` (name -> Direction) are checked against it and registered."""
    config = config or ServeConfig()
    registry = DirectionRegistry(model, config.max_upload_bytes)
    for name, direction in (directions or {}).items():
        registry.add(name, direction)
    lock = threading.Lock()
    batcher = Batcher(model, tokenizer, config.max_batch_size, config.max_wait_ms / 1000, config.max_queue, lock)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await asyncio.to_thread(batcher.stop)

    app = FastAPI(title="polysteer serve", lifespan=lifespan)
    app.state.config, app.state.registry, app.state.batcher = config, registry, batcher
    app.state.model_config = getattr(model, "config", None)
    app.state.tokenizer, app.state.tokenizer_lock = tokenizer, lock
    app.state.created = int(time.time())
    _install_errors(app)
    _install_routes(app)
    return app


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.kind)

    @app.exception_handler(PolysteerError)
    async def _polysteer(request: Request, exc: PolysteerError):
        return error_response(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        return error_response(400, f"invalid request: {where}: {message}" if where else f"invalid request: {message}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return error_response(404, f"no route {request.method} {request.url.path}", "not_found_error")
        return error_response(exc.status_code, str(exc.detail), "invalid_request_error")


def _install_routes(app: FastAPI) -> None:
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> str:
        return resources.files("polysteer.modalities.text.serve").joinpath("static/playground.html").read_text()

    @app.get("/v1/models", dependencies=[Depends(require_key)])
    async def models(request: Request) -> ModelList:
        state = request.app.state
        return ModelList(data=[ModelCard(id=state.config.model_name, created=state.created)])

    @app.post("/v1/completions", dependencies=[Depends(require_key)])
    async def completions(body: CompletionRequest, request: Request):
        ids = _encode(request, body.prompt_text(), special=True)
        return await _serve(request, body, ids, chat=False)

    @app.post("/v1/chat/completions", dependencies=[Depends(require_key)])
    async def chat_completions(body: ChatRequest, request: Request):
        return await _serve(request, body, _encode(request, _chat_text(request, body), special=False), chat=True)

    directions_api.install(app)


def _encode(request: Request, text: str, special: bool) -> list[int]:
    state = request.app.state
    with state.tokenizer_lock:
        ids = state.tokenizer(text, add_special_tokens=special).input_ids
    limit = state.config.max_prompt_tokens
    if len(ids) > limit:
        raise ApiError(400, f"the prompt has {len(ids)} tokens; this server takes at most {limit}")
    if not ids:
        raise ApiError(400, "the prompt is empty; give some text")
    return ids


def _chat_text(request: Request, body: ChatRequest) -> str:
    tokenizer = request.app.state.tokenizer
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    if getattr(tokenizer, "chat_template", None):
        with request.app.state.tokenizer_lock:
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def _make_row(request: Request, body: _GenerationRequest, ids: list[int]) -> Row:
    config = request.app.state.config
    wanted = getattr(body, "max_completion_tokens", None) or body.max_tokens or config.default_max_tokens
    if wanted > config.max_tokens:
        raise ApiError(400, f"max_tokens is {wanted}; this server generates at most {config.max_tokens} per request")
    room = getattr(request.app.state.model_config, "max_position_embeddings", None)
    if room and len(ids) + wanted > room:
        raise ApiError(400, f"prompt ({len(ids)} tokens) plus max_tokens ({wanted}) exceeds the model's context of "
                            f"{room} tokens; shorten one of them")
    plan = request.app.state.registry.plan_for(body.steer)
    return Row(ids=ids, plan=plan, max_tokens=wanted, loop=asyncio.get_running_loop(), stop=body.stop_list(),
               temperature=body.temperature, top_p=body.top_p, seed=body.seed)


async def _serve(request: Request, body: _GenerationRequest, ids: list[int], chat: bool):
    row = _make_row(request, body, ids)
    try:
        request.app.state.batcher.submit(row)
    except Busy as exc:
        raise ApiError(429, str(exc), "rate_limit_error") from None
    meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time()),
            "model": request.app.state.config.model_name}
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_guarded(row, sse_events(row, meta, chat, usage)), media_type="text/event-stream")
    text, reason = await _collect(request, row)
    return (chat_body if chat else completion_body)(meta, text, reason, len(ids), len(row.tokens))


async def _guarded(row: Row, events: AsyncIterator[str]) -> AsyncIterator[str]:
    """Stream ``events``; a client that goes away (the stream is cancelled or closed) frees its row."""
    try:
        async for event in events:
            yield event
    finally:
        row.cancelled.set()


async def _collect(request: Request, row: Row) -> tuple[str, str]:
    parts: list[str] = []
    try:
        while True:
            try:
                event = await asyncio.wait_for(row.events.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    row.cancelled.set()
                    raise ApiError(499, "client disconnected") from None
                continue
            if event[0] == "delta":
                parts.append(event[1])
            elif event[0] == "error":
                raise ApiError(500, event[1], "server_error")
            else:
                return "".join(parts), event[1]
    except asyncio.CancelledError:
        row.cancelled.set()
        raise
