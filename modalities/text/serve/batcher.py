"""The dynamic batcher: one worker thread decodes one batch at a time, one steering plan per row.

Requests queue up while a batch runs; the worker takes up to ``max_batch_size`` of them, waiting at most
``max_wait_s`` after the first for more to join. The rows' plans are stacked (:func:`polysteer.stack_plans`), so
rows with different directions, coefficients, schedules or none share one forward pass; the steering context is
the worker thread's own, so nothing else that runs on the model sees it. The decoding loop is ours, not
``generate``: a row that finishes (EOS, stop string, its own ``max_tokens``) or whose client disconnects is dropped
from the batch, its KV cache and its plan at once, so it costs nothing more.
"""

from __future__ import annotations

import inspect
import logging
import queue
import threading
import time
from collections import deque
from typing import Any

import torch

from polysteer.engine import BatchSteering, steer_rows
from polysteer.errors import PolysteerError
from polysteer.modalities.text.serve.rows import Row, Streamer, next_tokens

log = logging.getLogger("polysteer.serve")


class Busy(Exception):
    """The queue is full: the client should retry later (HTTP 429)."""


class Batcher:
    """Collects rows from any thread or event loop and generates them in batches on one worker thread."""

    def __init__(self, model: Any, tokenizer: Any, max_batch_size: int = 8, max_wait_s: float = 0.01,
                 max_queue: int = 256, tokenizer_lock: threading.Lock | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_s
        self.tokenizer_lock = tokenizer_lock or threading.Lock()
        self._queue: queue.Queue[Row] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._running: list[Row] = []
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # recent batches, for tests and benchmarks
        self.finished: deque[tuple[str | None, int]] = deque(maxlen=1000)  # (finish reason, tokens) per row
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        eos = getattr(model.generation_config, "eos_token_id", None) or tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.max_positions = getattr(model.config, "max_position_embeddings", None) or 2**31
        # transformers 5.24 renamed the forward's cache argument (and output field) to ``cache``
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def submit(self, row: Row) -> None:
        """Queue a row; raises :class:`Busy` when ``max_queue`` rows already wait."""
        self.start()
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            raise Busy(f"the server has {self._queue.maxsize} requests waiting; retry shortly") from None

    def start(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._loop, name="polysteer-batcher", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """Stop the worker: the running batch ends at its next step, waiting rows are refused."""
        self._stop.set()
        for row in list(self._running):
            row.cancelled.set()
        while True:
            try:
                self._queue.get_nowait().fail("the server is shutting down")
            except queue.Empty:
                break
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            rows = self._collect()
            live = [r for r in rows if not r.cancelled.is_set()]
            for r in rows:
                if r.cancelled.is_set():
                    r.finish("cancelled")
                    self.finished.append(("cancelled", 0))
            if live:
                self._run(live)

    def _collect(self) -> list[Row]:
        try:
            rows = [self._queue.get(timeout=0.1)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.max_wait_s
        while len(rows) < self.max_batch_size:
            try:
                rows.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                rows.append(self._queue.get(timeout=left))
            except queue.Empty:
                break
        return rows

    def _run(self, rows: list[Row]) -> None:
        self._running = rows
        try:
            self.generate(rows)
        except PolysteerError as exc:
            if len(rows) > 1 and not any(r.tokens or r.finished for r in rows):
                for row in rows:  # a plan the checks let through: run rows alone so only its own request fails
                    self._run([row])
                return
            for row in rows:
                row.fail(str(exc))
        except Exception as exc:  # the worker must outlive any one batch
            log.exception("batch of %d failed", len(rows))
            for row in rows:
                row.fail(f"generation failed: {type(exc).__name__}: {exc}")
        for row in rows:
            row.finish("length")  # a row generate ended without a verdict (e.g. the model's length limit)
            self.finished.append((row.finish_reason, len(row.tokens)))

    def generate(self, rows: list[Row]) -> None:
        """Decode ``rows`` as one left-padded batch; a row that ends (or whose client left) leaves the batch."""
        self.batch_sizes.append(len(rows))
        device = next(self.model.parameters()).device
        width = max(len(r.ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row.ids):] = torch.tensor(row.ids)
            mask[i, width - len(row.ids):] = 1
        with torch.no_grad(), steer_rows(self.model, [r.plan for r in rows]) as steering:
            self._decode(list(rows), ids.to(device), mask.to(device), steering)

    def _decode(self, rows: list[Row], ids: torch.Tensor, mask: torch.Tensor, steering: BatchSteering) -> None:
        streamer = Streamer(self.tokenizer, self.eos_ids, self.tokenizer_lock)
        cache = None
        while rows and mask.shape[1] < self.max_positions:
            positions = (mask.cumsum(-1) - 1).clamp_min(0)[:, -ids.shape[1]:]
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             logits_to_keep=1, **{self.cache_arg: cache})
            cache = getattr(out, self.cache_arg)
            tokens = next_tokens(rows, out.logits[:, -1, :].float())
            for row, token in zip(rows, tokens.tolist()):
                streamer.take(row, token)
            keep = [i for i, row in enumerate(rows) if not row.finished]
            if len(keep) < len(rows):
                index = torch.tensor(keep, dtype=torch.long, device=mask.device)
                cache.batch_select_indices(index)
                steering.keep(index)
                rows, mask, tokens = [rows[i] for i in keep], mask[index], tokens[index]
            ids = tokens.unsqueeze(-1)
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=-1)
