"""``polysteer serve``: the OpenAI wire format, per-request steering in mixed batches, limits and errors.

The app is built in-process around the tiny Llama; the ``openai`` client talks to a real uvicorn on a free port.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from polysteer import Direction
from polysteer.cli import main
from polysteer.modalities.text.generation import generate
from polysteer.modalities.text.serve.app import ServeConfig, create_app

pytestmark = pytest.mark.filterwarnings("ignore:steering at .* adds a vector of norm")
PROMPT = "tell me about the sea"
GREEDY = {"temperature": 0}


def tiny_direction(model, layer: int = 1, seed: int = 1, d_model: int = 32) -> Direction:
    torch.manual_seed(seed)
    return Direction.from_fitted({f"text.blocks.{layer}.resid_post": torch.randn(d_model)}, model=model,
                                 modality="text", finder={"name": "random", "params": {}})


def make_app(model, tokenizer, **config):
    directions = {"sea": tiny_direction(model), "cake": tiny_direction(model, layer=2, seed=2)}
    return create_app(model, tokenizer, ServeConfig(model_name="tiny", **config), directions)


@pytest.fixture(scope="module")
def client(llama, tokenizer):
    with TestClient(make_app(llama, tokenizer, max_batch_size=8, max_wait_ms=50, max_prompt_tokens=64,
                             max_tokens=100, max_upload_bytes=4096)) as c:
        yield c


@contextmanager
def running_server(app):
    """``app`` under a real uvicorn on a free 127.0.0.1 port; yields the base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def complete(client, **body):
    response = client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 8, **GREEDY, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_models_and_directions_are_listed(client):
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["tiny"]
    listed = {d["name"]: d for d in client.get("/v1/directions").json()["data"]}
    assert listed["sea"]["layers"] == [1] and listed["cake"]["d_model"] == 32
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "no route GET /v1/nothing"


def test_served_steering_matches_the_library(client, llama, tokenizer):
    steer = [{"direction": "sea", "coefficient": 6.0, "schedule": "generated-only"}]
    served = complete(client, steer=steer)
    plan = tiny_direction(llama).to_plan(6.0, schedule="generated-only")
    expected = generate(llama, tokenizer, [PROMPT], plan, max_new_tokens=8, chat=False, progress=False)[0]
    plain = generate(llama, tokenizer, [PROMPT], None, max_new_tokens=8, chat=False, progress=False)[0]
    assert served["choices"][0]["text"] == expected != plain
    assert complete(client)["choices"][0]["text"] == plain
    assert served["usage"]["prompt_tokens"] == len(tokenizer(PROMPT).input_ids)


async def _gather(app, bodies):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as c:
        replies = await asyncio.gather(*(c.post("/v1/completions", json=b) for b in bodies))
    return [r.json() for r in replies]


def test_mixed_batch_rows_equal_requests_served_alone(client):
    app = client.app
    rows = [{}, {"steer": [{"direction": "sea", "coefficient": 6}]},
            {"steer": [{"direction": "sea", "coefficient": -4, "schedule": "window:0-3"}]},
            {"steer": [{"direction": "cake", "coefficient": 5}, {"direction": "sea", "coefficient": 2}]},
            {"steer": [{"direction": "sea", "coefficient": 6, "layers": [0]}], "max_tokens": 3},
            {"prompt": "what is your favorite food", "temperature": 0.9, "seed": 7},
            {"prompt": "describe a big party", "max_tokens": 12}]
    bodies = [{"prompt": PROMPT, "max_tokens": 8, **GREEDY, **row} for row in rows]
    alone = [complete(client, **body)["choices"][0] for body in bodies]
    before = len(app.state.batcher.batch_sizes)
    together = [reply["choices"][0] for reply in asyncio.run(_gather(app, bodies))]
    assert max(list(app.state.batcher.batch_sizes)[before:]) > 1  # they really shared a generate
    assert [c["text"] for c in together] == [c["text"] for c in alone]
    assert len({c["text"] for c in together[:4]}) == 4  # four plans, four different answers
    assert together[4]["finish_reason"] == "length"


def test_finished_rows_leave_the_batch_and_the_rest_keep_their_plans(client, llama):
    """A long-prompt row that ends first is dropped from the batch, its cache and the stacked plan; the rows left,
    one steered only on generated tokens after a shorter prompt, must still equal their solo answers."""
    steer = [{"direction": "sea", "coefficient": 6, "schedule": "generated-only"}]
    bodies = [{"prompt": PROMPT + " and the wide blue ocean waves at night", "max_tokens": 2, **GREEDY,
               "steer": [{"direction": "cake", "coefficient": 5}]},
              {"prompt": "sea", "max_tokens": 10, **GREEDY, "steer": steer},
              {"prompt": "describe a big party", "max_tokens": 10, **GREEDY}]
    alone = [complete(client, **body)["choices"][0]["text"] for body in bodies]
    sizes = []
    handle = llama.register_forward_pre_hook(lambda m, args, kwargs: sizes.append(len(kwargs["input_ids"])),
                                             with_kwargs=True)
    try:
        together = [reply["choices"][0]["text"] for reply in asyncio.run(_gather(client.app, bodies))]
    finally:
        handle.remove()
    assert sizes[0] == 3 and sizes[-1] == 2 and sizes.count(3) == 2  # prefill + one step, then two rows
    assert together == alone


def test_stop_strings_and_per_row_lengths(client):
    full = complete(client, max_tokens=10)["choices"][0]["text"]
    word = full.split()[3]
    cut = complete(client, max_tokens=10, stop=[word, "zzz"])["choices"][0]
    assert cut["text"] == full[:full.index(word)] and cut["finish_reason"] == "stop"
    short = complete(client, max_tokens=2)
    assert short["usage"]["completion_tokens"] == 2 and short["choices"][0]["finish_reason"] == "length"


def test_seeded_sampling_is_reproducible(client):
    sampled = [complete(client, temperature=1.0, top_p=0.9, seed=s, max_tokens=10)["choices"][0]["text"]
               for s in (3, 3, 4)]
    assert sampled[0] == sampled[1] != sampled[2]


def test_chat_streaming_sends_deltas_then_done(client):
    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 6, "stream": True,
            "stream_options": {"include_usage": True}, "steer": [{"direction": "sea", "coefficient": 3}], **GREEDY}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"]["content"] or "" for e in events if e["choices"])
    whole = client.post("/v1/chat/completions", json={**body, "stream": False}).json()
    assert text == whole["choices"][0]["message"]["content"] and text
    assert events[-1]["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"]


@pytest.mark.parametrize("body, message", [
    ({"steer": [{"direction": "nope"}]}, "unknown direction 'nope'; loaded: cake, sea"),
    ({"steer": [{"direction": "sea", "coefficient": float("nan")}]}, "coefficient must be a finite number"),
    ({"steer": [{"direction": "sea", "schedule": "ramp:x"}]}, "bad schedule spec 'ramp:x'"),
    ({"steer": [{"direction": "sea", "layers": [7]}]}, "layer 7 is out of range"),
    ({"steer": [{"direction": "sea", "operator": "shove"}]}, "unknown operator 'shove'"),
    ({"max_tokens": 101}, "at most 100 per request"),
    ({"prompt": "the sea " * 40}, "this server takes at most 64"),
    ({"n": 2}, "only n=1 is supported"),
    ({"temperature": 5}, "temperature"),
])
def test_bad_requests_get_one_clear_400(client, body, message):
    payload = json.dumps({"prompt": PROMPT, **body})  # json.dumps writes NaN, as a careless client would
    response = client.post("/v1/completions", content=payload, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"
    assert "\n" not in error["message"]


def test_prompt_plus_max_tokens_must_fit_the_context(tokenizer):
    from tiny import tiny_model

    with TestClient(create_app(tiny_model("gpt2"), tokenizer, ServeConfig(max_tokens=200))) as c:  # 128 positions
        reply = c.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 150})
        assert reply.status_code == 400
        assert "exceeds the model's context of 128 tokens" in reply.json()["error"]["message"]
        assert c.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 3}).status_code == 200


def test_bad_requests_do_not_disturb_a_request_in_flight(client):
    body = {"prompt": PROMPT, "max_tokens": 60, "steer": [{"direction": "sea", "coefficient": 2}], **GREEDY}
    expected = complete(client, **body)["choices"][0]["text"]
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        for bad in ({"steer": [{"direction": "nope"}]}, {"max_tokens": 10**6}, {"prompt": ""}):
            assert client.post("/v1/completions", json={"prompt": PROMPT, **bad}).status_code == 400
        rest = [line for line in lines if line.startswith("data: {")]
    text = "".join(json.loads(line[6:])["choices"][0]["text"] for line in [first, *rest])
    assert text == expected


def test_upload_list_use_and_delete_directions(client, llama, tmp_path):
    path = tiny_direction(llama, layer=2, seed=9).save(tmp_path / "new.safetensors")
    reply = client.post("/v1/directions?name=fresh", content=path.read_bytes())
    assert reply.status_code == 200 and reply.json()["layers"] == [2]
    assert complete(client, steer=[{"direction": "fresh", "coefficient": 5}])["choices"][0]["text"]
    assert client.delete("/v1/directions/fresh").json()["deleted"] is True
    assert client.delete("/v1/directions/fresh").status_code == 404
    assert "fresh" not in [d["name"] for d in client.get("/v1/directions").json()["data"]]


def test_bad_uploads_are_refused(client, llama, tmp_path):
    good = tiny_direction(llama).save(tmp_path / "d.safetensors").read_bytes()
    wide = tiny_direction(llama, d_model=16)
    wide.save(tmp_path / "wide.safetensors")
    cases = [(good[: len(good) // 2], 400, "truncated or not a safetensors"),
             ((tmp_path / "wide.safetensors").read_bytes(), 400, "d_model 16"),
             (b"x" * 5000, 413, "limit is 4096"), (good, 400, "bad direction name")]
    for i, (data, status, message) in enumerate(cases):
        name = "../evil" if i == 3 else f"bad{i}"
        reply = client.post(f"/v1/directions?name={name}", content=data)
        assert reply.status_code == status and message in reply.json()["error"]["message"], reply.text
    assert complete(client)["choices"][0]["text"]  # still serving


def test_api_key_is_required_when_set(llama, tokenizer):
    with TestClient(make_app(llama, tokenizer, api_key="s3cret")) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).json()["error"]["type"] == \
            "authentication_error"
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert "polysteer playground" in c.get("/").text


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.4", "example.org"])
def test_serving_beyond_loopback_needs_a_key(host, capsys, monkeypatch):
    monkeypatch.delenv("POLYSTEER_API_KEY", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--host", host, "--model", "/nonexistent"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "set --api-key KEY" in err and "Traceback" not in err


def test_openai_client_and_disconnects_on_a_real_server(llama, tokenizer):
    from openai import BadRequestError, OpenAI

    app = make_app(llama, tokenizer, max_tokens=400)
    with running_server(app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        steer = [{"direction": "sea", "coefficient": 6, "schedule": "generated-only", "operator": "add"}]
        plain = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0)
        steered = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0,
                                            extra_body={"steer": steer})
        assert steered.choices[0].text != plain.choices[0].text and steered.usage.completion_tokens > 0
        chunks = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": PROMPT}],
                                                max_tokens=8, temperature=0, stream=True, extra_body={"steer": steer})
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        with pytest.raises(BadRequestError, match="unknown direction 'ghost'"):
            client.completions.create(model="tiny", prompt=PROMPT, extra_body={"steer": [{"direction": "ghost"}]})
        _disconnect_mid_stream(url)
        batcher = app.state.batcher
        deadline = time.time() + 20
        while ("cancelled", 0) not in batcher.finished and not any(r == "cancelled" for r, _ in batcher.finished):
            assert time.time() < deadline, list(batcher.finished)
            time.sleep(0.05)
        reason, tokens = next(item for item in batcher.finished if item[0] == "cancelled")
        assert tokens < 400  # the row stopped when its client left
        again = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=3, temperature=0).choices[0]
        assert again.finish_reason in ("length", "stop") and plain.choices[0].text.startswith(again.text)


def _disconnect_mid_stream(url: str) -> None:
    body = {"prompt": PROMPT, "max_tokens": 400, "stream": True, **GREEDY}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                break


def test_a_disconnected_row_leaves_the_running_batch(llama, tokenizer):
    from polysteer.modalities.text.serve.batcher import Batcher
    from polysteer.modalities.text.serve.rows import Row

    loop = asyncio.new_event_loop()
    ids = tokenizer(PROMPT).input_ids
    rows = [Row(ids, None, max_tokens=30, loop=loop), Row(ids, None, max_tokens=30, loop=loop)]
    sizes = []

    def record(module, args, kwargs):
        sizes.append(len(kwargs["input_ids"]))
        if len(sizes) == 4:
            rows[0].cancelled.set()  # the client left after three tokens

    handle = llama.register_forward_pre_hook(record, with_kwargs=True)
    try:
        Batcher(llama, tokenizer).generate(rows)
    finally:
        handle.remove()
        loop.close()
    assert rows[0].finish_reason == "cancelled" and len(rows[0].tokens) == 3
    assert sizes[:4] == [2, 2, 2, 2] and set(sizes[4:]) == {1} and len(rows[1].tokens) == 30
