"""LF-Steering on SmolLM2: layer localisation, then answer consistency across paraphrases, unsteered vs steered.

The paraphrase groups (``benchmarks/data/paraphrase_groups.json``: 48 questions x 4 wordings, each with a short correct
answer) are shuffled with a fixed seed and split. The model answers the ``--fit`` groups unsteered. Localisation (the
paper's first step): at every block, a probe on ``[h_m; h_n]`` of each pair of wordings predicts whether the two
answers agree (``--agreement`` judge); held-out accuracy ranks the blocks. Selection: groups whose agreement is above
the median are contrasted with the others to select SAE latents at the SAE's hook point (the shipped SAE at block 12
unless ``--sae``; an SAE for the localised block is not shipped), with each ``--scores`` (``contrast``: the paper's,
``spread``: the earlier one). The held-out groups are then answered unsteered and steered by the ``sae_bias`` operator
at each coefficient. Reported per setting: consistency = mean over groups of the mean pairwise agreement (exact,
contains, and MiniLM cosine >= 0.9), accuracy against the answer, and answers changed.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/lf_steering.py                 # 16 fit groups, 32 held out
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lf_steering.py --test 16 --coefs 1   # the committed run
    .venv/bin/python benchmarks/lf_steering.py --quick                          # a smoke run: 10 fit, 6 held out
    .venv/bin/python benchmarks/lf_steering.py --sae SAE_DIR --mode shift --coefs 1,2

Writes ``README.md``, ``lf_steering.png``, ``results.json`` and the direction file to
``benchmarks/results/lf_steering/``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from polysteer.modalities.text import TextModality, collect, load_model  # noqa: E402
from polysteer.modalities.text.evaluators import Consistency, read_paraphrase_groups  # noqa: E402
from polysteer.modalities.text.sae import (  # noqa: E402
    SHIPPED_SAE,
    agreeing_groups,
    measure_consistency,
    paraphrase_prompts,
    prompt_examples,
)
from polysteer.plugins.sae import SAE, LFSteering, lf_direction, localize_layers, paraphrase_pairs  # noqa: E402

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
    parser.add_argument("--scores", default="contrast,spread", help="latent scores to compare (contrast, spread)")
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


def fit_activations(model, tokenizer, groups) -> tuple[dict, list[int]]:
    """Pooled states of every fitting paraphrase at every block (as ``fit_lf_steering`` reads its hook point)."""
    prompts, ids = paraphrase_prompts(groups)
    n = TextModality().n_layers(model)
    points = [f"text.blocks.{i}.resid_post" for i in range(n)]
    return collect(model, tokenizer, prompt_examples(prompts, "last"), points), ids


def localise(X: dict, ids: list[int], answers: list[str], judge) -> tuple:
    """Probe accuracy per block on pairs of wordings labelled by whether their answers agree."""
    pairs = paraphrase_pairs(ids)
    agree = judge.agreement(answers)
    return localize_layers(X, ids, pairs, [bool(agree[i, j] > 0.5) for i, j in pairs])


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    fit_groups, test_groups = split(read_paraphrase_groups(args.groups), args.fit, args.test, args.seed)
    model, tokenizer = load_model(args.model)
    kwargs = {"max_new_tokens": args.max_new_tokens}
    judge = JUDGES[args.agreement if args.agreement != "similarity" else "minilm"]
    fit_base = measure_consistency(model, tokenizer, fit_groups, judge=judge, **kwargs)
    X, ids = fit_activations(model, tokenizer, fit_groups)
    located = localise(X, ids, fit_base.answers, judge)
    sae = SAE.load(args.sae)
    agreeing = agreeing_groups(fit_base.agreement, args.agree_threshold)
    flags = [g in agreeing for g in ids]
    finders = {score: LFSteering(sae, args.top_k, args.mode, score).fit(X[sae.hook_point], ids, flags)
               for score in args.scores.split(",")}
    base = measure_consistency(model, tokenizer, test_groups, **kwargs)
    rows, outputs = [row("unsteered", base, None)], {"unsteered": base.answers}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for score, finder in finders.items():
        direction = lf_direction(finder, sae.hook_point, args.sae, 1.0, TextModality().identity(model),
                                 {"n_groups": len(fit_groups), "n_agreeing": len(agreeing)})
        direction.save(out / ("lf_steering.safetensors" if score == "contrast" else f"lf_steering_{score}.safetensors"))
        for coef in map(float, args.coefs.split(",")):
            steered = measure_consistency(model, tokenizer, test_groups, direction.to_plan(coef), **kwargs)
            rows.append(row(f"{score} c={coef:g}", steered, base))
            outputs[f"{score} c={coef:g}"] = steered.answers
    timing = {"wall_seconds": round(time.perf_counter() - started, 1),
              "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    report(args, out, finders, fit_base, test_groups, rows, outputs, located, sae.hook_point, timing)


def portable(values: dict) -> dict:
    """Arguments with paths inside the repository written relative to it (no machine-specific paths)."""
    root = str(HERE.parent) + "/"
    return {k: v.replace(root, "") if isinstance(v, str) else v for k, v in values.items()}


def report(args, out: Path, finders, fit_base, test_groups, rows, outputs, located, sae_point, timing) -> None:
    latents = {score: [{"latent": int(j), "score": float(f.scores_[j]), "bias": float(b)}
                       for j, b in zip(f.latents_, f.bias_)] for score, f in finders.items()}
    result = {"args": portable(vars(args)), "fit_consistency": fit_base.consistency, "latents": latents, "rows": rows,
              "localisation": {"balanced_accuracy": located.accuracy, "accuracy": located.plain_accuracy,
                               "chance": located.chance, "pairs": located.n_pairs, "best": located.best}, **timing,
              "questions": [g.paraphrases[0] for g in test_groups], "answers": outputs}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    plot(rows, out / "lf_steering.png")
    table = "\n".join(f"| {r['setting']} | {r['consistency_exact']:.3f} | {r['consistency_contains']:.3f} | "
                      f"{r['consistency_minilm']:.3f} | {r['accuracy']:.3f} | {r['changed']} |" for r in rows)
    chosen = "; ".join(f"{score}: " + ", ".join(f"{x['latent']} ({x['score']:.2f})" for x in found)
                       for score, found in latents.items())
    ranked = sorted(located.accuracy.items(), key=lambda kv: -kv[1])
    layers = "\n".join(f"| {hp} | {acc:.3f} | {located.plain_accuracy[hp]:.3f} |" for hp, acc in ranked)
    (out / "README.md").write_text(f"""# LF-Steering: consistency across paraphrases ({args.model})

Wall time {timing['wall_seconds']} s; load average (1/5/15 min) at the end {timing['load_average']} on
{os.cpu_count()} CPUs.

## Layer localisation

Probe (standardised logistic regression on `[h_m; h_n]`, 5-fold by question) predicting whether two wordings'
answers agree ({args.agreement} judge), {located.n_pairs} pairs from {args.fit} fit groups; majority-class rate
{located.chance:.3f}, so plain accuracy at that rate and balanced accuracy at 0.5 mean the probe learned nothing.
Localised block (highest balanced accuracy): **{located.best}** ({located.accuracy[located.best]:.3f}). The steering
below uses the SAE's hook point `{sae_point}` (the only SAE shipped); steering at the localised block needs an SAE
trained there (`--sae`).

| block | held-out balanced accuracy | held-out accuracy |
| --- | --- | --- |
{layers}

## Steering

Latents selected on {args.fit} groups ({args.agreement} consistency there {fit_base.consistency:.3f}; agreeing =
{"above the median" if args.agree_threshold is None else f">= {args.agree_threshold}"}) with the SAE at `{args.sae}`
(latent (score)): {chosen}. Steering: `sae_bias`, mode `{args.mode}`. Held out: {len(test_groups)} groups x 4
paraphrases, greedy, {args.max_new_tokens} new tokens, prompts end with "Answer in a few words.". Consistency = mean
over groups of the mean pairwise agreement of the 4 answers (exact after normalisation; contains: one normalised
answer inside the other; MiniLM cosine >= 0.9); accuracy = the answer (or an alias) appears in the output.

| setting | consistency (exact) | consistency (contains) | consistency (MiniLM) | accuracy | answers changed |
| --- | --- | --- | --- | --- | --- |
{table}

Command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lf_steering.py --fit {args.fit} --test {args.test} \\
--coefs {args.coefs} --mode {args.mode} --top-k {args.top_k} --agreement {args.agreement} --scores {args.scores} \\
--max-new-tokens {args.max_new_tokens} --sae {args.sae}`

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
