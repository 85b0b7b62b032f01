"""Text inputs: chat formatting, padded batches, activation collection and (steered) generation."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from polysteer.capture import cache_key, cached_capture, capture
from polysteer.data import Example
from polysteer.engine import Plan, as_plan, steer
from polysteer.errors import PolysteerError
from polysteer.modalities.text.modality import TextModality

PERSONA_TEMPLATE = "Act as if you are {persona}."


def format_prompt(tokenizer, prompt: str, system: str | None = None, chat: bool = True) -> str:
    """The prompt as the model sees it before its answer (chat template when the tokenizer has one)."""
    if not chat or not getattr(tokenizer, "chat_template", None):
        return prompt
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _encode(tokenizer, example: Example, chat: bool) -> tuple[list[int], int]:
    """Token ids of an example and the index of its first pooled token."""
    if example.prompt is None:
        ids = tokenizer(example.text).input_ids
        return ids, 1 if len(ids) > 1 else 0  # skip the first token: its activation norm is huge
    prompt = format_prompt(tokenizer, example.prompt, example.system, chat)
    prefix = tokenizer(prompt, add_special_tokens=False).input_ids
    body = tokenizer(example.text, add_special_tokens=False).input_ids if example.text else []
    return prefix + body, len(prefix) if body else len(prefix) - 1


def _device(model) -> torch.device:
    """Where the model's weights are: tokenised inputs go there."""
    return next(model.parameters()).device


def _batches(tokenizer, encoded: list[tuple[list[int], int]], batch_size: int,
             device: torch.device | str = "cpu") -> Iterator[dict[str, Any]]:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attn = torch.zeros((len(chunk), width), dtype=torch.long)
        pool_mask = torch.zeros((len(chunk), width), dtype=torch.bool)
        for row, (tokens, first) in enumerate(chunk):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            attn[row, : len(tokens)] = 1
            pool_mask[row, first : len(tokens)] = True
        yield {"inputs": {"input_ids": ids.to(device), "attention_mask": attn.to(device)}, "mask": pool_mask}


def collect(
    model,
    tokenizer,
    examples: Sequence[Example | str],
    hook_points: Sequence[str],
    pooling: str = "mean",
    batch_size: int = 8,
    chat: bool = True,
    cache_dir: str | None = None,
) -> dict[str, torch.Tensor]:
    """Pooled activations ``{hook_point: [N, d_model]}`` for the examples, in their order.

    ``pooling='tokens'`` returns one row per pooled token (example order, then token order).
    With ``cache_dir`` the result is saved as safetensors and reused when the same inputs come again.
    """
    examples = [Example(e) if isinstance(e, str) else e for e in examples]
    if not examples:
        raise PolysteerError("no examples to collect activations from")
    key = cache_key(model=TextModality().identity(model), examples=[vars(e) for e in examples],
                    hook_points=sorted(hook_points), pooling=pooling, chat=chat)
    return cached_capture(cache_dir, key, lambda: _collect(model, tokenizer, examples, hook_points, pooling,
                                                           batch_size, chat))


def _collect(model, tokenizer, examples, hook_points, pooling, batch_size, chat):
    encoded = [_encode(tokenizer, e, chat) for e in examples]
    order = list(range(len(encoded)))
    if pooling != "tokens":  # similar lengths together waste less padding
        order.sort(key=lambda i: len(encoded[i][0]))
    batches = _batches(tokenizer, [encoded[i] for i in order], batch_size, _device(model))
    acts = capture(model, TextModality(), hook_points, batches, pooling,
                   total=-(-len(encoded) // batch_size), desc="collecting activations")
    if pooling == "tokens":
        return acts
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return {hp: a[inverse] for hp, a in acts.items()}


def token_labels(tokenizer, examples: Sequence[Example | str], labels: Sequence[int],
                 chat: bool = True) -> torch.Tensor:
    """Per-token labels matching ``collect(..., pooling='tokens')``: each token inherits its example's."""
    examples = [Example(e) if isinstance(e, str) else e for e in examples]
    counts = [len(ids) - first for ids, first in (_encode(tokenizer, e, chat) for e in examples)]
    return torch.repeat_interleave(torch.as_tensor(labels), torch.as_tensor(counts))


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    plan: Plan | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 8,
    chat: bool = True,
    system: str | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    progress: bool = True,
) -> list[str]:
    """Generate a completion per prompt, steered by ``plan`` (left-padded batches, KV cache).

    A plan with per-row coefficients steers the rows of one batch, so it needs ``len(prompts) <= batch_size``.
    """
    plan = as_plan(plan) if plan is not None else None
    if plan is not None and _has_row_values(plan) and len(prompts) > batch_size:
        raise PolysteerError(f"a per-row plan needs all {len(prompts)} prompts in one batch; raise batch_size")
    texts = [format_prompt(tokenizer, p, system, chat) for p in prompts]
    outputs: list[str] = []
    chunks = range(0, len(texts), batch_size)
    for start in tqdm(chunks, desc="generating", leave=False, disable=not progress or len(chunks) == 1):
        outputs += _generate_batch(model, tokenizer, texts[start : start + batch_size], plan, max_new_tokens,
                                   do_sample, temperature, seed + start, chat)
    return outputs


def _generate_batch(model, tokenizer, texts, plan, max_new_tokens, do_sample, temperature, seed, chat):
    out, prompt_mask = generate_ids(model, tokenizer, texts, plan, max_new_tokens, do_sample, temperature, seed, chat)
    return tokenizer.batch_decode(out[:, prompt_mask.shape[1]:], skip_special_tokens=True)


def generate_ids(model, tokenizer, texts: Sequence[str], plan: Plan | None = None, max_new_tokens: int = 48,
                 do_sample: bool = False, temperature: float = 1.0, seed: int = 0,
                 chat: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of already formatted ``texts``: the token ids (left-padded prompt, then the generated tokens)
    and the prompt's attention mask, whose width is where the generated tokens start."""
    # padding_side per call: the tokenizer may be shared by threads generating at once
    enc = tokenizer(list(texts), return_tensors="pt", padding=True, padding_side="left",
                    add_special_tokens=not chat).to(_device(model))
    torch.manual_seed(seed)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0} if do_sample else {
        "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    with torch.no_grad(), (steer(model, plan) if plan is not None else nullcontext()):
        out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling)
    return out, enc.attention_mask


def _has_row_values(plan: Plan) -> bool:
    return any(iv.rows is not None or torch.as_tensor(iv.coefficient).ndim > 0 for iv in plan)


def persona_examples(questions: Sequence[str], persona: str, template: str = PERSONA_TEMPLATE) -> list[Example]:
    """repeng-style inputs: each question asked with the persona instruction; the last prompt token is pooled."""
    return [Example("", prompt=q, system=template.format(persona=persona)) for q in questions]


def persona_answers(model, tokenizer, questions: Sequence[str], instruction: str, max_new_tokens: int = 48,
                    batch_size: int = 8) -> list[Example]:
    """CAA-style data: answers written under ``instruction`` (appended to each question, which small chat
    models follow more reliably than a system prompt), read back *without* it: the answer tokens are pooled."""
    asked = [f"{q} {instruction}".strip() for q in questions]
    answers = generate(model, tokenizer, asked, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [Example(a.strip() or ".", prompt=q) for q, a in zip(questions, answers)]
