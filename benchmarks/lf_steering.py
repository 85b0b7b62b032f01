"""LF-Steering on SmolLM2: answer consistency across paraphrases, unsteered vs steered.

The paraphrase groups (``benchmarks/data/paraphrase_groups.json``: 48 questions x 4 wordings, each with a short correct
answer) are shuffled with a fixed seed and split. The model answers the ``--fit`` groups unsteered; groups whose
agreement (``contains`` mode) is above the median are contrasted with the others to select SAE latents at the SAE's
hook point (the shipped SAE at block 12 unless ``--sae``). The held-out groups are then answered unsteered and steered
by the ``sae_bias`` operator at each coefficient. Reported per setting: consistency = mean over groups of the mean
pairwise agreement (exact, contains, and MiniLM cosine >= 0.9), accuracy against the answer, and answers changed.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/lf_steering.py                 # 16 fit groups, 32 held out
    .venv/bin/python benchmarks/lf_steering.py --quick                          # a smoke run: 10 fit, 6 held out
    .venv/bin/python benchmarks/lf_steering.py --sae SAE_DIR --mode shift --coefs 1,2

Writes ``README.md``, ``lf_steering.png``, ``results.json`` and the direction file to
``benchmarks/results/lf_steering/``.
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
from polysteer.modalities.text.evaluators import Consistency, read_paraphrase_groups  # noqa: E402
from polysteer.modalities.text.sae import SHIPPED_SAE, fit_lf_steering, measure_consistency  # noqa: E402

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "lf_steering"
GROUPS = HERE / "data" / "paraphrase_groups.json"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--sae", default=str(SHIPPED_SAE), help="SAE folder (its hook_name is the steered layer)")
    parser.add_argument("--groups", default=str(GROUPS))
    parser.add_argument("--fit", type=int, default=16, help="groups used to select latents")
    parser.add_argument("--test", type=int, default=32, help="held-out groups (0: all the others)")
    parser.add_argument("--coefs", default="0.5,1", help="sae_bias coefficients c")
    parser.add_argument("--mode", choices=["pull", "shift"], default="pull")
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--agreement", choices=["exact", "contains", "similarity"], default="contains",
                        help="agreement used to split the fit groups")
    parser.add_argument("--agree-threshold", type=float, default=None, help="default: split at the median")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="10 fit groups, 6 held out, coefficient 1")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if args.quick:
        args.fit, args.test, args.coefs = 10, 6, "1"
    return args


def split(groups: list, fit: int, test: int, seed: int) -> tuple[list, list]:
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    shuffled = [groups[i] for i in order]
    held_out = shuffled[fit:] if test == 0 else shuffled[fit : fit + test]
    return shuffled[:fit], held_out


JUDGES = {"exact": Consistency("exact"), "contains": Consistency("contains"), "minilm": Consistency("similarity")}


def row(name: str, result, base) -> dict:
    """One table row: consistency under each judge, accuracy, answers changed against ``base``."""
    scores = {}
    for key, judge in JUDGES.items():
        agreement = judge.group_agreement(result.answers, result.group_ids)
        scores[f"consistency_{key}"] = sum(agreement.values()) / len(agreement)
    changed = sum(a != b for a, b in zip(result.answers, base.answers)) if base is not None else 0
    return {"setting": name, **scores, "accuracy": result.accuracy, "changed": changed}


def main() -> None:
    args = parse_args()
    fit_groups, test_groups = split(read_paraphrase_groups(args.groups), args.fit, args.test, args.seed)
    model, tokenizer = load_model(args.model)
    kwargs = {"max_new_tokens": args.max_new_tokens}
    direction, finder, fit_base = fit_lf_steering(
        model, tokenizer, fit_groups, args.sae, args.top_k, args.mode, agree_threshold=args.agree_threshold,
        judge=JUDGES[args.agreement if args.agreement != "similarity" else "minilm"], **kwargs)
    base = measure_consistency(model, tokenizer, test_groups, **kwargs)
    rows = [row("unsteered", base, None)]
    outputs = {"unsteered": base.answers}
    for coef in map(float, args.coefs.split(",")):
        steered = measure_consistency(model, tokenizer, test_groups, direction.to_plan(coef), **kwargs)
        rows.append(row(f"sae_bias c={coef:g}", steered, base))
        outputs[f"c={coef:g}"] = steered.answers
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    direction.save(out / "lf_steering.safetensors")
    report(args, out, finder, fit_base, test_groups, rows, outputs)


def report(args, out: Path, finder, fit_base, test_groups, rows, outputs) -> None:
    latents = [{"latent": int(j), "score": float(finder.scores_[j]), "bias": float(b)}
               for j, b in zip(finder.latents_, finder.bias_)]
    result = {"args": vars(args), "fit_consistency": fit_base.consistency, "latents": latents, "rows": rows,
              "questions": [g.paraphrases[0] for g in test_groups], "answers": outputs}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    plot(rows, out / "lf_steering.png")
    table = "\n".join(f"| {r['setting']} | {r['consistency_exact']:.3f} | {r['consistency_contains']:.3f} | "
                      f"{r['consistency_minilm']:.3f} | {r['accuracy']:.3f} | {r['changed']} |" for r in rows)
    chosen = ", ".join(f"{x['latent']} ({x['score']:.2f})" for x in latents)
    (out / "README.md").write_text(f"""# LF-Steering: consistency across paraphrases ({args.model})

Latents selected on {args.fit} groups ({args.agreement} consistency there {fit_base.consistency:.3f}; agreeing =
{"above the median" if args.agree_threshold is None else f">= {args.agree_threshold}"}) with the SAE at `{args.sae}`:
{chosen} (latent (score)). Steering: `sae_bias`, mode `{args.mode}`. Held out: {len(test_groups)} groups x 4
paraphrases, greedy, {args.max_new_tokens} new tokens, prompts end with "Answer in a few words.". Consistency = mean
over groups of the mean pairwise agreement of the 4 answers (exact after normalisation; contains: one normalised
answer inside the other; MiniLM cosine >= 0.9); accuracy = the answer (or an alias) appears in the output.

| setting | consistency (exact) | consistency (contains) | consistency (MiniLM) | accuracy | answers changed |
| --- | --- | --- | --- | --- | --- |
{table}

Command: `OMP_NUM_THREADS=2 .venv/bin/python benchmarks/lf_steering.py --fit {args.fit} --test {args.test} \\
--coefs {args.coefs} --mode {args.mode} --top-k {args.top_k} --agreement {args.agreement}`

![consistency](lf_steering.png)
""")


def plot(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.4))
    names = [r["setting"] for r in rows]
    keys = ("consistency_exact", "consistency_contains", "consistency_minilm", "accuracy")
    width = 0.8 / len(keys)
    for i, key in enumerate(keys):
        ax.bar([x + (i - 1.5) * width for x in range(len(rows))], [r[key] for r in rows], width, label=key)
    ax.set_xticks(range(len(rows)), names)
    ax.set(ylabel="held-out score", ylim=(0, 1), title="LF-Steering: paraphrase consistency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
