"""One request's row in a batched generate: its sampling, its stop conditions and its streamed text.

:func:`next_tokens` picks each row's token from the batch's logits: greedy, or from that row's own seeded generator
(temperature, top-p), so a row's text depends on its own request alone, whatever batch it lands in.
:class:`Streamer` takes each new token: it streams the row's text and ends the row at EOS, a stop string, its
``max_tokens``, or a disconnect; the batcher then drops the row from the batch.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from polysteer.engine import Plan


@dataclass
class Row:
    """A request waiting for, or running in, a batch. Events go to ``events`` on the request's event loop:
    ``("delta", text)``, ``("done", finish_reason)`` or ``("error", message)``."""

    ids: list[int]
    plan: Plan | None
    max_tokens: int
    loop: asyncio.AbstractEventLoop
    stop: list[str] = field(default_factory=list)
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0
    finish_reason: str | None = None
    generator: torch.Generator | None = None

    def emit(self, *event: Any) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def finish(self, reason: str) -> None:
        """End the row: flush the text held back for stop strings and report why."""
        if self.finished:
            return
        self.finish_reason = reason
        if reason != "cancelled" and self.sent < len(self.text):
            self.emit("delta", self.text[self.sent:])
        self.sent = len(self.text)
        self.emit("done", reason)

    def fail(self, message: str) -> None:
        if not self.finished:
            self.finish_reason = "error"
            self.emit("error", message)

    def update(self, text: str) -> None:
        """Take the decoded text so far; cut it at a stop string, stream what can no longer become one."""
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text = text[:cut]
            self.finish("stop")
            return
        self.text = text
        hold = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the next token
            hold = max(hold, 1)
        if len(text) - hold > self.sent:
            self.emit("delta", text[self.sent:len(text) - hold])
            self.sent = len(text) - hold


def next_tokens(rows: list[Row], logits: torch.Tensor) -> torch.Tensor:
    """Each row's next token: greedy, or drawn with the row's own temperature, top-p and seeded generator."""
    tokens = logits.argmax(-1)
    for i, row in enumerate(rows):
        if row.temperature == 0:
            continue
        if row.generator is None:
            seed = row.seed if row.seed is not None else secrets.randbits(63)
            row.generator = torch.Generator(device=logits.device).manual_seed(seed % 2**63)
        tokens[i] = sample(logits[i], row.temperature, row.top_p, row.generator)
    return tokens


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """One token from ``softmax(logits / temperature)`` restricted to the top-p nucleus."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # keep the smallest set reaching top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


class Streamer:
    """Takes each row's new token: streams its text and ends the row at EOS, a stop string, ``max_tokens`` or a
    disconnect."""

    def __init__(self, tokenizer: Any, eos_ids: set[int], lock: threading.Lock):
        self.tokenizer, self.eos_ids, self.lock = tokenizer, eos_ids, lock

    def take(self, row: Row, token: int) -> None:
        if row.cancelled.is_set():
            row.finish("cancelled")
            return
        if token in self.eos_ids:
            row.finish("stop")
            return
        row.tokens.append(token)
        with self.lock:
            text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        row.update(text)
        if not row.finished and len(row.tokens) >= row.max_tokens:
            row.finish("length")
