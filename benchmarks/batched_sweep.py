"""Batched sweeps on SmolLM2: 16 factors (or 16 directions) as one batched generate vs 16 sequential generates.

One batch carries a different plan per row (:func:`polysteer.stack_plans`): row ``i`` is steered by factor ``i``
(or direction ``i``). The sequential baseline runs the same work as 16 generates, one per factor. Both produce the
same texts (checked here); the table gives the wall times and the speed-up.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/batched_sweep.py [--prompts 1,4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform

import torch
from common import RESULTS, interleaved_medians, markdown

from polysteer import Intervention, hook_point, stack_plans, write_text_atomic
from polysteer.modalities.text import EVAL_PROMPTS, generate, load_model

OUT = RESULTS / "batched_sweep"


def plans(kind: str, n: int, d_model: int, layer: int) -> list[Intervention]:
    """``n`` row plans: one direction at ``n`` factors, or ``n`` random unit directions at one factor."""
    g = torch.Generator().manual_seed(0)
    if kind == "factors":
        v = torch.nn.functional.normalize(torch.randn(d_model, generator=g), dim=0)
        return [Intervention(v, hook_point(layer), 0.5 * i) for i in range(n)]
    vs = torch.nn.functional.normalize(torch.randn(n, d_model, generator=g), dim=1)
    return [Intervention(vs[i], hook_point(layer), 4.0) for i in range(n)]


def compare(model, tokenizer, prompts: list[str], row_plans: list[Intervention], args) -> dict:
    """Median seconds of the batched and the sequential sweep, after checking they give the same texts."""
    rows = [(p, plan) for plan in row_plans for p in prompts]
    batched = lambda: generate(model, tokenizer, [p for p, _ in rows], stack_plans([q for _, q in rows]),  # noqa: E731
                               max_new_tokens=args.tokens, batch_size=len(rows), progress=False)
    sequential = lambda: [t for plan in row_plans for t in generate(  # noqa: E731
        model, tokenizer, prompts, plan, max_new_tokens=args.tokens, batch_size=len(prompts), progress=False)]
    same = sum(a == b for a, b in zip(batched(), sequential())) / len(rows)
    times = interleaved_medians({"batched": batched, "sequential": sequential}, args.repeats)
    return {**times, "same texts": f"{same:.0%}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", default="1,4", help="prompt counts to run (each sweeps 16 plans)")
    parser.add_argument("--n", type=int, default=16, help="plans per sweep")
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_model()
    table = []
    for kind in ("factors", "directions"):
        row_plans = plans(kind, args.n, model.config.hidden_size, args.layer)
        for n_prompts in (int(x) for x in args.prompts.split(",")):
            result = compare(model, tokenizer, list(EVAL_PROMPTS[:n_prompts]), row_plans, args)
            table.append({"sweep": f"{args.n} {kind}", "prompts": n_prompts, "rows": n_prompts * args.n,
                          "sequential s": result["sequential"], "batched s": result["batched"],
                          "speed-up": f"{result['sequential'] / result['batched']:.2f}x",
                          "same texts": result["same texts"]})
            print(table[-1], flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    text = (f"# Batched sweeps on SmolLM2-135M-Instruct\n\nCommand: `OMP_NUM_THREADS=2 .venv/bin/python "
            f"benchmarks/batched_sweep.py --prompts {args.prompts} --repeats {args.repeats}`; "
            f"{platform.machine()}, {torch.get_num_threads()} threads; {args.tokens} new tokens, greedy, layer "
            f"{args.layer}; median of {args.repeats} interleaved rounds. 'same texts': fraction of rows whose batched "
            f"output equals the sequential one (batching changes padding, so float rounding can flip a token).\n\n"
            + markdown(table, list(table[0])))
    write_text_atomic(OUT / "README.md", text)
    print(text)


if __name__ == "__main__":
    main()
