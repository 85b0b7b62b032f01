"""Feature descriptions (Gur-Arieh et al.): VocabProj, TokenChange and top-activating snippets.

VocabProj: the tokens ``W_U . norm_final(v)`` ranks highest and lowest. TokenChange: the tokens whose
logits rise and fall most, averaged over neutral text, when an SAE latent is clamped to ``+/-value``
(or, for a plain direction, when ``+/-value`` times the unit direction is added).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from polysteer.engine import Intervention, steer
from polysteer.modalities.text.generation import Example, collect
from polysteer.modalities.text.sae.select import vocab_logits
from polysteer.operator import Operator

NEUTRAL_TEXTS = (
    "The weather report said it would be cloudy in the morning and clear later in the day.",
    "She opened the door, put her bag on the table and sat down to read the letter.",
    "The committee will meet next week to discuss the budget for the coming year.",
    "He bought some bread, a bottle of milk and a few apples at the shop on the corner.",
)


@dataclass
class TokenLists:
    """Decoded tokens that a direction promotes (``top``) and suppresses (``bottom``)."""

    top: list[str]
    bottom: list[str]


def _decode(tokenizer, ids: torch.Tensor) -> list[str]:
    return [tokenizer.decode([int(i)]) for i in ids]


@torch.no_grad()
def vocab_proj(model, tokenizer, vector: torch.Tensor, n: int = 10) -> TokenLists:
    """VocabProj of one vector (an SAE decoder row or a steering direction)."""
    logits = vocab_logits(model, vector.unsqueeze(0))[0]
    return TokenLists(_decode(tokenizer, logits.topk(n).indices), _decode(tokenizer, (-logits).topk(n).indices))


@torch.no_grad()
def token_change(model, tokenizer, vector: torch.Tensor, hook_point: str, value: float = 10.0,
                 operator: Operator | str = "add", texts: Sequence[str] = NEUTRAL_TEXTS, n: int = 10) -> TokenLists:
    """TokenChange: tokens whose mean logit rises most with ``+value`` and falls most with ``-value``.

    With ``operator='add'`` the unit ``vector`` is added ``value`` times; with an ``SAEClamp`` the latent
    is clamped to ``+/-value``.
    """
    unit = vector.float() / vector.float().norm()
    enc = tokenizer(list(texts), return_tensors="pt", padding=True)

    def mean_logits(coef: float | None) -> torch.Tensor:
        plan = [] if coef is None else [Intervention(unit, hook_point, coef, operator)]
        with steer(model, plan):
            logits = model(**enc).logits.float()
        mask = enc.attention_mask.unsqueeze(-1).float()
        return (logits.log_softmax(-1) * mask).sum((0, 1)) / mask.sum()

    base = mean_logits(None)
    rise = mean_logits(value) - base
    fall = mean_logits(-value) - base
    return TokenLists(_decode(tokenizer, rise.topk(n).indices), _decode(tokenizer, fall.topk(n).indices))


@dataclass
class Snippet:
    """A text window around one strongly activating token."""

    activation: float
    before: str
    token: str
    after: str

    def render(self) -> str:
        return f"{self.activation:8.2f}  {self.before}[[{self.token}]]{self.after}".replace("\n", " ")


def top_snippets(model, tokenizer, texts: Sequence[str], hook_point: str,
                 score: Callable[[torch.Tensor], torch.Tensor], n: int = 5, window: int = 8) -> list[Snippet]:
    """The ``n`` tokens of ``texts`` with the highest ``score(activation)``, with ``window`` tokens of context.

    ``score`` maps ``[tokens, d_model]`` activations to ``[tokens]`` (an SAE latent, or a projection).
    """
    acts = collect(model, tokenizer, [Example(t) for t in texts], [hook_point], pooling="tokens", chat=False)
    values = score(acts[hook_point])
    where = []  # (text index, token index) of every pooled row, in collect's order (first token skipped)
    for index, text in enumerate(texts):
        ids = tokenizer(text).input_ids
        where += [(index, pos) for pos in range(1 if len(ids) > 1 else 0, len(ids))]
    snippets = []
    for row in values.topk(min(n, len(values))).indices.tolist():
        index, pos = where[row]
        ids = tokenizer(texts[index]).input_ids
        before, after = ids[max(0, pos - window) : pos], ids[pos + 1 : pos + 1 + window]
        snippets.append(Snippet(float(values[row]), tokenizer.decode(before), tokenizer.decode(ids[pos : pos + 1]),
                                tokenizer.decode(after)))
    return snippets


def describe(model, tokenizer, vector: torch.Tensor, hook_point: str, operator: Operator | str,
             score: Callable[[torch.Tensor], torch.Tensor], text_path: str | None = None, value: float = 10.0,
             n: int = 10) -> list[str]:
    """The lines ``polysteer explain`` prints: VocabProj, TokenChange and (with a text file) snippets."""
    from polysteer.data import read_lines

    proj = vocab_proj(model, tokenizer, vector, n)
    change = token_change(model, tokenizer, vector, hook_point, value, operator, n=n)
    lines = [f"hook point: {hook_point}",
             f"VocabProj top:       {proj.top}", f"VocabProj bottom:    {proj.bottom}",
             f"TokenChange +{value:g}: {change.top}", f"TokenChange -{value:g}: {change.bottom}"]
    if text_path:
        lines.append(f"top-activating snippets in {text_path}:")
        lines += [s.render() for s in top_snippets(model, tokenizer, read_lines(text_path), hook_point, score, n)]
    return lines
