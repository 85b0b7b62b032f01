"""Per-request steering inside vLLM, as a vLLM plugin (``vllm.general_plugins`` entry point ``polysteer``).

Install with ``scripts/install-vllm.sh`` (a separate venv: vLLM pins its own torch). Then, with
``POLYSTEER_DIRECTIONS=DIR`` holding direction files ``DIR/NAME.safetensors``::

    llm = vllm.LLM(model, enforce_eager=True)
    llm.generate(prompt, SamplingParams(extra_args={"steer": [
        {"direction": "NAME", "coefficient": 4, "schedule": "generated-only", "operator": "add", "layers": [12]}]}))

``vllm serve MODEL --enforce-eager`` takes the same list as a top-level ``steer`` field (as ``polysteer serve`` does)
or as ``vllm_xargs={"steer": "<the list as JSON>"}``. This package is the only place polysteer imports vLLM, and
only when vLLM loads the plugin.
"""

from __future__ import annotations

__all__ = ["register"]


def register() -> None:
    """vLLM's plugin hook, called once in every vLLM process: patch the frontend and the model runners."""
    from polysteer.modalities.text.vllm.patches import apply

    apply()
