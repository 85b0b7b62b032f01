"""Attribution to choose where to steer ("Building Bridges": gradients and linear approximations).

The score is a differentiable evaluator: the mean over prompts of ``log sum_{k in K} p(k | prompt)``, the
log-probability that the next token after the (chat-formatted) prompt is a concept token ``K``. Its gradient
``g_t`` at every position of a hook point gives, per layer:

- ``act``: ``sum_t g_t . h_t`` (gradient x activation), the first-order change of the score when the
  layer's residual stream is scaled by ``1 + eps`` (``eps * act``);
- ``along(v)``: ``sum_t g_t . v``, the first-order change per unit coefficient of adding ``v`` there, i.e. the
  predicted effect of steering with ``v`` at that layer;

and per SAE latent ``j``: ``sum_t (W_dec g_t)_j z_tj`` (gradient x activation in latent space) and
``sum_t W_dec[j] . g_t`` (the effect of steering along the feature's decoder row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch

from polysteer.engine import Intervention, Plan, steer
from polysteer.errors import PolysteerError
from polysteer.modalities.text.modality import TextModality
from polysteer.modalities.text.trained.data import frozen, prompt_ids
from polysteer.operator import Operator


def concept_token_ids(tokenizer, keywords: Sequence[str]) -> list[int]:
    """First-token ids of each keyword, as a word start (``' ocean'``), bare and capitalised.

    Single-token spellings are preferred; a keyword none of whose spellings is one token contributes
    its first piece. Unknown-token ids are never used.
    """
    ids: set[int] = set()
    for keyword in keywords:
        spellings = {keyword, " " + keyword, keyword.capitalize(), " " + keyword.capitalize()}
        encoded = [tokenizer(s, add_special_tokens=False).input_ids for s in sorted(spellings)]
        encoded = [e for e in encoded if e and e[0] != tokenizer.unk_token_id]
        single = {e[0] for e in encoded if len(e) == 1}
        ids |= single or {e[0] for e in encoded}
    if not ids:
        raise PolysteerError(f"none of the keywords {list(keywords)} maps to a known token; give other keywords")
    return sorted(ids)


def concept_score(logits: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    """``log sum_k p(k)`` at the last position of each row (left-padded batches end at the last position)."""
    last = logits[:, -1]
    logp = torch.log_softmax(last.float() if last.dtype in (torch.float16, torch.bfloat16) else last, -1)
    return torch.logsumexp(logp[:, list(token_ids)], -1)


class _Probe(Operator):
    """Adds a zero tensor that requires grad: its gradient is the score's gradient at the hidden states."""

    name = "attribution_probe"

    def __init__(self):
        self.records: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, h, v, coef):
        delta = torch.zeros_like(h, requires_grad=True)
        self.records.append((h.detach(), delta))
        return h + delta


def _left_padded(tokenizer, prompts: Sequence[str], chat: bool) -> dict[str, torch.Tensor]:
    encoded = [prompt_ids(tokenizer, p, chat) for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(e) for e in encoded)
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
    return {"input_ids": ids, "attention_mask": mask}


def hidden_gradients(model, tokenizer, prompts: Sequence[str], token_ids: Sequence[int], hook_points: Sequence[str],
                     chat: bool = True, batch_size: int = 8) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
    """Per batch: ``(scores [b], mask [b, t], {hook point: (h, grad)})`` for the mean concept score.

    Gradients are of the score averaged over *all* prompts, so they add up across batches.
    """
    if not prompts:
        raise PolysteerError("attribution needs at least one prompt")
    device = next(model.parameters()).device
    for start in range(0, len(prompts), batch_size):
        batch = _left_padded(tokenizer, prompts[start : start + batch_size], chat)
        inputs = {k: v.to(device) for k, v in batch.items()}
        probes = {hp: _Probe() for hp in hook_points}
        plan = Plan([Intervention(torch.zeros(TextModality().d_model(model, hp)), hp, 1.0, probe)
                     for hp, probe in probes.items()])
        with torch.enable_grad(), frozen(model):
            with steer(model, plan, TextModality()):
                scores = concept_score(model(**inputs).logits, token_ids)
            deltas = [probes[hp].records[-1][1] for hp in hook_points]
            grads = torch.autograd.grad(scores.sum() / len(prompts), deltas)
        yield scores.detach(), inputs["attention_mask"].bool(), {
            hp: (probes[hp].records[-1][0], g) for hp, g in zip(hook_points, grads)}


@dataclass
class LayerAttribution:
    """Attribution of the concept score to each hook point's residual stream.

    Attributes:
        score: the unsteered concept score (mean log-probability of a concept token next).
        act: ``sum_t grad . h`` per hook point (mean over prompts).
        grad: ``sum_t grad`` per hook point, ``[d_model]``: dot it with a vector for the steering effect.
    """

    score: float
    act: dict[str, float]
    grad: dict[str, torch.Tensor]

    def along(self, directions: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """``grad . v`` per hook point: the first-order score change per unit coefficient of adding ``v``."""
        return {hp: float(self.grad[hp] @ torch.as_tensor(v).to(self.grad[hp])) for hp, v in directions.items()
                if hp in self.grad}


def layer_attribution(model, tokenizer, prompts: Sequence[str], keywords: Sequence[str], hook_points: Sequence[str],
                      chat: bool = True, batch_size: int = 8) -> LayerAttribution:
    """Gradient x activation of the concept score at every hook point (one forward/backward per batch)."""
    token_ids = concept_token_ids(tokenizer, keywords)
    act = {hp: 0.0 for hp in hook_points}
    grad: dict[str, torch.Tensor] = {}
    total = 0.0
    for scores, mask, records in hidden_gradients(model, tokenizer, prompts, token_ids, hook_points, chat, batch_size):
        total += float(scores.sum())
        m = mask.unsqueeze(-1).to(next(iter(records.values()))[1].dtype)
        for hp, (h, g) in records.items():
            act[hp] += float((g * h * m).sum())
            grad[hp] = grad.get(hp, 0) + (g * m).sum((0, 1)).detach().double().cpu()
    return LayerAttribution(total / len(prompts), act, grad)


def rank_by_attribution(scores: Mapping[str, float], absolute: bool = False) -> dict[str, float]:
    """Hook points ordered best first: highest score (or highest magnitude with ``absolute``)."""
    key = (lambda item: -abs(item[1])) if absolute else (lambda item: -item[1])
    return dict(sorted(scores.items(), key=key))


@dataclass
class FeatureAttribution:
    """Attribution of the concept score to the latents of one SAE.

    Attributes:
        attribution: ``sum_t (W_dec grad_t)_j z_tj`` per latent (gradient x activation), ``[d_sae]``.
        effect: ``sum_t W_dec[j] . grad_t`` per latent: the first-order effect of steering along feature ``j``.
    """

    hook_point: str
    attribution: torch.Tensor
    effect: torch.Tensor

    def top(self, k: int = 10, by: str = "attribution") -> list[tuple[int, float]]:
        """The ``k`` features with the largest ``attribution`` or ``effect``, as ``(index, value)``."""
        values = {"attribution": self.attribution, "effect": self.effect}.get(by)
        if values is None:
            raise PolysteerError(f"rank features by 'attribution' or 'effect', not {by!r}")
        best = values.topk(min(k, len(values)))
        return [(int(i), float(v)) for i, v in zip(best.indices, best.values)]


def feature_attribution(model, tokenizer, prompts: Sequence[str], keywords: Sequence[str], hook_point: str, sae,
                        chat: bool = True, batch_size: int = 8, skip_first: bool = True) -> FeatureAttribution:
    """Attribute the concept score to SAE latents at ``hook_point``.

    ``skip_first`` leaves out each prompt's first token: its activation norm is huge (an attention sink) and
    SAEs are not trained on it.
    """
    sae.check_width(TextModality().d_model(model, hook_point))
    token_ids = concept_token_ids(tokenizer, keywords)
    attribution = effect = 0
    for _, mask, records in hidden_gradients(model, tokenizer, prompts, token_ids, [hook_point], chat, batch_size):
        h, g = records[hook_point]
        if skip_first:
            mask = mask & (mask.long().cumsum(1) > 1)
        with torch.no_grad():
            w_dec = sae.W_dec.float()
            latent_grad = g[mask].to(w_dec.device).float() @ w_dec.T  # d score / d z = W_dec g
            latents = sae.encode(h[mask].to(w_dec.device).float()).float()
            attribution = attribution + (latent_grad * latents).sum(0)
            effect = effect + latent_grad.sum(0)
    return FeatureAttribution(hook_point, torch.as_tensor(attribution).cpu(), torch.as_tensor(effect).cpu())


def rank_direction_layers(model, tokenizer, direction, prompts: Sequence[str], keywords: Sequence[str],
                          hook_points: Sequence[str] | None = None, chat: bool = True) -> dict[str, float]:
    """Rank a Direction's hook points by the predicted effect of steering there with coefficient 1.

    The vector at each hook point is the one its plan adds at coefficient 1 (unit vector times its scale
    and weight), so the numbers compare like the sweep's coefficients. Best (largest rise of the concept
    score) first.
    """
    points = list(hook_points or direction.hook_points)
    vectors = {hp: direction.vectors[hp] * direction.scales.get(hp, 1.0) * direction.weights.get(hp, 1.0)
               for hp in points}
    attribution = layer_attribution(model, tokenizer, prompts, keywords, points, chat)
    return rank_by_attribution(attribution.along(vectors))
