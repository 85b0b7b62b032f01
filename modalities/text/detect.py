"""Text detection: read labelled texts and score passages with a detector (:mod:`polysteer.plugins.detection`).

Text files for detection are JSONL rows ``{"text": ..., "label": 0|1}`` (metrics are reported) or plain text
with one passage per line (scores only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from polysteer.data import read_jsonl, read_lines
from polysteer.errors import PolysteerError
from polysteer.modalities.text.generation import Example, collect, token_labels
from polysteer.plugins.detection import Detector, TokenActivations

_LABELS = {0: 0, 1: 1, "negative": 0, "positive": 1}  # True and False hash as 1 and 0


def read_texts(path: str | Path) -> tuple[list[str], list[int] | None]:
    """Texts and 0/1 labels of a ``.jsonl`` file, or the lines of a plain text file (labels None)."""
    if Path(path).suffix.lower() != ".jsonl":
        return read_lines(path, "texts"), None
    texts, labels = [], []
    for number, row in read_jsonl(path):
        text, label = row.get("text"), row.get("label")
        if not isinstance(text, str) or not text.strip():
            raise PolysteerError(f"{path}:{number}: expected {{\"text\": \"non-empty\", \"label\": 0 or 1}}")
        if not isinstance(label, (int, str)) or label not in _LABELS:  # type first: a list is unhashable
            raise PolysteerError(f"{path}:{number}: label must be 0 or 1, got {label!r:.60}")
        texts.append(text)
        labels.append(_LABELS[label])
    if not texts:
        raise PolysteerError(f"{path} has no rows; write one JSON object per line")
    return texts, labels


def text_activations(model, tokenizer, texts: Sequence[str], hook_point: str, prompts: Sequence[str] | None = None,
                     chat: bool = False, batch_size: int = 8, cache_dir: str | None = None) -> TokenActivations:
    """Token activations of each text at ``hook_point`` (after its prompt, when given; first token skipped)."""
    examples = [Example(t, prompts[i] if prompts else None) for i, t in enumerate(texts)]
    acts = collect(model, tokenizer, examples, [hook_point], pooling="tokens", batch_size=batch_size, chat=chat,
                   cache_dir=cache_dir)[hook_point]
    owner = token_labels(tokenizer, examples, list(range(len(examples))), chat=chat)
    return TokenActivations(acts, owner.long(), len(examples))


def score_texts(model, tokenizer, texts: Sequence[str], detector: Detector, hook_point: str, pooling: str = "mean",
                max_norm: float | None = None, prompts: Sequence[str] | None = None,
                chat: bool = False) -> torch.Tensor:
    """``[len(texts)]`` passage scores; tokens above ``max_norm`` (attention sinks) are left out."""
    tokens = text_activations(model, tokenizer, texts, hook_point, prompts, chat).without_outliers(max_norm)
    return detector.passage_scores(tokens, pooling)
