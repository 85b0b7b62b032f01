"""OpenAI response bodies and server-sent-event streams, built from a row's events."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

from polysteer.modalities.text.serve.rows import Row
from polysteer.modalities.text.serve.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunk,
    ChatChunkChoice,
    ChatResponse,
    CompletionChoice,
    CompletionResponse,
    Delta,
    ErrorDetail,
    ErrorResponse,
    Usage,
)


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)


def completion_body(meta: dict[str, Any], text: str, reason: str, prompt_tokens: int,
                    completion_tokens: int) -> CompletionResponse:
    return CompletionResponse(**meta, choices=[CompletionChoice(text=text, finish_reason=reason)],
                              usage=usage(prompt_tokens, completion_tokens))


def chat_body(meta: dict[str, Any], text: str, reason: str, prompt_tokens: int, completion_tokens: int) -> ChatResponse:
    return ChatResponse(**meta, choices=[ChatChoice(message=AssistantMessage(content=text), finish_reason=reason)],
                        usage=usage(prompt_tokens, completion_tokens))


def _chunk(meta: dict[str, Any], chat: bool, text: str | None, reason: str | None, first: bool = False) -> str:
    if chat:
        delta = Delta(role="assistant", content="") if first else Delta(content=text)
        body = ChatChunk(**meta, choices=[ChatChunkChoice(delta=delta, finish_reason=reason)])
    else:
        body = CompletionResponse(**meta, choices=[CompletionChoice(text=text or "", finish_reason=reason)])
    return _sse(body.model_dump())


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def sse_events(row: Row, meta: dict[str, Any], chat: bool, include_usage: bool) -> AsyncIterator[str]:
    """The row's text as OpenAI stream chunks, a last chunk with the finish reason, then ``[DONE]``."""
    if chat:
        yield _chunk(meta, chat, None, None, first=True)
    while True:
        event = await row.events.get()
        if event[0] == "delta":
            yield _chunk(meta, chat, event[1], None)
            continue
        if event[0] == "error":
            yield _sse(ErrorResponse(error=ErrorDetail(message=event[1], type="server_error")).model_dump())
        else:
            yield _chunk(meta, chat, None if chat else "", event[1])
            if include_usage:
                body = {**meta, "object": "chat.completion.chunk" if chat else "text_completion", "choices": [],
                        "usage": usage(len(row.ids), len(row.tokens)).model_dump()}
                yield _sse(body)
        yield "data: [DONE]\n\n"
        return
