"""Where the plugin attaches to vLLM 0.32 (private internals: pinned by scripts/install-vllm.sh, checked by tests/vllm).

* ``InputProcessor.process_inputs`` (frontend, every process that takes requests): a request's ``steer`` value is
  checked there, so a bad one fails alone with a 400 / an exception naming the problem, and the request gets a
  ``cache_salt`` derived from its plan, so prefix caching never shares KV blocks between different plans.
* ``CompletionRequest`` / ``ChatCompletionRequest.to_sampling_params`` (OpenAI server): a top-level ``steer`` field,
  as ``polysteer serve`` takes it, moves into ``SamplingParams.extra_args``; ``vllm_xargs={"steer": "<json>"}``
  arrives there by itself.
* ``load_model`` of the V1 model runners (worker): installs the hooks of :mod:`polysteer.modalities.text.vllm.worker`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from typing import Any

from polysteer.errors import PolysteerError
from polysteer.modalities.text.vllm.spec import STEER_KEY, DirectionStore, Geometry, resolve

log = logging.getLogger("polysteer.vllm")
_STORE = DirectionStore()


@functools.cache
def steer_error() -> type:
    """The error for a bad ``steer`` value: vLLM answers it with HTTP 400, Python callers catch a PolysteerError.

    Built on first use, so importing this module (as the public-API test does for every submodule) needs no vLLM.
    """
    from vllm.exceptions import VLLMValidationError

    return type("SteerError", (VLLMValidationError, PolysteerError), {"__doc__": steer_error.__doc__})


def _refuse(message: str) -> Exception:
    return steer_error()(message, parameter=STEER_KEY)


def salted(salt: str | None, plan_salt: str) -> str:
    """The request's own cache salt (if any) combined with its plan's."""
    return plan_salt if not salt else hashlib.sha256(f"{salt}\0{plan_salt}".encode()).hexdigest()[:32]


def _check_request(processor: Any, request: Any) -> None:
    params = request.sampling_params
    value = (getattr(params, "extra_args", None) or {}).get(STEER_KEY)
    if value is None:
        return
    from vllm.config import CompilationMode

    if processor.vllm_config.compilation_config.mode != CompilationMode.NONE:
        raise _refuse("steering needs eager mode: start vLLM with enforce_eager=True (--enforce-eager)")
    geometry = getattr(processor, "_polysteer_geometry", None)
    if geometry is None:
        geometry = processor._polysteer_geometry = Geometry.from_hf_config(processor.model_config.hf_config)
    try:
        plan = resolve(value, geometry, _STORE)
    except PolysteerError as exc:
        raise _refuse(str(exc)) from None
    request.cache_salt = salted(request.cache_salt, plan.salt)


def _patch_processor() -> None:
    from vllm.v1.engine.input_processor import InputProcessor

    original = InputProcessor.process_inputs
    if getattr(original, "_polysteer", False):
        return

    @functools.wraps(original)
    def process_inputs(self, *args: Any, **kwargs: Any):
        request = original(self, *args, **kwargs)
        _check_request(self, request)
        return request

    process_inputs._polysteer = True
    InputProcessor.process_inputs = process_inputs


def _patch_openai() -> None:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    for cls in (CompletionRequest, ChatCompletionRequest):
        original = cls.to_sampling_params
        if getattr(original, "_polysteer", False):
            continue
        cls.to_sampling_params = _with_steer_field(original)


def _with_steer_field(original):
    @functools.wraps(original)
    def to_sampling_params(self, *args: Any, **kwargs: Any):
        params = original(self, *args, **kwargs)
        value = (self.model_extra or {}).get(STEER_KEY)
        if value is not None:
            extra = dict(params.extra_args or {})
            if STEER_KEY in extra:
                raise _refuse("give steer once: as a field or in vllm_xargs, not both")
            params.extra_args = {**extra, STEER_KEY: value}
        return params

    to_sampling_params._polysteer = True
    return to_sampling_params


def _patch_runners() -> None:
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    for cls in (GPUModelRunner, CPUModelRunner):
        original = cls.__dict__.get("load_model")
        if original is None or getattr(original, "_polysteer", False):
            continue
        cls.load_model = _installing(original)


def _installing(original):
    @functools.wraps(original)
    def load_model(self, *args: Any, **kwargs: Any):
        result = original(self, *args, **kwargs)
        from vllm.config import CompilationMode

        from polysteer.modalities.text.vllm.worker import install

        if self.vllm_config.compilation_config.mode != CompilationMode.NONE:
            log.info("polysteer: steering needs enforce_eager=True; hooks not installed (steered requests refused)")
        elif getattr(self, "polysteer", None) is None:
            install(self)
        return result

    load_model._polysteer = True
    return load_model


def apply() -> None:
    """Patch vLLM once per process (vLLM calls the plugin's ``register`` in each of its processes)."""
    _patch_processor()
    _patch_openai()
    _patch_runners()
