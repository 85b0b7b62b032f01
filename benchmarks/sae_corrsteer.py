"""CorrSteer on single-digit arithmetic: accuracy unsteered vs steered, and the side-effect ratio.

Questions "What is a + b?" (and a - b, a * b) with a checkable reward (the first integer of the answer
is right). CorrSteer selects SAE features on the training questions from the model's own answers
(streaming Pearson of max-pooled latents over generated tokens vs the reward), then the held-out
questions are answered unsteered and steered (generated positions only) at a few multiples of the
selected coefficient. Side-effect ratio = answers flipped from right to wrong / answers changed.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/sae_corrsteer.py                      # SmolLM2 + shipped SAE
    .venv/bin/python benchmarks/sae_corrsteer.py --model PATH --sae SAE_DIR --train 8 --test 8   # any model

Writes ``README.md``, ``corrsteer.png`` and ``results.json`` to ``benchmarks/results/sae_corrsteer/``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from polysteer.modalities.text import generate, load_model  # noqa: E402
from polysteer.modalities.text.sae import SHIPPED_SAE, corrsteer, corrsteer_plan, side_effect_ratio  # noqa: E402
from polysteer.plugins.sae import SAE  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "sae_corrsteer"
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def questions(n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b, op = rng.randint(1, 9), rng.randint(1, 9), rng.choice(list(OPS))
        out.append((f"What is {a} {op} {b}? Answer with just the number.", OPS[op](a, b)))
    return out


def correct(answer: str, truth: int) -> bool:
    """The number after the first '=' or 'is' (answers often restate the sum), else the first number."""
    match = re.search(r"(?:=|\bis\b)\s*(-?\d+)", answer) or re.search(r"(-?\d+)", answer)
    return match is not None and int(match.group(1)) == truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--sae", default=str(SHIPPED_SAE))
    parser.add_argument("--train", type=int, default=96)
    parser.add_argument("--test", type=int, default=96)
    parser.add_argument("--scales", default="0.5,1,2", help="multiples of the CorrSteer coefficient")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    args = parser.parse_args()
    model, tokenizer = load_model(args.model)
    sae = SAE.load(args.sae)
    saes = {sae.metadata["hook_name"]: sae}
    train, test = questions(args.train, 0), questions(args.test, 1)
    truth = dict(train + test)
    reward = lambda prompt, answer: float(correct(answer, truth[prompt]))  # noqa: E731
    picks = corrsteer(model, tokenizer, [q for q, _ in train], reward, saes, "S", args.max_new_tokens)
    prompts = [q for q, _ in test]
    base = generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens)
    base_ok = [correct(a, t) for a, (_, t) in zip(base, test)]
    rows = [{"scale": 0.0, "accuracy": sum(base_ok) / len(test), "side_effect_ratio": 0.0, "changed": 0}]
    for scale in map(float, args.scales.split(",")):
        plan = corrsteer_plan(picks, saes, scale)
        answers = generate(model, tokenizer, prompts, plan, max_new_tokens=args.max_new_tokens)
        ok = [correct(a, t) for a, (_, t) in zip(answers, test)]
        rows.append({"scale": scale, "accuracy": sum(ok) / len(test),
                     "side_effect_ratio": side_effect_ratio(base_ok, ok, base, answers),
                     "changed": sum(a != b for a, b in zip(answers, base))})
    write_report(args, picks, rows)


def write_report(args, picks, rows) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    feature = picks[0]
    result = {"model": args.model, "sae": str(args.sae), "feature": vars(feature), "rows": rows,
              "n_train": args.train, "n_test": args.test}
    (RESULTS / "results.json").write_text(json.dumps(result, indent=2))
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar([str(r["scale"]) for r in rows], [r["accuracy"] for r in rows])
    ax.set(xlabel="steering scale (x CorrSteer coefficient; 0 = unsteered)", ylabel="held-out accuracy",
           title=f"CorrSteer-S, feature {feature.feature}")
    fig.tight_layout()
    fig.savefig(RESULTS / "corrsteer.png", dpi=120)
    table = "\n".join(f"| {r['scale']:g} | {r['accuracy']:.3f} | {r['changed']} | {r['side_effect_ratio']:.3f} |"
                      for r in rows)
    (RESULTS / "README.md").write_text(f"""# CorrSteer on single-digit arithmetic ({args.model})

CorrSteer-S picked feature {feature.feature} at {feature.hook_point} (Pearson r = {feature.correlation:.3f} with
correctness over {args.train} training questions; coefficient {feature.coefficient:.3f} = its mean max-pooled
activation on correct answers). Held-out: {args.test} questions, greedy, {args.max_new_tokens} new tokens, steering
on generated positions only.

| scale | accuracy | answers changed | side-effect ratio |
| --- | --- | --- | --- |
{table}

Command: `OMP_NUM_THREADS=2 .venv/bin/python benchmarks/sae_corrsteer.py --model {args.model} --train {args.train} \\
--test {args.test} --scales {args.scales}`

![accuracy](corrsteer.png)
""")


if __name__ == "__main__":
    main()
