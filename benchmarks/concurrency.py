"""Concurrent steering on one shared SmolLM2: threads and asyncio tasks, each with its own plan (or none), must
produce exactly what they produce alone.

    .venv/bin/python benchmarks/concurrency.py [--threads 6] [--tokens 16] [--rounds 2]

Writes results/concurrency/README.md: pairs compared and mismatches.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from common import RESULTS, markdown

import polysteer
from polysteer.modalities import text

PROMPTS = ["Tell me about your weekend.", "What should I cook tonight?"]


def plans(model, n: int) -> list[polysteer.Plan | None]:
    """Plan ``i`` adds a random direction at 4x the typical norm at a different layer; plan 0 steers nothing."""
    gen = torch.Generator().manual_seed(0)
    d, n_layers = model.config.hidden_size, text.TextModality().n_layers(model)
    out: list[polysteer.Plan | None] = [None]
    for i in range(1, n):
        vector = torch.randn(d, generator=gen)
        out.append(polysteer.Plan([polysteer.Intervention(vector / vector.norm() * 30.0,
                                                          f"text.blocks.{4 + 3 * i % (n_layers - 6)}.resid_post")]))
    return out


def run(model, tokenizer, plan, tokens: int, barrier=None) -> list[str]:
    if barrier is not None:
        barrier.wait()
    return text.generate(model, tokenizer, PROMPTS, plan, max_new_tokens=tokens, progress=False)


def threads(model, tokenizer, all_plans, solo, tokens: int) -> int:
    barrier = threading.Barrier(len(all_plans))
    with ThreadPoolExecutor(len(all_plans)) as pool:
        outputs = list(pool.map(lambda p: run(model, tokenizer, p, tokens, barrier), all_plans))
    return sum(a != b for a, b in zip(outputs, solo))


def tasks(model, tokenizer, all_plans, solo, tokens: int) -> int:
    async def one(plan):
        await asyncio.sleep(0)
        return await asyncio.to_thread(run, model, tokenizer, plan, tokens)

    async def main():
        return await asyncio.gather(*(one(p) for p in all_plans))

    return sum(a != b for a, b in zip(asyncio.run(main()), solo))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    model, tokenizer = text.load_model()
    all_plans = plans(model, args.threads)
    solo = [run(model, tokenizer, p, args.tokens) for p in all_plans]
    distinct = len({tuple(s) for s in solo})
    rows = []
    for mode, fn in (("threads", threads), ("asyncio tasks (to_thread)", tasks)):
        mismatches = sum(fn(model, tokenizer, all_plans, solo, args.tokens) for _ in range(args.rounds))
        rows.append({"mode": mode, "plans": len(all_plans), "rounds": args.rounds,
                     "pairs compared": len(all_plans) * args.rounds, "mismatches": mismatches})
    out = RESULTS / "concurrency"
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, ["mode", "plans", "rounds", "pairs compared", "mismatches"])
    (out / "README.md").write_text(
        "# Concurrent steering on one SmolLM2-135M-Instruct\n\n"
        f"`.venv/bin/python benchmarks/concurrency.py --threads {args.threads} --tokens {args.tokens} "
        f"--rounds {args.rounds}`\n\nEach run generates {args.tokens} greedy tokens for {len(PROMPTS)} prompts; a pair "
        f"is one plan's concurrent output against its solo run. The {len(all_plans)} plans (one of them none) give "
        f"{distinct} distinct solo outputs.\n\n{table}")
    print(table)


if __name__ == "__main__":
    main()
