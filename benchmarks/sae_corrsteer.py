"""CorrSteer on single-digit arithmetic: accuracy unsteered vs steered, and the side-effect ratio.

Questions "What is a + b?" (and a - b, a * b) with a checkable reward (the first integer of the answer
is right). CorrSteer selects SAE features on the training questions from the model's own answers
(streaming Pearson of max-pooled latents over generated tokens vs the reward), then the held-out
questions (disjoint from the selection and validation ones) are answered unsteered and steered (generated
positions only) at a few multiples of the selected coefficient, for CorrSteer-S, -A and -P (one selection
run: -S keeps the best of -A's features, -P those of -A that survive pruning). Side-effect
ratio = answers flipped from right to wrong / answers changed.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sae_corrsteer.py                      # SmolLM2 + shipped SAE
    .venv/bin/python benchmarks/sae_corrsteer.py --model PATH --sae SAE_DIR --train 8 --test 8   # any model

Writes ``README.md``, ``corrsteer.png`` and ``results.json`` to ``benchmarks/results/sae_corrsteer/``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from polysteer.modalities.text import generate, load_model  # noqa: E402
from polysteer.modalities.text.sae import SHIPPED_SAE, corrsteer, corrsteer_plan, prune, side_effect_ratio  # noqa: E402
from polysteer.plugins.sae import SAE  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "sae_corrsteer"
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def splits(sizes: list[int], seed: int = 0) -> list[list[tuple[str, int]]]:
    """Disjoint question sets of the given sizes, drawn without replacement from all 243 distinct questions."""
    every = [(a, op, b) for a in range(1, 10) for op in OPS for b in range(1, 10)]
    if sum(sizes) > len(every):
        raise SystemExit(f"only {len(every)} distinct questions; ask for at most that many in all")
    random.Random(seed).shuffle(every)
    out, start = [], 0
    for n in sizes:
        out.append([(f"What is {a} {op} {b}? Answer with just the number.", OPS[op](a, b))
                    for a, op, b in every[start : start + n]])
        start += n
    return out


def correct(answer: str, truth: int) -> bool:
    """The number after the first '=' or 'is' (answers often restate the sum), else the first number."""
    match = re.search(r"(?:=|\bis\b)\s*(-?\d+)", answer) or re.search(r"(-?\d+)", answer)
    return match is not None and int(match.group(1)) == truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--sae", action="append", help="SAE folder (repeatable: -A and -P pick one per SAE); "
                        "default: the shipped one")
    parser.add_argument("--train", type=int, default=96)
    parser.add_argument("--validation", type=int, default=48, help="held-out questions CorrSteer-P prunes on")
    parser.add_argument("--test", type=int, default=96)
    parser.add_argument("--variants", default="S,A,P")
    parser.add_argument("--scales", default="0.5,1,2", help="multiples of the CorrSteer coefficient")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    args = parser.parse_args()
    args.load_average = list(os.getloadavg()[:1])
    start = time.time()
    model, tokenizer = load_model(args.model)
    saes = {sae.metadata["hook_name"]: sae for sae in map(SAE.load, args.sae or [SHIPPED_SAE])}
    train, validation, test = splits([args.train, args.validation, args.test])
    assert not {q for q, _ in train + validation} & {q for q, _ in test}, "selection and test questions overlap"
    truth = dict(train + validation + test)
    reward = lambda prompt, answer: float(correct(answer, truth[prompt]))  # noqa: E731
    prompts = [q for q, _ in test]
    base = generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens)
    base_ok = [correct(a, t) for a, (_, t) in zip(base, test)]
    rows = [{"variant": "unsteered", "features": "", "scale": 0.0, "accuracy": sum(base_ok) / len(test),
             "side_effect_ratio": 0.0, "changed": 0}]
    candidates = corrsteer(model, tokenizer, [q for q, _ in train], reward, saes, "A", args.max_new_tokens)
    picks = {"S": [max(candidates, key=lambda f: f.correlation)], "A": candidates}
    if "P" in args.variants.split(","):  # -P prunes -A's features on held-out questions (same selection run)
        picks["P"] = prune(model, tokenizer, candidates, saes, [q for q, _ in validation], reward,
                           args.max_new_tokens)
    steered: dict[tuple, list[str]] = {}  # -S and -A share answers when they keep the same features
    for variant in args.variants.split(","):
        names = ", ".join(f"{f.feature}@{f.hook_point} (r={f.correlation:.2f})" for f in picks[variant]) or "none kept"
        for scale in map(float, args.scales.split(",")) if picks[variant] else []:
            key = (tuple((f.hook_point, f.feature) for f in picks[variant]), scale)
            if key not in steered:
                steered[key] = generate(model, tokenizer, prompts, corrsteer_plan(picks[variant], saes, scale),
                                        max_new_tokens=args.max_new_tokens)
            answers = steered[key]
            ok = [correct(a, t) for a, (_, t) in zip(answers, test)]
            rows.append({"variant": variant, "features": names, "scale": scale, "accuracy": sum(ok) / len(test),
                         "side_effect_ratio": side_effect_ratio(base_ok, ok, base, answers),
                         "changed": sum(a != b for a, b in zip(answers, base))})
        if not picks[variant]:
            rows.append({"variant": variant, "features": names, "scale": float("nan"), "accuracy": float("nan"),
                         "side_effect_ratio": float("nan"), "changed": 0})
    args.wall_seconds = round(time.time() - start)
    args.load_average.append(os.getloadavg()[0])
    write_report(args, saes, rows)


def write_report(args, saes, rows) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"args": vars(args), "saes": sorted(saes), "rows": rows}
    (RESULTS / "results.json").write_text(json.dumps(result, indent=2))
    fig, ax = plt.subplots(figsize=(6, 3.2))
    shown = [r for r in rows if r["accuracy"] == r["accuracy"]]
    ax.bar([f"{r['variant']} x{r['scale']:g}" if r["scale"] else "unsteered" for r in shown],
           [r["accuracy"] for r in shown])
    ax.set(xlabel="variant x scale (multiple of the CorrSteer coefficient)", ylabel="held-out accuracy",
           title="CorrSteer on disjoint arithmetic splits")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(RESULTS / "corrsteer.png", dpi=120)
    table = "\n".join(f"| {r['variant']} | {r['features']} | {r['scale']:g} | {r['accuracy']:.3f} | {r['changed']} "
                      f"| {r['side_effect_ratio']:.3f} |" for r in rows)
    sae_args = "".join(f" --sae {path}" for path in args.sae or [])
    (RESULTS / "README.md").write_text(f"""# CorrSteer on single-digit arithmetic ({args.model})

Questions "What is a op b?" (243 distinct) are split without overlap: {args.train} to select features (streaming
Pearson of each latent, max-pooled over every generated token, with correctness), {args.validation} for CorrSteer-P
to prune on (a feature stays if steering with it alone raises validation accuracy), {args.test} to report. Coefficient
= a feature's mean max-pooled activation on correct answers; steering on generated positions only; greedy,
{args.max_new_tokens} new tokens. SAEs: {", ".join(sorted(saes))} (with one SAE, -A picks the same single feature
as -S). Side-effect ratio = answers flipped right to wrong / answers changed.

| variant | features | scale | accuracy | answers changed | side-effect ratio |
| --- | --- | --- | --- | --- | --- |
{table}

Command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sae_corrsteer.py --model {args.model} --train {args.train} \\
--validation {args.validation} --test {args.test} --variants {args.variants} --scales {args.scales}{sae_args}`
({args.wall_seconds} s wall; 1-minute load average {args.load_average[0]:.2f} at the start,
{args.load_average[-1]:.2f} at the end, on 2 shared cores)

![accuracy](corrsteer.png)
""")


if __name__ == "__main__":
    main()
