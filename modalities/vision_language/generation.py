"""Images + prompts in, captions or activations out: prompt formatting, (steered) generation, capture."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Iterator, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from polysteer.capture import capture
from polysteer.engine import Plan, as_plan, steer
from polysteer.errors import PolysteerError
from polysteer.hookpoints import HookPoint
from polysteer.modalities.vision_language.modality import VisionLanguageModality
from polysteer.progress import TokenTicks

DESCRIBE_PROMPT = "Please help me describe the image in detail."  # the CHAIR prompt of the VTI paper
PIXEL_KEYS = ("pixel_values", "pixel_attention_mask")


def format_prompt(processor: Any, prompt: str) -> str:
    """The user turn with one image, ready for the answer (the processor's chat template when it has one)."""
    if getattr(processor, "chat_template", None):
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return processor.apply_chat_template(conversation, add_generation_prompt=True)
    return f"{getattr(processor, 'image_token', '<image>')}\n{prompt}"


def encode(processor: Any, images: Sequence[Image.Image], texts: Sequence[str], device=None, dtype=None):
    """Left-padded model inputs for one image per text; floating tensors cast to ``dtype``."""
    if len(images) != len(texts):
        raise PolysteerError(f"need one image per text, got {len(images)} images and {len(texts)} texts")
    # padding_side per call: the processor may be shared by threads describing at once
    batch = processor(images=[[img] for img in images], text=list(texts), return_tensors="pt", padding=True,
                      padding_side="left")
    return {k: _place(v, device, dtype) for k, v in batch.items()}


def _place(value, device, dtype):
    if not torch.is_tensor(value):
        return value
    value = value.to(device) if device is not None else value
    return value.to(dtype) if dtype is not None and value.is_floating_point() else value


def _model_place(model) -> tuple[Any, Any]:
    param = next(model.parameters())
    return param.device, param.dtype


def pixel_inputs(model, processor: Any, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
    """Image-processor outputs that ``model.get_image_features`` takes (pixels, and masks where used)."""
    device, dtype = _model_place(model)
    out = processor.image_processor(images=[[img] for img in images], return_tensors="pt")
    return {k: _place(v, device, dtype) for k, v in out.items() if k in PIXEL_KEYS}


def generate(
    model,
    processor,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    plan: Plan | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    progress: bool = True,
) -> list[str]:
    """Greedy answer per (image, prompt), steered by ``plan`` (applied to every row)."""
    ids = generate_ids(model, processor, images, prompts, plan, max_new_tokens, batch_size, progress)
    return [text.strip() for text in processor.tokenizer.batch_decode(ids, skip_special_tokens=True)]


def generate_ids(model, processor, images: Sequence[Image.Image], prompts: Sequence[str], plan: Plan | None = None,
                 max_new_tokens: int = 64, batch_size: int = 8, progress: bool = True) -> list[list[int]]:
    """The generated token ids per (image, prompt), greedy, steered by ``plan`` (rows of a batch padded alike)."""
    if len(images) != len(prompts):
        raise PolysteerError(f"need one prompt per image, got {len(prompts)} prompts for {len(images)} images")
    plan = as_plan(plan) if plan is not None else None
    device, dtype = _model_place(model)
    pad = processor.tokenizer.pad_token_id
    outputs: list[list[int]] = []
    with tqdm(total=len(images) * max_new_tokens, desc="generating", unit="token", leave=False,
              disable=not progress) as bar:
        for start in range(0, len(images), batch_size):
            texts = [format_prompt(processor, p) for p in prompts[start : start + batch_size]]
            batch = encode(processor, images[start : start + batch_size], texts, device, dtype)
            with torch.no_grad(), (steer(model, plan) if plan is not None else nullcontext()), \
                    TokenTicks(model, bar, len(texts)):
                out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
            outputs += out[:, batch["input_ids"].shape[1]:].tolist()
            bar.update((start + len(texts)) * max_new_tokens - bar.n)  # the tokens of rows that stopped early
    return outputs


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first token step where two generations differ (a length difference counts), or None if equal."""
    for step, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return step
    return None if len(a) == len(b) else min(len(a), len(b))


def describe(model, processor, images: Sequence[Image.Image], prompt: str = DESCRIBE_PROMPT, **kwargs) -> list[str]:
    """A caption per image (see :func:`generate` for the keyword arguments)."""
    return generate(model, processor, images, [prompt] * len(images), **kwargs)


def collect(
    model,
    processor,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    answers: Sequence[str],
    hook_points: Sequence[str],
    pooling: str = "last",
    batch_size: int = 8,
) -> dict[str, torch.Tensor]:
    """Pooled activations ``{hook_point: [N, d_model]}`` of image + prompt + answer, read in one pass.

    ``pooling='last'`` reads the answer's last token (VTI); ``'mean'`` averages the answer's tokens.
    """
    if pooling not in ("last", "mean"):
        raise PolysteerError(f"pooling {pooling!r} is not supported here; use 'last' or 'mean'")
    if not len(images) == len(prompts) == len(answers) or not images:
        raise PolysteerError(f"need as many prompts and answers as images, got {len(images)}, {len(prompts)}, "
                             f"{len(answers)}")
    batches = _capture_batches(model, processor, images, prompts, answers, batch_size)
    return capture(model, VisionLanguageModality(), hook_points, batches, pooling,
                   total=-(-len(images) // batch_size), desc="collecting activations")


def _capture_batches(model, processor, images, prompts, answers, batch_size) -> Iterator[dict[str, Any]]:
    device, dtype = _model_place(model)
    tokenizer = processor.tokenizer
    for start in range(0, len(images), batch_size):
        chunk = slice(start, start + batch_size)
        texts = [format_prompt(processor, p) + " " + a for p, a in zip(prompts[chunk], answers[chunk])]
        batch = encode(processor, images[chunk], texts, device, dtype)
        mask = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
        for row, answer in enumerate(answers[chunk]):
            n = max(1, len(tokenizer(" " + answer, add_special_tokens=False).input_ids))
            mask[row, -n:] = True  # left padding: the answer ends every row
        yield {"inputs": batch, "mask": mask}


def vision_states(model, hook_points: Sequence[str], pixels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every vision-tower position at each hook point: ``{hook_point: [images, tokens, d_vision]}`` (float32)."""
    modality = VisionLanguageModality()
    store: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for hp in hook_points:
            target = modality.resolve(model, HookPoint.parse(hp))
            keep = _keeper(store, hp)
            if target.edit == "input":
                handles.append(target.module.register_forward_pre_hook(
                    lambda m, a, k, _keep=keep: _keep(a[0] if a else k["hidden_states"]), with_kwargs=True))
            else:
                handles.append(target.module.register_forward_hook(
                    lambda m, a, out, _keep=keep: _keep(out[0] if isinstance(out, tuple) else out)))
        with torch.no_grad():
            model.get_image_features(**pixels)
    finally:
        for handle in handles:
            handle.remove()
    return store


def _keeper(store: dict[str, torch.Tensor], hp: str):
    def keep(h: torch.Tensor) -> None:  # returns None: a hook that returns a value would replace the tensor
        store[hp] = h.detach().float().cpu()

    return keep
