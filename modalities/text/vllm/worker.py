"""The worker side: hooks on the vLLM model's decoder layers that steer each request's tokens by its own plan.

vLLM flattens a step's requests into one token dimension. Before each forward pass a pre-hook on the model reads
the runner's batch (``input_batch.req_ids``, ``query_start_loc`` and ``num_computed_tokens_cpu``, the arrays the
runner built the pass from) and lays out, per steered request, its token range, positions and generation step.
A request's plan is resolved once, when it first appears, and cached by request id.

vLLM's decoder layers take and return ``(hidden, residual)``: the residual stream is their sum. A steered token
gets the operator's new stream as ``hidden`` and a zero ``residual``, so the next layer's fused add-and-norm sees
exactly the steered stream, and every other token stays bit-identical.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from polysteer.errors import PolysteerError
from polysteer.hookpoints import guess_layer_prefix
from polysteer.modalities.text.vllm.spec import STEER_KEY, DirectionStore, Geometry, RequestPlan, Step, resolve

log = logging.getLogger("polysteer.vllm")


@dataclass
class Segment:
    """Tokens ``[start, end)`` of the flattened batch: one request's tokens that share a generation step."""

    start: int
    end: int
    step: int
    positions: Any  # an int for one token, else a tensor of positions
    prompt_length: int
    steps: tuple[Step, ...]


class Steerer:
    """Per-request steering for one vLLM model runner (installed by :func:`install`)."""

    def __init__(self, runner: Any, model: nn.Module, layers: nn.ModuleList):
        self.runner, self.model, self.layers = runner, model, layers
        self.geometry = Geometry.from_hf_config(runner.model_config.hf_config)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.store = DirectionStore()
        self.plans: dict[str, tuple[Any, RequestPlan | None]] = {}
        self.segments: dict[int, list[Segment]] = {}

    def plan_for(self, req_id: str) -> RequestPlan | None:
        """The request's resolved plan, from the cache while the request's params object is the same."""
        state = self.runner.requests.get(req_id)
        params = getattr(state, "sampling_params", None)
        hit = self.plans.get(req_id)
        if hit is not None and hit[0] is params:
            return hit[1]
        value = (getattr(params, "extra_args", None) or {}).get(STEER_KEY)
        plan = None if value is None else self._resolve(value)
        if len(self.plans) > 2 * len(self.runner.requests) + 64:
            self.plans = {k: v for k, v in self.plans.items() if k in self.runner.requests}
        self.plans[req_id] = (params, plan)
        return plan

    def _resolve(self, value: Any) -> RequestPlan:
        plan = resolve(value, self.geometry, self.store)  # checked in the frontend already: an error here is a bug
        steps = tuple(Step(s.layer, s.site, s.vector.to(self.device, self.dtype), s.coefficient, s.operator,
                           s.schedule) for s in plan.steps)
        return RequestPlan(steps, plan.salt)

    def before_pass(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Lay out this pass's steered tokens by layer (nothing for passes without steered requests)."""
        self.segments = {}
        batch = self.runner.input_batch
        req_ids = list(batch.req_ids)
        if not req_ids:
            return
        starts = self.runner.query_start_loc.np[: len(req_ids) + 1].tolist()
        computed = batch.num_computed_tokens_cpu[: len(req_ids)].tolist()
        for i, req_id in enumerate(req_ids):
            plan = self.plan_for(req_id) if req_id is not None else None
            if plan is None or starts[i + 1] <= starts[i]:
                continue
            prompt_length = self.runner.requests[req_id].num_prompt_tokens
            for segment in _segments(starts[i], starts[i + 1], computed[i], prompt_length, plan.steps):
                for layer in {s.layer for s in segment.steps}:
                    self.segments.setdefault(layer, []).append(segment)

    def edit(self, layer: int, site: str, hidden: torch.Tensor, residual: torch.Tensor | None):
        """``(hidden, residual)`` with this layer's steered tokens changed, or None when nothing applies here."""
        segments = self.segments.get(layer)
        if not segments:
            return None
        new_hidden, new_residual, touched = hidden, residual, False
        for seg in segments:
            steps = [s for s in seg.steps if s.layer == layer and s.site == site]
            new = _apply(steps, seg, layer, _stream(hidden, residual, seg))
            if new is None:
                continue
            if not touched:
                new_hidden = hidden.clone()
                new_residual = None if residual is None else residual.clone()
                touched = True
            new_hidden[seg.start:seg.end] = new
            if new_residual is not None:
                new_residual[seg.start:seg.end] = 0
        return (new_hidden, new_residual) if touched else None


def _stream(hidden: torch.Tensor, residual: torch.Tensor | None, seg: Segment) -> torch.Tensor:
    """The residual stream of a segment's tokens: ``hidden + residual`` (``hidden`` alone before the first layer)."""
    h = hidden[seg.start:seg.end]
    return h if residual is None else h + residual[seg.start:seg.end]


def _segments(start: int, end: int, computed: int, prompt_length: int, steps: tuple[Step, ...]) -> list[Segment]:
    """A request's tokens split by generation step: prompt tokens are step 0, the token at position ``p`` past
    the prompt is step ``p - prompt_length + 1`` (HF generate's count), even when a preempted request recomputes."""
    out = []
    n_prompt = max(0, min(end - start, prompt_length - computed))
    if n_prompt:
        positions = torch.arange(computed, computed + n_prompt)
        out.append(Segment(start, start + n_prompt, 0, positions, prompt_length, steps))
    for token in range(start + n_prompt, end):
        position = computed + token - start
        out.append(Segment(token, token + 1, position - prompt_length + 1, position, prompt_length, steps))
    return out


def _apply(steps: list[Step], seg: Segment, layer: int, h: torch.Tensor) -> torch.Tensor | None:
    """The steps' operators on one segment's stream, as the engine applies them (zero-coefficient tokens kept)."""
    out = None
    for s in steps:
        mult = s.schedule(seg.step, seg.positions, layer, seg.prompt_length)
        current = h if out is None else out
        if torch.is_tensor(mult):
            coef = (mult.to(torch.float32) * s.coefficient).to(device=h.device, dtype=h.dtype).reshape(-1, 1)
            if not coef.any():
                continue
            out = torch.where(coef != 0, s.operator(current, s.vector, coef), current)
        elif mult:
            out = s.operator(current, s.vector, s.coefficient * float(mult))
    return out


def _layer_list(model: nn.Module) -> nn.ModuleList:
    prefix = guess_layer_prefix(name for name, _ in model.named_modules())
    if prefix is None:
        raise PolysteerError(f"polysteer cannot find the decoder layers of {type(model).__name__}")
    return model.get_submodule(prefix)


def install(runner: Any) -> Steerer | None:
    """Hook the runner's model; None (with a warning) where the runner or compilation mode is unsupported."""
    if not all(hasattr(runner, name) for name in ("input_batch", "requests", "query_start_loc")):
        log.warning("polysteer: %s is not a supported model runner; steering is off", type(runner).__name__)
        return None
    model = runner.model
    steerer = Steerer(runner, model, _layer_list(model))
    model.register_forward_pre_hook(steerer.before_pass, with_kwargs=True)
    for index, layer in enumerate(steerer.layers):
        layer.register_forward_pre_hook(_pre_hook(steerer, index), with_kwargs=True)
        layer.register_forward_hook(_post_hook(steerer, index))
    runner.polysteer = steerer
    return steerer


def _pre_hook(steerer: Steerer, index: int):
    def hook(module, args, kwargs):
        if len(args) < 2:
            return None
        residual = args[2] if len(args) > 2 else kwargs.get("residual")
        edited = steerer.edit(index, "resid_pre", args[1], residual)
        if edited is None:
            return None
        if len(args) > 2:
            return (args[0], edited[0], edited[1], *args[3:]), kwargs
        return (args[0], edited[0], *args[2:]), {**kwargs, "residual": edited[1]}
    return hook


def _post_hook(steerer: Steerer, index: int):
    def hook(module, args, output):
        if not isinstance(output, tuple) or len(output) != 2:
            return None
        return steerer.edit(index, "resid_post", output[0], output[1])
    return hook
