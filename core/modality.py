"""The modality contract: which models a modality accepts, where its hook points live, how steps count, and how
its models load, give activations and generate."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from polysteer.errors import PolysteerError
from polysteer.hookpoints import HookPoint


@dataclass
class Target:
    """A resolved hook point: the module, and whether steering edits its input or its output."""

    module: nn.Module
    edit: str = "output"  # "output" (forward hook) or "input" (forward pre-hook)


ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn", "fc2")  # OPT has no MLP module: fc2 is its last layer


def block_target(block: nn.Module, site: str) -> Target:
    """Where a site lives in a transformer block: its output, its input, or its attention/MLP child's output."""
    if site == "resid_post":
        return Target(block, "output")
    if site == "resid_pre":
        return Target(block, "input")
    names, what = (ATTN_NAMES, "attention") if site == "attn_out" else (MLP_NAMES, "MLP")
    for name in names:
        child = getattr(block, name, None)
        if isinstance(child, nn.Module):
            return Target(child, "output")
    children = [n for n, _ in block.named_children()]
    raise PolysteerError(f"cannot find the {what} of {type(block).__name__} for {site}; its children are {children}")


@dataclass
class StepState:
    """Where a generation is, shared by every hook during one forward pass."""

    step: int
    positions: torch.Tensor  # [batch, seq] index of each new token in its row, padding ignored
    prompt_length: torch.Tensor  # [batch, 1]
    batch: dict[str, Any]  # the forward's keyword inputs, for modality span masks


class StepTracker:
    """Counts generation steps from the root module's forward inputs (KV cache and padding aware).

    A pass whose cache is empty starts a new generation (step 0); each later pass is one more step.
    """

    def __init__(self, root: nn.Module):
        self.root = root
        self.state: StepState | None = None

    def update(self, args: tuple, kwargs: dict) -> None:
        x = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds", args[0] if args else None)
        batch, seq = x.shape[:2]
        mask = kwargs.get("attention_mask")
        past = cache_length(kwargs)
        if mask is not None and mask.ndim == 2:
            positions = (mask.long().cumsum(-1) - 1).clamp_min(0)[:, -seq:]
            real = mask[:, -seq:].sum(-1, keepdim=True)
        else:
            positions = (past + torch.arange(seq, device=x.device)).expand(batch, seq)
            real = torch.full((batch, 1), seq, device=x.device)
        fresh = past == 0 or self.state is None
        step = 0 if fresh else self.state.step + 1
        prompt = real if fresh else self.state.prompt_length
        if not fresh and prompt.shape[0] != batch:
            prompt = torch.full((batch, 1), int(prompt.max()), device=x.device)
        self.state = StepState(step, positions.to(x.device), prompt.to(x.device), kwargs)

    def keep_rows(self, index: torch.Tensor) -> None:
        """Follow a batch that dropped every row not in ``index`` (its prompt lengths go with it)."""
        if self.state is not None:
            prompt = self.state.prompt_length[index.to(self.state.prompt_length.device)]
            self.state = StepState(self.state.step, self.state.positions, prompt, self.state.batch)

    def state_for(self, h: torch.Tensor) -> StepState:
        """The state for a hidden tensor; towers with other lengths (image patches) get plain positions."""
        state = self.state
        if state is None or state.positions.shape != h.shape[:2]:
            positions = torch.arange(h.shape[1], device=h.device).expand(h.shape[0], -1)
            step = state.step if state is not None else 0
            return StepState(step, positions, torch.full((h.shape[0], 1), h.shape[1], device=h.device), {})
        return state


def cache_length(kwargs: dict) -> int:
    """Tokens already in the KV cache a forward call was given (0 for a fresh pass).

    transformers < 5.24 passes the cache as ``past_key_values``, 5.24+ as ``cache``.
    """
    cache = kwargs.get("past_key_values")
    if cache is None:
        cache = kwargs.get("cache")
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, (tuple, list)) and cache and cache[0] is not None:
        return int(cache[0][0].shape[-2])
    return 0


class Modality:
    """Adapter between polysteer's vocabulary and one family of models.

    Steering needs ``accepts``, ``hook_points``, ``resolve`` and ``d_model`` (they raise NotImplementedError
    until a subclass defines them). The workflow contract (``n_layers``, ``load_model``, ``capture``,
    ``generate``) is optional: a modality that cannot do one of them (open_clip towers cannot generate)
    keeps the base method, which raises a PolysteerError naming the modality and the operation.
    """

    name: str = ""
    priority: int = 0  # higher is asked first: specific modalities outrank generic ones
    steps_per_second: float | None = None

    def accepts(self, model: Any) -> bool:
        raise NotImplementedError

    def hook_points(self, model: Any) -> list[str]:
        """Every canonical hook point this model offers."""
        raise NotImplementedError

    def resolve(self, model: Any, hook_point: HookPoint) -> Target:
        raise NotImplementedError

    def d_model(self, model: Any, hook_point: HookPoint) -> int:
        raise NotImplementedError

    def n_layers(self, model: Any) -> int:
        """How many blocks the model's main tower has (the tower its workflows steer by default)."""
        raise self.unsupported("count layers")

    def load_model(self, name: str | None = None, device: str = "auto", dtype: str = "auto",
                   **options: Any) -> tuple[Any, Any]:
        """``(model, processor)`` in eval mode; the processor is whatever turns inputs into model inputs.

        Args:
            name: a local folder, hub id or modality-specific name; None is the modality's default model.
            device: ``auto``, ``cpu``, ``cuda``, ... (see :func:`polysteer.device.resolve_device`).
            dtype: ``auto``, ``float32``, ``bfloat16``, ... (see :func:`polysteer.device.resolve_dtype`).
            options: modality-specific loader options (e.g. a backend or a weights file).
        """
        raise self.unsupported("load models")

    def capture(self, model: Any, processor: Any, inputs: Sequence[Any], hook_points: Sequence[str],
                **options: Any) -> dict[str, torch.Tensor]:
        """Pooled activations ``{hook_point: [len(inputs), d_model]}`` of ``inputs``, in their order."""
        raise self.unsupported("capture activations")

    def generate(self, model: Any, processor: Any, inputs: Sequence[Any], plan: Any = None, **options: Any) -> Any:
        """One output per input, steered by ``plan`` (a Plan, Intervention list or None) while it generates."""
        raise self.unsupported("generate")

    def unsupported(self, operation: str, hint: str = "") -> PolysteerError:
        """The error a contract method raises for an operation this modality does not offer."""
        return PolysteerError(f"the {self.name or type(self).__name__!r} modality cannot {operation}"
                              + (f": {hint}" if hint else ""))

    def tracker(self, model: Any) -> StepTracker:
        return StepTracker(model)

    def input_rows(self, batch: int) -> int:
        """How many user rows a hooked batch of ``batch`` rows holds (CFG doubles it)."""
        return batch

    def expand_rows(self, values: torch.Tensor, batch: int) -> torch.Tensor:
        """Map per-input-row values to the batch a hook sees (generate repeats rows for num_return_sequences)."""
        if batch == len(values):
            return values
        if batch % len(values):
            raise PolysteerError(f"plan has {len(values)} rows but the model ran a batch of {batch}")
        return values.repeat_interleave(batch // len(values), dim=0)

    def branch_rows(self, branch: str, batch: int) -> torch.Tensor | None:
        """Row mask for a classifier-free-guidance branch; modalities without CFG accept only 'both'."""
        if branch != "both":
            raise PolysteerError(f"modality {self.name!r} has no classifier-free guidance branch {branch!r}")
        return None

    def span_mask(self, span: str, state: StepState, h: torch.Tensor) -> torch.Tensor:
        """Boolean [batch, seq] mask of a modality-specific span (e.g. 'image' tokens)."""
        raise PolysteerError(f"modality {self.name!r} has no position span {span!r}")

    def identity(self, model: Any) -> dict[str, str]:
        """Model name, architecture and a hash of the config fields that fix the hidden geometry."""
        config = getattr(model, "config", None)
        fields = config.to_dict() if hasattr(config, "to_dict") else {}
        keep = {k: v for k, v in sorted(fields.items()) if k in _GEOMETRY_KEYS}
        return {
            "name": str(getattr(config, "_name_or_path", "") or type(model).__name__),
            "architecture": type(model).__name__,
            "config_hash": hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16],
        }


_GEOMETRY_KEYS = {
    "model_type", "hidden_size", "n_embd", "d_model", "num_hidden_layers", "n_layer", "num_layers",
    "intermediate_size", "num_attention_heads", "n_head", "vocab_size",
}


def modality_for(model: Any, name: str | None = None) -> Modality:
    """The modality that handles ``model`` (or the one named), with a clear error if none does."""
    from polysteer.manager import registry

    reg = registry("modalities")
    if name is not None:
        return reg[name]()
    modalities = sorted((cls() for cls in reg.items.values()), key=lambda m: -m.priority)
    for modality in modalities:
        if modality.accepts(model):
            return modality
    raise PolysteerError(
        f"no installed modality accepts a {type(model).__name__}; installed: {', '.join(reg.names()) or 'none'}. "
        "Install a modality plugin for this model family (see `polysteer plugins`)."
    )
