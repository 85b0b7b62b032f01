"""Fixtures for the vLLM plugin tests: SmolLM2 in float32, three direction files, one in-process vLLM engine.

Run in the vLLM venv only (`bash scripts/install-vllm.sh`, then `.venv-vllm/bin/python -m pytest tests/vllm`);
tests/conftest.py leaves this folder out wherever vLLM is not importable.
"""

from __future__ import annotations

import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process: start-up ~10 s, not ~60 s
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from polysteer import Direction  # noqa: E402
from polysteer.modalities.text.modality import TextModality  # noqa: E402
from polysteer.modalities.text.models import load_text_model, smollm2_path  # noqa: E402

PROMPT_IDS_TEXT = ["Tell me about the ocean.", "Write a haiku about autumn.", "What is a good breakfast?"]
BLOCK = 32  # KV block size (the CPU backend takes multiples of 32), so short prompts fill cacheable blocks


@pytest.fixture(scope="session")
def hf():
    """polysteer's HF backend: SmolLM2 in float32 with its tokenizer."""
    torch.manual_seed(0)
    return load_text_model(dtype="float32", device="cpu")


@pytest.fixture(scope="session")
def prompts(hf):
    """Chat-formatted prompt token ids (the same ids go to HF and to vLLM)."""
    _, tokenizer = hf
    return [tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                          tokenize=True, return_dict=False) for text in PROMPT_IDS_TEXT]


@pytest.fixture(scope="session")
def directions(hf, prompts, tmp_path_factory):
    """Three direction files in $POLYSTEER_DIRECTIONS: two random vectors and the mean activation direction."""
    model, _ = hf
    folder = tmp_path_factory.mktemp("directions")
    identity = TextModality().identity(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        states = model(torch.tensor([prompts[0]]), output_hidden_states=True).hidden_states
    vectors = {
        "joy": {"text.blocks.12.resid_post": torch.randn(576, generator=gen)},
        "calm": {"text.blocks.8.resid_post": torch.randn(576, generator=gen),
                 "text.blocks.16.resid_post": torch.randn(576, generator=gen)},
        "mean": {"text.blocks.10.resid_post": states[11][0].mean(0)},
    }
    for name, fitted in vectors.items():
        Direction.from_fitted(fitted, model=identity, modality="text", finder={"name": "test"}).save(
            folder / f"{name}.safetensors")
    os.environ["POLYSTEER_DIRECTIONS"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def llm(directions):
    """One in-process vLLM engine on SmolLM2, float32, eager, prefix caching on."""
    from vllm import LLM

    return LLM(str(smollm2_path()), dtype="float32", enforce_eager=True, block_size=BLOCK, max_model_len=512,
               enable_prefix_caching=True, seed=0, max_num_seqs=32)
