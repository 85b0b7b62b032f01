import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import tiny_model, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def llama():
    return tiny_model("llama")


@pytest.fixture(scope="session")
def smollm2():
    """The real default model, converted once per machine into the polysteer cache."""
    from polysteer.modalities.text.models import load_text_model

    return load_text_model()


@pytest.fixture(autouse=True)
def _no_plugin_restriction(monkeypatch):
    monkeypatch.delenv("POLYSTEER_LOAD_PLUGINS", raising=False)
