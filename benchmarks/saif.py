"""SAIF on SmolLM2: instruction-following rate unsteered, prompted with the instruction, and steered.

For each checkable instruction in ``benchmarks/data/saif_instructions.json`` (French, all capitals, under 20 words,
end with a question), the content prompts are shuffled with a fixed seed and split in two. SAIF is fitted on the first
half paired with every wording but the last ``--held-out-wordings`` ones ([content + wording] vs [content], last prompt
token, SAE latents that rise in >= ``--min-fraction`` of the pairs). On the other half the model answers the bare
content unsteered, the content with a held-out wording (prompting), and the bare content steered by the SAIF vector
(``add`` at every position) at each coefficient. A programmatic check scores each answer.

SAIF steers best at a late layer. The shipped SAE reads block 12 of 30; train a late one first and pass it::

    .venv/bin/polysteer sae train --layer 26 --tokens 1000000 -o sae-L26
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/saif.py --sae sae-L26

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/saif.py                  # all 4 instructions, 16 + 16 contents
    .venv/bin/python benchmarks/saif.py --quick                           # a smoke run: 3 instructions, 4 + 4

Writes ``README.md``, ``saif.png`` and ``results.json`` to ``benchmarks/results/saif/``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from polysteer.modalities.text import load_model  # noqa: E402
from polysteer.modalities.text.evaluators import check, read_instructions, word_count  # noqa: E402
from polysteer.modalities.text.sae import SHIPPED_SAE, fit_saif, follow_rate  # noqa: E402

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "saif"
DATA = HERE / "data" / "saif_instructions.json"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--sae", default=str(SHIPPED_SAE), help="SAE folder (its hook_name is the steered layer)")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--instructions", default="french,capitals,short,question")
    parser.add_argument("--fit", type=int, default=16, help="content prompts SAIF is fitted on")
    parser.add_argument("--test", type=int, default=16, help="held-out content prompts")
    parser.add_argument("--held-out-wordings", type=int, default=2, help="wordings kept for the prompting baseline")
    parser.add_argument("--coefs", default="1,2,4", help="multiples of the SAIF vector")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--min-fraction", type=float, default=0.9)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="3 instructions, 4 + 4 contents, coefficient 2")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if args.quick:
        args.instructions, args.fit, args.test, args.coefs, args.max_new_tokens = "french,capitals,short", 4, 4, "2", 40
    return args


def run_instruction(model, tokenizer, args, name: str, instruction, fit: list[str], test: list[str]) -> dict:
    """Fit SAIF for one instruction and score the held-out contents in every setting."""
    keep = len(instruction.wordings) - args.held_out_wordings
    if keep < 1 or args.held_out_wordings < 1:
        raise SystemExit(f"{name}: {len(instruction.wordings)} wordings cannot leave {args.held_out_wordings} held out")
    fitted, held = instruction.wordings[:keep], instruction.wordings[keep:]
    direction, finder = fit_saif(model, tokenizer, fit, fitted, args.sae, args.top_k, args.min_fraction,
                                 provenance={"instruction": name})
    passes = check(instruction.check)
    gen = {"max_new_tokens": args.max_new_tokens}
    rates, samples = {}, {}
    rates["unsteered"], samples["unsteered"] = follow_rate(model, tokenizer, test, passes, **gen)
    prompted = [f"{c} {held[i % len(held)]}" for i, c in enumerate(test)]
    rates["prompted"], samples["prompted"] = follow_rate(model, tokenizer, prompted, passes, **gen)
    for coef in map(float, args.coefs.split(",")):
        key = f"SAIF x{coef:g}"
        rates[key], samples[key] = follow_rate(model, tokenizer, test, passes, direction.to_plan(coef), **gen)
    return {"instruction": name, "latents": finder.latents_.tolist(), "vector_norm": finder.scale_,
            "hook_point": direction.hook_points[0], "rates": rates,
            "mean_words": {k: sum(word_count(t) for t in v) / len(v) for k, v in samples.items()},
            "samples": {k: v[:3] for k, v in samples.items()}}


def main() -> None:
    args = parse_args()
    data = read_instructions(args.data)
    names = args.instructions.split(",")
    unknown = [n for n in names if n not in data.instructions]
    if unknown:
        raise SystemExit(f"unknown instructions {unknown}; the data file has {list(data.instructions)}")
    contents = list(data.contents)
    random.Random(args.seed).shuffle(contents)
    fit, test = contents[: args.fit], contents[args.fit : args.fit + args.test]
    model, tokenizer = load_model(args.model)
    results = [run_instruction(model, tokenizer, args, n, data.instructions[n], fit, test) for n in names]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    plot(results, out / "saif.png")
    write_readme(args, results, out / "README.md", len(fit), len(test))


def plot(results: list[dict], path: Path) -> None:
    settings = list(results[0]["rates"])
    fig, ax = plt.subplots(figsize=(7, 3.4))
    width = 0.8 / len(settings)
    for i, setting in enumerate(settings):
        xs = [x + (i - (len(settings) - 1) / 2) * width for x in range(len(results))]
        ax.bar(xs, [r["rates"][setting] for r in results], width, label=setting)
    ax.set_xticks(range(len(results)), [r["instruction"] for r in results])
    ax.set(ylabel="instruction-following rate", ylim=(0, 1), title="SAIF: held-out contents")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_readme(args, results: list[dict], path: Path, n_fit: int, n_test: int) -> None:
    settings = list(results[0]["rates"])
    columns = ["instruction", *settings, "latents"]
    header = "| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|"
    lines = [f"| {r['instruction']} | " + " | ".join(f"{r['rates'][s]:.2f}" for s in settings)
             + f" | {len(r['latents'])} |" for r in results]
    path.write_text(f"""# SAIF: instruction following ({args.model})

SAE `{args.sae}` at {results[0]['hook_point']}; SAIF fitted on {n_fit} contents x the wordings minus
{args.held_out_wordings} (top {args.top_k} latents rising in >= {args.min_fraction:.0%} of the pairs, last prompt
token). Scored on {n_test} held-out contents, greedy, {args.max_new_tokens} new tokens: unsteered (content only),
prompted (content + a held-out wording) and steered (content only + coefficient x the SAIF vector at every position).

{header}
{chr(10).join(lines)}

Command: `OMP_NUM_THREADS=2 .venv/bin/python benchmarks/saif.py --sae {args.sae} --instructions {args.instructions} \\
--fit {args.fit} --test {args.test} --coefs {args.coefs}`

![rates](saif.png)
""")


if __name__ == "__main__":
    main()
