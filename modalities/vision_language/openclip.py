"""open_clip models as steering targets, and the CLIP-score evaluator.

An open_clip CLIP's image encoder blocks (``visual.transformer.resblocks``) are ``vision.blocks.{i}``
and its text encoder blocks (``transformer.resblocks``) are ``text.blocks.{i}``, so a plan can steer
the tower that a CLIP score (or a VLM built on it) reads. Weights load from local ``.safetensors``
files only: open_clip's other checkpoint formats are pickles.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import nn

from polysteer.device import resolve_device, resolve_dtype
from polysteer.engine import steer
from polysteer.errors import PolysteerError
from polysteer.evaluator import Evaluator
from polysteer.hookpoints import SITES, HookPoint
from polysteer.hub import resolve_model_source
from polysteer.modality import Modality, Target, block_target

_TOWER_PATHS = {"vision": "visual.transformer", "text": "transformer"}


class OpenCLIPModality(Modality):
    """open_clip ``CLIP`` models (ViT image tower; text tower where it uses open_clip's resblocks)."""

    name = "open_clip"
    priority = 10

    def accepts(self, model: Any) -> bool:
        return isinstance(model, nn.Module) and hasattr(model, "encode_image") and self._transformer(
            model, "vision", strict=False) is not None

    def _transformer(self, model: nn.Module, tower: str, strict: bool = True) -> nn.Module | None:
        path = _TOWER_PATHS.get(tower)
        try:
            module = model.get_submodule(path) if path else None
        except AttributeError:
            module = None
        if module is None or not isinstance(getattr(module, "resblocks", None), nn.ModuleList):
            if strict:
                found = [t for t in _TOWER_PATHS if self._transformer(model, t, strict=False) is not None]
                raise PolysteerError(f"this open_clip model has no {tower} tower with resblocks; steerable: {found}")
            return None
        return module

    def hook_points(self, model: Any) -> list[str]:
        points = []
        for tower in _TOWER_PATHS:
            transformer = self._transformer(model, tower, strict=False)
            if transformer is not None:
                points += [str(HookPoint(tower, i, s)) for i in range(len(transformer.resblocks)) for s in SITES]
        return points

    def resolve(self, model: Any, hook_point: HookPoint) -> Target:
        hp = HookPoint.parse(hook_point)
        blocks = self._transformer(model, hp.tower).resblocks
        if not 0 <= hp.layer < len(blocks):
            raise PolysteerError(f"layer {hp.layer} out of range for the {hp.tower} tower: it has {len(blocks)} "
                                 f"resblocks (0-{len(blocks) - 1})")
        return block_target(blocks[hp.layer], hp.site)

    def d_model(self, model: Any, hook_point: HookPoint) -> int:
        return int(self._transformer(model, HookPoint.parse(hook_point).tower).width)

    def n_layers(self, model: Any, tower: str = "vision") -> int:
        """Resblocks of ``tower`` (default the image tower, the one a CLIP score or a VLM reads)."""
        return len(self._transformer(model, tower).resblocks)

    def load_model(self, name: str | None = None, device: str = "auto", dtype: str = "auto",
                   **options: Any) -> tuple[Any, "CLIPProcessor"]:
        """``(model, CLIPProcessor(preprocess, tokenizer))``; ``options``: ``weights``, a local .safetensors file.

        ``name`` is an architecture, a hub-layout folder or a hub id (see :func:`load_openclip`)."""
        if name is None:
            raise PolysteerError("open_clip has no default model: name an architecture such as ViT-B-32, "
                                 "a checkpoint folder or a hub id")
        model, preprocess, tokenizer = load_openclip(name, device=device, dtype=dtype, **options)
        return model, CLIPProcessor(preprocess, tokenizer)

    def generate(self, model: Any, processor: Any, inputs: Sequence[Any], plan: Any = None, **options: Any):
        raise self.unsupported("generate", "open_clip towers embed images and text; steer a vision-language "
                                           "model to generate, or score captions with the clip-score evaluator")


class CLIPProcessor(NamedTuple):
    """What an open_clip model reads with: the image transform and the text tokenizer."""

    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[Sequence[str]], torch.Tensor]


def load_openclip(name: str | Path, weights: str | Path | None = None, device: str | torch.device = "auto",
                  dtype: str | torch.dtype = "auto"):
    """``(model, preprocess, tokenizer)`` for an open_clip architecture or a published checkpoint.

    Args:
        name: an open_clip architecture such as ``ViT-B-32`` (see ``open_clip.list_models()``); a folder in the
            hub layout (``open_clip_config.json`` + ``open_clip_model.safetensors``); or a hub id
            (``hf-hub:org/name`` or ``org/name``), fetched into the Hugging Face cache (config, safetensors and
            tokenizer files only) or read from it offline.
        weights: a ``.safetensors`` state dict for an architecture name; None keeps the random initialisation.
        device: ``auto`` (CUDA, then MPS, else CPU) or a torch device name.
        dtype: ``auto`` (bfloat16 on a GPU, float32 on CPU), a name such as ``bfloat16``, or a torch dtype.
    """
    name = str(name)
    folder = _checkpoint_folder(name)  # before importing open_clip: an uncached hub id offline fails at once
    if folder is not None:
        if weights is not None:
            raise PolysteerError(f"{name} holds its own weights: drop weights={weights}")
        _safetensors_in(folder)  # open_clip reads a folder's safetensors first: refuse folders with only pickles
        name = f"local-dir:{folder}"
    if weights is not None and Path(weights).suffix != ".safetensors":
        raise PolysteerError(f"{weights} is not a .safetensors file; polysteer never unpickles checkpoints. "
                             "Convert it once with safetensors.torch.save_file(state_dict, 'clip.safetensors')")
    if weights is not None and not Path(weights).is_file():
        raise PolysteerError(f"open_clip weights {weights} do not exist")
    place = resolve_device(device)
    precision = resolve_dtype(dtype, place)
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, device=str(place))
    if weights is not None:  # safetensors takes a device name, not a torch.device
        open_clip.factory.load_checkpoint(model, str(weights), device=str(place))
    return model.to(dtype=precision).eval(), preprocess, open_clip.get_tokenizer(name)


def _checkpoint_folder(name: str) -> Path | None:
    """The local folder of a hub-layout checkpoint (a folder, or a hub id resolved through the cache), or None
    for an architecture name."""
    repo = name.removeprefix("hf-hub:")
    if not (Path(repo).expanduser().is_dir() or name.startswith("hf-hub:") or "/" in name):
        return None
    source = Path(resolve_model_source(repo))
    if not source.is_dir():  # online: fetch only what open_clip reads, never the pickled duplicates
        from huggingface_hub import snapshot_download

        source = Path(snapshot_download(repo, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    if not (source / "open_clip_config.json").is_file():
        raise PolysteerError(f"{name} has no open_clip_config.json: not an open_clip checkpoint in the hub layout")
    return source


def _safetensors_in(folder: Path) -> Path:
    """The folder's open_clip weights as safetensors (open_clip's own preferred names first)."""
    for candidate in ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors"):
        if (folder / candidate).is_file():
            return folder / candidate
    raise PolysteerError(f"{folder} has no open_clip_model.safetensors; polysteer never unpickles checkpoints. "
                         "Convert it once with safetensors.torch.save_file(state_dict, 'open_clip_model.safetensors')")


def tiny_openclip(seed: int = 0):
    """A random 2-layer open_clip CLIP on 32-pixel images (``(model, preprocess, tokenizer)``) for tests."""
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    model = CLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=32),
                 text_cfg=CLIPTextCfg(context_length=16, vocab_size=49408, width=32, heads=2, layers=2))
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=16)
    return model.eval(), open_clip.image_transform(32, is_train=False), tokenizer


class CLIPScore(Evaluator):
    """``weight * max(cos(image, text), 0)`` per (image, caption) with an open_clip model.

    ``weight`` 100 follows torchmetrics; Hessel et al.'s CLIPScore uses 2.5. A ``plan`` passed to
    :meth:`evaluate` steers the CLIP model's own towers while it scores.
    """

    name = "clip-score"
    modalities = ("vision_language", "open_clip")

    def __init__(self, model=None, preprocess=None, tokenizer=None, weight: float = 100.0):
        self.model, self.preprocess, self.tokenizer, self.weight = model, preprocess, tokenizer, weight

    @torch.no_grad()
    def evaluate(self, outputs: Sequence[str], images: Sequence[Any] = (), plan=None, **context) -> list[float]:
        if self.model is None:
            raise PolysteerError("clip-score needs an open_clip model: CLIPScore(*load_openclip(name, weights))")
        if len(images) != len(outputs):
            raise PolysteerError(f"clip-score needs one image per caption, got {len(images)} for {len(outputs)}")
        param = next(self.model.parameters())  # pixels follow the model's device and precision
        pixels = torch.stack([self.preprocess(img.convert("RGB")) for img in images]).to(param.device, param.dtype)
        tokens = self.tokenizer(list(outputs)).to(param.device)
        with steer(self.model, plan, modality=OpenCLIPModality()) if plan is not None else nullcontext():
            image = torch.nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)
            text = torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)
        return (self.weight * (image * text).sum(-1).clamp_min(0)).tolist()
