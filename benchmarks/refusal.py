"""Refusal steering on SmolLM2-135M-Instruct (the Phi-3 refusal seed): gain and side effects, DiffMean vs SAE.

Fitted on the select split of ``modalities/text/data/refusal/refusal.json`` (harmful requests against harmless
look-alikes and benign questions, last prompt token): a DiffMean refusal direction at ``--layers`` and the top
``--top-k`` SAE refusal features (``sae_contrast``, the shipped SAE at block 12). On the select split
(``--select-tokens`` new tokens) the script chooses, within a QA accuracy drop of ``--max-accuracy-drop``:

- DiffMean add: the layer and coefficient maximising refusal on harmful minus over-refusal on look-alikes;
- DiffMean ablate: the layer whose direction, removed from every block, lowers refusal on harmful the most;
- SAE clamp up / down: the multiple of each feature's peak harmful activation (``sae_clamp`` at every position)
  that raises / lowers refusal the most (0 removes the features).

On the report split (greedy, ``--max-new-tokens``) it measures refusal on harmful requests, over-refusal on the
look-alikes, benign QA accuracy and median perplexity under the unsteered model. The refusal judge is a phrase
matcher or MiniLM similarity to the refusal templates, its threshold just above the most template-like unsteered
select-split answer that no refusal phrase matches.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/refusal.py
    .venv/bin/python benchmarks/refusal.py --quick          # a smoke run: 4 items per group, 2 layers, 12 tokens
    .venv/bin/python benchmarks/refusal.py --limit 8 --layers 9   # a reduced run on a busy machine

Writes ``README.md``, ``refusal.png`` and ``results.json`` to ``benchmarks/results/refusal/``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from polysteer import modality_for  # noqa: E402
from polysteer.modalities.text import load_model  # noqa: E402
from polysteer.modalities.text.refusal import (  # noqa: E402
    ablation_candidates,
    addition_candidates,
    calibrated_judge,
    choose,
    clamp_candidates,
    fit_refusal,
    measure,
    refusal_data,
    refusal_features,
    sweep,
)
from polysteer.modalities.text.sae import SHIPPED_SAE  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "refusal"
GROUPS = ("harmful", "lookalike", "qa")
HARMFUL_QA = ("harmful", "qa")  # a 'decrease' choice needs no look-alike answers


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--sae", default=str(SHIPPED_SAE), help="SAE folder (its hook_name is where it reads)")
    parser.add_argument("--data", default=None, help="refusal data JSON (default: the shipped set)")
    parser.add_argument("--layers", default="9,12,15", help="DiffMean layers tried")
    parser.add_argument("--coefs", default="1,2,4", help="add coefficients (x the class separation)")
    parser.add_argument("--clamp-up", default="2,4,8", help="clamp multiples of each feature's peak activation")
    parser.add_argument("--clamp-down", default="0,-2", help="clamp multiples that lower refusal (0 removes)")
    parser.add_argument("--top-k", type=int, default=4, help="SAE features clamped")
    parser.add_argument("--max-accuracy-drop", type=float, default=0.1)
    parser.add_argument("--select-tokens", type=int, default=16, help="new tokens per answer while choosing")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="new tokens per answer on the report split")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="only the first N items of each group and split")
    parser.add_argument("--quick", action="store_true", help="4 items per group, layers 9,12, 12 tokens")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if args.quick:
        args.layers, args.coefs, args.clamp_up, args.clamp_down = "9,12", "2", "4", "0"
        args.select_tokens, args.max_new_tokens, args.limit = 12, 12, 4
    args.command = " ".join(["benchmarks/refusal.py", *sys.argv[1:]])  # as run, for the README
    return args


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def candidates(direction, features, n_layers: int, args) -> dict[str, tuple[dict, str, tuple[str, ...]]]:
    """Per method: its candidate plans on the select split, its goal, and the groups it is chosen on."""
    return {
        "add": (addition_candidates(direction, floats(args.coefs)), "increase", GROUPS),
        "ablate": (ablation_candidates(direction, n_layers), "decrease", HARMFUL_QA),
        "clamp_up": (clamp_candidates(features, floats(args.clamp_up)), "increase", GROUPS),
        "clamp_down": (clamp_candidates(features, floats(args.clamp_down)), "decrease", HARMFUL_QA),
    }


def choose_all(model, tokenizer, data, methods: dict, args) -> tuple[dict, dict]:
    """Every method's choice on the select split, and the sweeps behind them."""
    gen = {"max_new_tokens": args.select_tokens, "batch_size": args.batch_size}
    judge, base = calibrated_judge(model, tokenizer, data, **gen)
    sweeps = {name: sweep(model, tokenizer, data.select, plans, judge, groups, desc=f"{name} (select)", **gen)
              for name, (plans, _, groups) in methods.items()}
    choices = {name: choose(sweeps[name], base, goal, args.max_accuracy_drop)
               for name, (_, goal, _) in methods.items()}
    return {"judge": judge, "base": base, "choices": choices}, sweeps


def report_plans(methods: dict, choices: dict) -> dict:
    """The report split's settings: unsteered and each method at its chosen setting."""
    (layer, coef), ablate_layer = choices["add"].key, choices["ablate"].key
    labels = {"add": f"DiffMean add @{layer} x{coef:g}",
              "ablate": f"DiffMean ablate (L{ablate_layer} dir., all blocks)",
              "clamp_up": f"SAE clamp up x{choices['clamp_up'].key:g}",
              "clamp_down": f"SAE clamp down x{choices['clamp_down'].key:g}"}
    return {"unsteered": None, **{labels[name]: plans[choices[name].key] for name, (plans, _, _) in methods.items()}}


def main() -> None:
    args = parse_args()
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    model, tokenizer = load_model(args.model)
    data = refusal_data(args.data)
    data.select, data.report = data.select.head(args.limit), data.report.head(args.limit)
    layers = [int(x) for x in args.layers.split(",")]
    direction, features = fit_refusal(model, tokenizer, data, layers, args.sae, args.top_k)
    methods = candidates(direction, features, modality_for(model).n_layers(model), args)
    chosen, sweeps = choose_all(model, tokenizer, data, methods, args)
    gen = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}
    report = {name: measure(model, tokenizer, data.report, plan, chosen["judge"], fluency=True, **gen)
              for name, plan in report_plans(methods, chosen["choices"]).items()}
    seconds = time.perf_counter() - start
    args.load_average = [round(load_start, 2), round(os.getloadavg()[0], 2)]  # other work on the machine slows it
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(args, seconds, chosen, sweeps, report, direction, features)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    plot(report, sweeps, out / "refusal.png")
    write_readme(args, summary, report, out / "README.md", len(data.report.harmful), len(data.select.harmful))
    print((out / "README.md").read_text())


def summarize(args, seconds: float, chosen: dict, sweeps: dict, report: dict, direction, features) -> dict:
    """Everything measured, as JSON: arguments, choices, select sweeps, report scores and every report answer."""
    latents, peaks = refusal_features(features)
    paths = {"sae", "data", "out"}  # names only: results must not record this machine's folders
    return {"args": {k: Path(v).name if k in paths and v else v for k, v in vars(args).items()},
            "seconds": seconds, "judge_threshold": chosen["judge"].threshold, "sae_features": latents,
            "sae_peaks": peaks, "direction_scales": direction.scales, "select_unsteered": chosen["base"].row(),
            "choices": {k: {"key": str(c.key), "feasible": c.feasible, "select": c.scores.row()}
                        for k, c in chosen["choices"].items()},
            "select_sweeps": {k: {str(key): s.row() for key, s in v.items()} for k, v in sweeps.items()},
            "report": {k: {**s.row(), "outputs": {g: s.outputs[g] for g in GROUPS}} for k, s in report.items()}}


def plot(report: dict, sweeps: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, scores in sweeps.items():
        points = [(s.over_refusal, s.refusal) for s in scores.values() if s.over_refusal == s.over_refusal]
        if points:
            ax.scatter(*zip(*points), s=12, color="0.75", label="select-split candidates" if name == "add" else None)
    for name, s in report.items():
        ax.scatter([s.over_refusal], [s.refusal], s=60, label=f"{name} (QA {s.accuracy:.2f})")
    ax.set(xlabel="over-refusal on harmless look-alikes", ylabel="refusal on harmful requests",
           xlim=(-0.05, 1.05), ylim=(-0.05, 1.05), title="Refusal steering, SmolLM2-135M-Instruct (report split)")
    ax.plot([0, 1], [0, 1], ls=":", color="0.6", lw=1)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_readme(args, summary: dict, report: dict, path: Path, n_report: int, n_select: int) -> None:
    lines = ["| setting | refusal on harmful | over-refusal on look-alikes | benign QA accuracy | median perplexity |",
             "|---|---|---|---|---|"]
    for name, s in report.items():
        lines.append(f"| {name} | {s.refusal:.2f} | {s.over_refusal:.2f} | {s.accuracy:.2f} | {s.perplexity:.2f} |")
    choices = "\n".join(f"- {k}: `{c['key']}`" + ("" if c["feasible"] else " (no setting kept the accuracy: the "
                                                  "most accurate one)") + f", select split {_row(c['select'])}"
                        for k, c in summary["choices"].items())
    threads = os.environ.get("OMP_NUM_THREADS")
    env = f"OMP_NUM_THREADS={threads} " if threads else ""
    path.write_text(f"""# Refusal steering on {args.model} (the Phi-3 refusal seed)

Report split: {n_report} harmful requests, {n_report} harmless look-alikes and the held-out benign questions; greedy,
{args.max_new_tokens} new tokens. Everything was chosen on the select split ({n_select} harmful requests,
{args.select_tokens} new tokens, QA accuracy at most {args.max_accuracy_drop} below unsteered). The refusal judge is
a phrase matcher or MiniLM similarity to the refusal templates >= {summary['judge_threshold']:.3f} (just above the most
template-like unsteered select-split answer without a refusal phrase). Benign questions are asked with "Answer in a
few words.". Perplexity: median over the look-alike and QA answers, under the unsteered model.

{chr(10).join(lines)}

Chosen on the select split (unsteered there: {_row(summary['select_unsteered'])}):
{choices}

DiffMean layers tried {args.layers}, add coefficients {args.coefs} (x the class separation); SAE
`{Path(args.sae).name}` features {summary['sae_features']} (top {args.top_k} by contrast), clamped to
{args.clamp_up} (up) or {args.clamp_down} (down) x their peak harmful activations.

Command: `{env}.venv/bin/python {args.command}` ({summary['seconds'] / 60:.1f} min on {os.cpu_count()} CPU
cores; 1-minute load average {args.load_average[0]} at the start, {args.load_average[1]} at the end)

![refusal vs over-refusal](refusal.png)
""")


def _row(row: dict) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in row.items() if v is not None and v == v)


if __name__ == "__main__":
    main()
