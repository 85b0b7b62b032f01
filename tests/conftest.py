import importlib.util
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).parent))

# tests/vllm runs in the separate vLLM venv (scripts/install-vllm.sh): `.venv-vllm/bin/python -m pytest tests/vllm`.
# (tests/vllm itself looks like a namespace package `vllm` from here: only a real one, with an origin, counts.)
collect_ignore = [] if getattr(importlib.util.find_spec("vllm"), "origin", None) else ["vllm"]

# Property tests check behaviour, never wall time: a busy 2-core CI machine must not fail them on a deadline.
settings.register_profile("polysteer", deadline=None)
settings.load_profile("polysteer")

from tiny import tiny_model, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def llama():
    return tiny_model("llama")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """The tiny Llama and its tokenizer saved as a model directory (for CLI tests; modules may override it)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def smollm2():
    """The real default model, converted once per machine into the polysteer cache."""
    from polysteer.modalities.text.models import load_text_model

    return load_text_model()


@pytest.fixture(autouse=True)
def _no_plugin_restriction(monkeypatch):
    monkeypatch.delenv("POLYSTEER_LOAD_PLUGINS", raising=False)


@pytest.fixture
def invoke():
    """Run the ``polysteer`` CLI in-process, ``invoke("find", "--model", path, ...)``; exceptions propagate."""
    from polysteer.cli import get_cli

    def run(*args):
        return CliRunner().invoke(get_cli(), [str(a) for a in args], catch_exceptions=False)

    return run
