"""The music modality: MusicGen's decoder blocks as ``decoder.blocks.{i}.{site}``, one step per frame, CFG rows."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from polysteer.errors import PolysteerError
from polysteer.hookpoints import SITES, HookPoint
from polysteer.modalities.music.backends import DEFAULT_FRAME_RATE, Backend, backend_for
from polysteer.modality import Modality, StepState, StepTracker, Target

BRANCHES = ("both", "cond", "uncond")


class MusicStepTracker(StepTracker):
    """Counts decoding steps of MusicGen: each forward of the decoder after the first is one audio frame.

    The step comes from the cache length, not from counting calls, so a repeated first pass
    (transformers runs its prefill twice) or audiocraft's two-step CFG (two passes per frame) keep
    the count right. Step 0 is the pass over the start token (or an audio prompt).
    """

    def __init__(self, backend: Backend):
        super().__init__(backend.root())
        self.backend = backend
        self.cfg = False
        self._prompt = 1

    def update(self, args: tuple, kwargs: dict) -> None:
        batch, seq, past = self.backend.step_shape(args, kwargs)
        if past == 0:
            self._prompt = seq
        step = 0 if past == 0 else past - self._prompt + 1
        device = next(self.root.parameters()).device
        positions = (past + torch.arange(seq, device=device)).expand(batch, seq)
        prompt = torch.full((batch, 1), self._prompt, device=device)
        self.cfg = self.backend.cfg_doubled(args, kwargs, batch)
        self.state = StepState(step, positions, prompt, kwargs)


class MusicModality(Modality):
    """transformers ``MusicgenForConditionalGeneration`` and audiocraft ``MusicGen``/``LMModel``.

    ``steps_per_second`` is the model's frame rate (50 for MusicGen), set when the engine asks for the
    tracker, so schedules such as ``ramp:5s-15s`` count frames. With classifier-free guidance the
    batch is ``[cond; uncond]``: ``branch='cond'`` steers the first half, ``'uncond'`` the second.
    """

    name = "music"
    priority = 10  # MusicGen objects must never fall through to the generic text modality
    steps_per_second = DEFAULT_FRAME_RATE

    def __init__(self):
        self._tracker: MusicStepTracker | None = None

    def backend(self, model: Any) -> Backend:
        backend = backend_for(model)
        if backend is None:
            raise PolysteerError(
                f"the music modality handles transformers MusicgenForConditionalGeneration and audiocraft MusicGen, "
                f"not {type(model).__name__}"
            )
        return backend

    def accepts(self, model: Any) -> bool:
        return backend_for(model) is not None

    def n_layers(self, model: Any) -> int:
        return len(self.backend(model).blocks())

    def load_model(self, name: str | None = None, device: str = "auto", dtype: str = "auto",
                   **options: Any) -> tuple[Any, Any]:
        """``(model, tokenizer)`` (None for audiocraft); ``options``: ``backend`` (see ``load_music_model``)."""
        from polysteer.modalities.music.models import TINY, load_music_model

        if name is None:
            raise PolysteerError("music has no default model: name a MusicGen folder or hub id "
                                 f"(facebook/musicgen-small) or a random test model ({', '.join(TINY)})")
        return load_music_model(name, device=device, dtype=dtype, **options)

    def capture(self, model: Any, processor: Any, inputs: Sequence[Any], hook_points: Sequence[str],
                **options: Any) -> dict[str, torch.Tensor]:
        """Mean-pooled decoder activations of mono audio clips (teacher-forced through the model's own codec).

        ``options``: sample_rate (default: the model's), batch_size, cache_dir (see ``collect_audio``).
        """
        from polysteer.modalities.music.capture import collect_audio

        sample_rate = options.pop("sample_rate", None) or self.backend(model).sample_rate
        return collect_audio(model, inputs, hook_points, sample_rate, **options)

    def generate(self, model: Any, processor: Any, inputs: Sequence[str], plan: Any = None,
                 **options: Any) -> np.ndarray:
        """``[B, channels, samples]`` audio for text prompts; ``options``: seconds, seed, sample, guidance, ..."""
        from polysteer.modalities.music.generation import generate_audio

        return generate_audio(model, inputs, plan, tokenizer=processor, **options)

    def hook_points(self, model: Any) -> list[str]:
        return [str(HookPoint("decoder", i, site)) for i in range(self.n_layers(model)) for site in SITES]

    def resolve(self, model: Any, hook_point: HookPoint) -> Target:
        hp = HookPoint.parse(hook_point)
        if hp.tower != "decoder":
            raise PolysteerError(f"hook point {hp} is in the {hp.tower!r} tower; MusicGen steers 'decoder.blocks.*'")
        backend = self.backend(model)
        blocks = backend.blocks()
        if not 0 <= hp.layer < len(blocks):
            raise PolysteerError(
                f"layer {hp.layer} out of range: this MusicGen has {len(blocks)} decoder blocks (0-{len(blocks) - 1})"
            )
        block = blocks[hp.layer]
        if hp.site == "resid_post":
            return Target(block, "output")
        if hp.site == "resid_pre":
            return Target(block, "input")
        name = backend.attn_name if hp.site == "attn_out" else backend.mlp_name
        return Target(getattr(block, name), "output")

    def d_model(self, model: Any, hook_point: HookPoint) -> int:
        return self.backend(model).d_model()

    def tracker(self, model: Any) -> MusicStepTracker:
        backend = self.backend(model)
        self.steps_per_second = backend.frame_rate
        self._tracker = MusicStepTracker(backend)
        return self._tracker

    def _cfg(self) -> bool:
        return self._tracker is not None and self._tracker.cfg

    def input_rows(self, batch: int) -> int:
        return batch // 2 if self._cfg() else batch

    def expand_rows(self, values: torch.Tensor, batch: int) -> torch.Tensor:
        if not self._cfg():
            return super().expand_rows(values, batch)
        return super().expand_rows(values, batch // 2).repeat(2)  # the same user row in both halves

    def branch_rows(self, branch: str, batch: int) -> torch.Tensor | None:
        if branch not in BRANCHES:
            raise PolysteerError(f"unknown CFG branch {branch!r}; use one of {', '.join(BRANCHES)}")
        if branch == "both":
            return None
        if not self._cfg():
            if branch == "cond":
                return torch.ones(batch)  # without guidance every row is conditional
            raise PolysteerError(
                "branch 'uncond' needs classifier-free guidance, but this generation runs without it; "
                "set guidance above 1 (transformers) or disable two_step_cfg (audiocraft)"
            )
        mask = torch.zeros(batch)
        half = batch // 2
        mask[:half] = 1.0 if branch == "cond" else 0.0
        mask[half:] = 0.0 if branch == "cond" else 1.0
        return mask

    def identity(self, model: Any) -> dict[str, str]:
        return self.backend(model).identity()
