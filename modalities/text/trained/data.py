"""Data for trained steering vectors: prompt/target/contrast rows, teacher-forced log-probs, sampling.

The same formatting as :func:`polysteer.modalities.text.generation.generate` is used (chat template when
the tokenizer has one), so a vector trained on these log-probabilities steers the generations it is used on.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from polysteer.data import read_jsonl
from polysteer.errors import PolysteerError
from polysteer.modalities.text.generation import Example, format_prompt


@dataclass(frozen=True)
class TrainRow:
    """A prompt with the completion to make likely (``target``) and the one to make unlikely (``contrast``).

    The reward objective only uses ``prompt``; an empty ``contrast`` drops the contrast term for that row.
    """

    prompt: str
    target: str = ""
    contrast: str = ""


def as_rows(data: Sequence[Any]) -> list[TrainRow]:
    """Rows from TrainRow objects, ``{"prompt", "target", "contrast"}`` mappings or bare prompt strings."""
    rows = []
    for i, item in enumerate(data):
        if isinstance(item, TrainRow):
            rows.append(item)
        elif isinstance(item, str):
            rows.append(TrainRow(item))
        elif isinstance(item, Mapping):
            rows.append(_row_from_mapping(item, f"row {i}"))
        else:
            raise PolysteerError(f"row {i} is a {type(item).__name__}; give TrainRow, a dict or a prompt string")
    if not rows:
        raise PolysteerError("no training rows: give at least one {'prompt', 'target', 'contrast'} row")
    return rows


def _row_from_mapping(item: Mapping, where: str) -> TrainRow:
    values = {key: item.get(key, "") for key in ("prompt", "target", "contrast")}
    bad = [key for key, value in values.items() if not isinstance(value, str)]
    if bad or not values["prompt"]:
        raise PolysteerError(f"{where}: needs a non-empty string 'prompt' and string 'target'/'contrast' "
                             f"(got keys {sorted(item)}, non-strings {bad})")
    return TrainRow(**values)


def read_rows(path: str | Path) -> list[TrainRow]:
    """Read a JSONL file of ``{"prompt", "target", "contrast"?}`` rows."""
    rows = [_row_from_mapping(row if isinstance(row, Mapping) else {}, f"{path}:{number}")
            for number, row in read_jsonl(path)]
    if not rows:
        raise PolysteerError(f"{path} has no rows; each line needs {{\"prompt\", \"target\", \"contrast\"}}")
    return rows


def rows_from_examples(positives: Sequence[Example], negatives: Sequence[Example]) -> list[TrainRow]:
    """Pair persona answers (CAA data) into rows: the positive answer is the target, the negative the contrast."""
    if len(positives) != len(negatives):
        raise PolysteerError(f"need paired examples, got {len(positives)} positives and {len(negatives)} negatives")
    return [TrainRow(p.prompt or "", p.text, n.text) for p, n in zip(positives, negatives)]


@contextmanager
def frozen(model) -> Iterator[None]:
    """Switch off gradients of the model's parameters inside the block, restoring each flag after (also on error).

    Only the steering tensors are learned; frozen weights also spare autograd from keeping activations for them.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def prompt_ids(tokenizer, prompt: str, chat: bool) -> list[int]:
    """Token ids of the formatted prompt, exactly as ``generate`` encodes it."""
    ids = tokenizer(format_prompt(tokenizer, prompt, None, chat), add_special_tokens=not chat).input_ids
    if not ids:
        raise PolysteerError(f"prompt {prompt!r} encodes to no tokens; give a non-empty prompt")
    return list(ids)


def completion_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def completion_logprobs(model, pairs: Sequence[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor,
                                                                                                    torch.Tensor]:
    """Teacher-forced log-probs of each completion token given its prompt.

    Args:
        pairs: ``(prompt ids, completion ids)`` per row (right-padded into one batch here).

    Returns:
        ``(logp [rows, width], mask [rows, width])``: the log-probability of each completion token, zero
        where ``mask`` (the completion's positions) is False.
    """
    width = max(len(p) + len(c) for p, c in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    mask = torch.zeros((len(pairs), width - 1), dtype=torch.bool)
    for row, (p, c) in enumerate(pairs):
        ids[row, : len(p) + len(c)] = torch.tensor(p + c)
        attn[row, : len(p) + len(c)] = 1
        mask[row, len(p) - 1 : len(p) + len(c) - 1] = True
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits[:, :-1]
    mask = mask.to(device)
    picked = torch.log_softmax(logits[mask].float(), -1)  # only completion rows: the vocabulary is wide
    logp = torch.zeros(mask.shape, device=device)
    logp[mask] = picked.gather(-1, ids[:, 1:].to(device)[mask].unsqueeze(-1)).squeeze(-1)
    return logp, mask


@torch.no_grad()
def sample(model, tokenizer, prompts: Sequence[list[int]], n: int, max_new_tokens: int, temperature: float,
           seed: int) -> list[tuple[list[int], list[int]]]:
    """``n`` sampled completions per prompt (left-padded batch), cut after the first end-of-sequence token."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        out = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), do_sample=True,
                             temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                             num_return_sequences=n, pad_token_id=pad)
    result = []
    for row, tokens in enumerate(out[:, width:].tolist()):
        result.append((prompts[row // n], _cut(tokens, tokenizer.eos_token_id)))
    return result


def _cut(tokens: list[int], eos: int | None) -> list[int]:
    """Keep the tokens up to and including the first end-of-sequence (its probability is part of the policy)."""
    if eos is not None and eos in tokens:
        return tokens[: tokens.index(eos) + 1]
    return tokens
