"""Generation throughput on SmolLM2: unsteered vs steered at one layer and at every layer, batch 1 and 8.

Runs are interleaved (each round runs every variant once) and the median of the rounds is reported, so
drifting machine load hits all variants alike. Usage::

    python benchmarks/overhead.py --repeats 5 --tokens 48
"""

from __future__ import annotations

import argparse
import platform

import torch
from common import RESULTS, interleaved_medians, markdown

from polysteer import Intervention, Plan, atomic_write, steer, write_text_atomic
from polysteer.modalities.text import format_prompt, load_model

PROMPT = "Write a short story about a lighthouse keeper."


def variants(model, batch_inputs, tokens: int) -> dict:
    d = model.config.hidden_size
    v = torch.randn(d, generator=torch.Generator().manual_seed(0))
    v = v / v.norm()
    plans = {
        "unsteered": None,
        "coefficient 0": Plan([Intervention(v, "text.blocks.12.resid_post", 0.0)]),
        "one layer": Plan([Intervention(v, "text.blocks.12.resid_post", 4.0)]),
        "all 30 layers": Plan([Intervention(v, f"text.blocks.{i}.resid_post", 1.0) for i in range(30)]),
    }

    def run(plan):
        def go():
            with torch.no_grad():
                if plan is None:
                    model.generate(**batch_inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
                else:
                    with steer(model, plan):
                        model.generate(**batch_inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        return go

    return {name: run(plan) for name, plan in plans.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    model, tokenizer = load_model()
    tokenizer.padding_side = "left"
    rows = []
    for batch in (1, 8):
        inputs = tokenizer([format_prompt(tokenizer, PROMPT)] * batch, return_tensors="pt", padding=True,
                           add_special_tokens=False)
        fns = variants(model, inputs, args.tokens)
        fns["unsteered"]()  # warm-up
        medians = interleaved_medians(fns, args.repeats)
        base = medians["unsteered"]
        for name, seconds in medians.items():
            rows.append({"batch": batch, "variant": name, "tokens/s": batch * args.tokens / seconds,
                         "slowdown %": 100.0 * (seconds / base - 1.0)})
    table = markdown(rows, ["batch", "variant", "tokens/s", "slowdown %"])
    header = (f"# Steering overhead on SmolLM2-135M-Instruct\n\n{platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads, {args.tokens} new tokens, median of {args.repeats} interleaved "
              f"rounds.\n\nCommand: `python benchmarks/overhead.py --repeats {args.repeats} "
              f"--tokens {args.tokens}`\n\n")
    write_text_atomic(RESULTS / "overhead" / "README.md", header + table)
    plot(rows, RESULTS / "overhead" / "overhead.png")
    print(header + table)


def plot(rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["variant"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, batch in zip(axes, (1, 8)):
        values = [next(r["tokens/s"] for r in rows if r["batch"] == batch and r["variant"] == n) for n in names]
        ax.bar(names, values, color=["grey", "tab:blue", "tab:orange", "tab:red"])
        ax.set_title(f"batch {batch}")
        ax.set_ylabel("tokens/s")
        ax.tick_params(axis="x", rotation=20, labelsize=8)
    fig.suptitle("SmolLM2-135M generation throughput while steering")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


if __name__ == "__main__":
    main()
