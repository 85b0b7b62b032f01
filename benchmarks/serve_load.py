"""Load test of ``polysteer serve`` on 127.0.0.1: no bleed between mixed plans, throughput, faults, memory.

    .venv/bin/python benchmarks/serve_load.py [--model smollm2] [--tokens 16] [--quick]

Starts ``polysteer serve`` as a child process on a free loopback port with random directions (one per layer
group), drives it with the ``openai`` async client in bounded loops, stops it, and writes
results/serve/README.md (tables; ``--out`` names another page) and README_throughput.png, after every phase.

- No bleed: 32 concurrent clients x 4 requests, each with its own plan (or none), greedy; every answer is compared
  with the same request served alone (one request at a time).
- Throughput at concurrency 1, 8, 32 with 0%, 50% and 100% of requests steered (every steered request with a
  different plan): requests/s, tokens/s, p50/p95 latency, and the ratio to unsteered at the same concurrency.
- Faults inside a load run: a burst of malformed requests (all must be 400), clients killed mid-stream, a corrupt
  direction upload; the good requests must still equal their solo answers.
- Memory: the server's resident memory after 100 and after 1,000 requests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
from common import RESULTS, markdown
from openai import AsyncOpenAI
from tqdm.auto import tqdm

import polysteer
from polysteer.modalities import text

OUT = RESULTS / "serve"
PROMPTS = ["Tell me about your weekend.", "What should I cook tonight?", "Describe your favorite city.",
           "How do I learn to paint?", "What is a good hobby?", "Write a note to a friend.",
           "Why do people like music?", "What did you do at school today?"]
SCHEDULES = ["constant", "generated-only", "window:0-8"]
N_DIRECTIONS = 8
QUIET_LOAD = 2.5  # load average (2 cores) above which timings are marked preliminary


def make_directions(model_name: str, folder: Path) -> list[str]:
    """Random unit directions at spread-out layers, scaled to norm 30 (a few times a typical residual norm)."""
    model, _ = text.load_model(model_name, device="cpu")
    n_layers, gen = text.TextModality().n_layers(model), torch.Generator().manual_seed(0)
    names = []
    for i in range(N_DIRECTIONS):
        layer = (n_layers * (i + 2)) // (N_DIRECTIONS + 3)
        vector = torch.randn(model.config.hidden_size, generator=gen)
        direction = polysteer.Direction.from_fitted(
            {f"text.blocks.{layer}.resid_post": vector / vector.norm() * 30.0}, model=model, modality="text",
            finder={"name": "random", "params": {"seed": i}})
        direction.save(folder / f"random{i}.safetensors")
        names.append(f"random{i}")
    return names


def requests(names: list[str], count: int, steered: float, seed: int) -> list[dict]:
    """``count`` chat requests; a ``steered`` share of them each with its own plan (direction x coefficient x
    schedule, sometimes two directions)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        body = {"messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]}
        if i < round(steered * count):
            plan = [{"direction": rng.choice(names), "coefficient": rng.choice([0.5, 1.0, 1.5, -1.0]) + i * 1e-3,
                     "schedule": rng.choice(SCHEDULES)}]
            if i % 3 == 0:
                plan.append({"direction": rng.choice(names), "coefficient": 0.5})
            body["steer"] = plan
        out.append(body)
    rng.shuffle(out)
    return out


async def call(client: AsyncOpenAI, body: dict, tokens: int) -> tuple[str, int, float]:
    start = time.perf_counter()
    reply = await client.chat.completions.create(
        model="served", messages=body["messages"], max_tokens=tokens, temperature=0,
        extra_body={"steer": body["steer"]} if "steer" in body else None)
    return reply.choices[0].message.content, reply.usage.completion_tokens, time.perf_counter() - start


async def load(client: AsyncOpenAI, bodies: list[dict], concurrency: int, tokens: int,
               desc: str = "requests") -> tuple[list, float]:
    """Run ``bodies`` with ``concurrency`` clients, each sending its next request when the last one returns."""
    results: list = [None] * len(bodies)
    queue = list(enumerate(bodies))[::-1]
    bar = tqdm(total=len(bodies), desc=f"{desc} (concurrency {concurrency})", leave=False)

    async def client_loop():
        while queue:
            i, body = queue.pop()
            results[i] = await call(client, body, tokens)
            bar.update()

    start = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    bar.close()
    return results, time.perf_counter() - start


def summary(label: dict, results: list, seconds: float) -> dict:
    latencies = sorted(r[2] for r in results)
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
    return {**label, "requests": len(results), "req/s": len(results) / seconds,
            "tok/s": sum(r[1] for r in results) / seconds, "p50 s": statistics.median(latencies), "p95 s": p95}


async def bleed(client, names, tokens: int, clients: int, each: int) -> tuple[dict, dict]:
    bodies = requests(names, clients * each, 0.75, seed=1)
    together, _ = await load(client, bodies, clients, tokens, "no-bleed, together")
    alone, _ = await load(client, bodies, 1, tokens, "no-bleed, alone")
    mismatches = sum(a[0] != b[0] for a, b in zip(together, alone))
    solo = {i: r[0] for i, r in enumerate(alone)}
    return {"clients": clients, "requests each": each, "compared": len(bodies), "mismatches": mismatches}, \
        {"bodies": bodies, "solo": solo}


async def throughput(client, names, tokens: int, concurrencies: list[int], cell_requests: int,
                     rounds: int) -> list[dict]:
    """Every (concurrency, steered share) cell once per round, cells interleaved within a round so a slow spell
    hits all of them; each figure is the median over rounds with its range, and ``vs unsteered`` is the median of
    each round's ratio to the unsteered cell at the same concurrency."""
    cells = [(c, f) for c in concurrencies for f in (0.0, 0.5, 1.0)]
    runs: dict[tuple, list[dict]] = {cell: [] for cell in cells}
    for _ in tqdm(range(rounds), desc="throughput rounds"):
        for c, frac in cells:
            bodies = requests(names, max(2 * c, cell_requests), frac, seed=c)
            results, seconds = await load(client, bodies, c, tokens)
            runs[(c, frac)].append(summary({}, results, seconds))
    rows = []
    for c, frac in cells:
        ratios = [run["tok/s"] / base["tok/s"] for run, base in zip(runs[(c, frac)], runs[(c, 0.0)])]
        row = {"concurrency": c, "steered": f"{frac:.0%}", "requests": runs[(c, frac)][0]["requests"],
               "rounds": rounds}
        for key in ("req/s", "tok/s", "p50 s", "p95 s"):
            row[key] = statistics.median(run[key] for run in runs[(c, frac)])
        speeds = [run["tok/s"] for run in runs[(c, frac)]]
        row["tok/s range"] = f"{min(speeds):.2f}-{max(speeds):.2f}"
        row["vs unsteered"], row["ratio range"] = statistics.median(ratios), f"{min(ratios):.3f}-{max(ratios):.3f}"
        rows.append(row)
    return rows


MALFORMED = [{"steer": [{"direction": "nope"}]}, {"steer": [{"direction": "random0", "coefficient": "NaN"}]},
             {"steer": [{"direction": "random0", "schedule": "ramp:x"}]}, {"max_tokens": 10**7},
             {"steer": [{"direction": "random0", "layers": [999]}]}, {"n": 3}]


async def faults(url: str, client, names, tokens: int, solo_set: dict) -> dict:
    """Good requests, malformed ones, streams cut short and a corrupt upload, all at once."""
    good = solo_set["bodies"][:32]  # requests whose solo answers the no-bleed check recorded
    async with httpx.AsyncClient(base_url=url, timeout=600) as raw:
        async def bad(i):
            body = {"messages": [{"role": "user", "content": "hi"}], **MALFORMED[i % len(MALFORMED)]}
            return (await raw.post("/v1/chat/completions", json=body)).status_code

        async def killed(i):
            body = {"messages": [{"role": "user", "content": PROMPTS[i % 8]}], "max_tokens": 200, "stream": True}
            async with raw.stream("POST", "/v1/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: {") and '"content": "' in line and '"role": "assistant"' not in line:
                        break

        upload = raw.post("/v1/directions?name=corrupt", content=b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
        outcome = await asyncio.gather(load(client, good, 8, tokens), *(bad(i) for i in range(48)),
                                       *(killed(i) for i in range(8)), upload)
    (answers, _), statuses, corrupt = outcome[0], outcome[1:49], outcome[-1]
    return {"malformed sent": len(statuses), "answered 400": sum(s == 400 for s in statuses),
            "killed streams": 8, "corrupt upload status": corrupt.status_code,
            "good requests": len(good), "good equal to solo": sum(a[0] == solo_set["solo"][i]
                                                                  for i, a in enumerate(answers))}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def memory(client, names, pid: int, total: int) -> dict:
    bodies = requests(names, total, 0.5, seed=7)
    await load(client, bodies[:100], 32, 4)
    after_100 = rss_mb(pid)
    await load(client, bodies[100:], 32, 4)
    after_all = rss_mb(pid)
    return {"RSS after 100 (MB)": after_100, f"RSS after {total} (MB)": after_all,
            "growth": after_all / after_100 - 1}


def start_server(model: str, folder: Path, batch: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("polysteer")
    proc = subprocess.Popen([str(exe), "serve", "--model", model, "--directions", str(folder), "--host", "127.0.0.1",
                             "--port", str(port), "--max-batch-size", str(batch), "--max-wait-ms", "20"])
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(1)
    proc.terminate()
    raise SystemExit("the server did not start within 600 s")


def report(args, results: dict, load_before: tuple, seconds: float) -> str:
    """The markdown page; phases not run (yet) are marked as such."""
    tp_cols = ["concurrency", "steered", "requests", "rounds", "req/s", "tok/s", "tok/s range", "p50 s", "p95 s",
               "vs unsteered", "ratio range"]
    load_now = os.getloadavg()
    sections = [
        "# polysteer serve under load\n",
        (f"Machine: {os.cpu_count()} CPUs visible, load average {load_before[0]:.2f} before and {load_now[0]:.2f} "
         "at the end" + (" (quiet).\n" if max(load_before[0], load_now[0]) < QUIET_LOAD else
                         ": **a busy machine, so these timings are PRELIMINARY**; rerun on a quiet one.\n")),
        f"`{' '.join(['python', 'benchmarks/serve_load.py', *sys.argv[1:]])}`: model `{args.model}`, "
        f"{args.tokens} new tokens per request (greedy), max batch size 32, max wait 20 ms, "
        f"{N_DIRECTIONS} random directions (norm 30) at spread-out layers; {seconds:.0f} s so far.\n",
    ]
    for key, title, note in [("bleed", "No bleed (mixed plans in one batch vs the same request alone)", ""),
                             ("throughput", "Throughput", "`vs unsteered`: tokens/s relative to 0% steered at the "
                              "same concurrency (target >= 0.9).\n"),
                             ("faults", "Faults during load", ""), ("memory", "Memory", "")]:
        sections.append(f"## {title}\n")
        if key not in results:
            sections.append("Not run (skipped or interrupted).\n")
            continue
        rows = results[key] if isinstance(results[key], list) else [results[key]]
        sections += [note, markdown(rows, tp_cols if key == "throughput" else list(rows[0]))]
    return "\n".join(s for s in sections if s)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for frac in ("0%", "50%", "100%"):
        cells = [r for r in rows if r["steered"] == frac]
        ax.plot([r["concurrency"] for r in cells], [r["tok/s"] for r in cells], marker="o", label=f"{frac} steered")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("generated tokens / s")
    ax.set_title("polysteer serve throughput (median over rounds)")
    ax.legend()
    fig.tight_layout()
    polysteer.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


async def main_async(args, url: str, pid: int, names: list[str], save) -> dict:
    """Run the phases in order, saving the page after each one (a busy machine may not let all finish)."""
    # retries cover the keep-alive race (a request sent on a connection uvicorn is closing); 400s are not retried
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="local", max_retries=2, timeout=3600)
    results: dict = {}
    if "bleed" in args.phases:
        results["bleed"], solo_set = await bleed(client, names, args.tokens, args.clients, args.each)
        save(results)
    if "throughput" in args.phases:
        results["throughput"] = await throughput(client, names, args.tokens, args.concurrency, args.cell_requests,
                                                 args.rounds)
        save(results)
    if "faults" in args.phases and "bleed" in args.phases:  # the good requests' solo answers come from bleed
        results["faults"] = await faults(url, client, names, args.tokens, solo_set)
        save(results)
    if "memory" in args.phases and args.memory_requests > 100:
        results["memory"] = await memory(client, names, pid, args.memory_requests)
        save(results)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients in the no-bleed check")
    parser.add_argument("--each", type=int, default=4, help="requests per client in the no-bleed check")
    parser.add_argument("--concurrency", type=lambda t: [int(x) for x in t.split(",")], default=[1, 8, 32])
    parser.add_argument("--cell-requests", type=int, default=8, help="requests per throughput cell (at least 2x "
                        "the concurrency)")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (each figure: median and range)")
    parser.add_argument("--memory-requests", type=int, default=1000, help="0 (or <= 100) skips the memory phase")
    parser.add_argument("--phases", type=lambda t: set(t.split(",")), default={"bleed", "throughput", "faults",
                                                                                 "memory"},
                        help="comma-separated subset of bleed,throughput,faults,memory (faults needs bleed)")
    parser.add_argument("--out", default="README.md", help="page name under results/serve/")
    parser.add_argument("--quick", action="store_true", help="8 clients x 2, concurrency 1 and 8, 200 requests "
                        "for memory (a smoke run on a busy machine)")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.each, args.concurrency, args.memory_requests, args.rounds = 8, 2, [1, 8], 200, 1
    start, load_before = time.time(), os.getloadavg()
    OUT.mkdir(parents=True, exist_ok=True)

    def save(results: dict) -> None:
        page = report(args, results, load_before, time.time() - start)
        polysteer.write_text_atomic(OUT / args.out, page)
        print(page, flush=True)
        if "throughput" in results:
            plot(results["throughput"], OUT / (Path(args.out).stem + "_throughput.png"))

    with tempfile.TemporaryDirectory(prefix="polysteer-serve-bench-") as tmp:
        names = make_directions(args.model, Path(tmp))
        proc, url = start_server(args.model, Path(tmp), 32)
        try:
            asyncio.run(main_async(args, url, proc.pid, names, save))
        finally:
            proc.terminate()
            proc.wait(timeout=120)

if __name__ == "__main__":
    main()
