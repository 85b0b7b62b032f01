"""The report of ``benchmarks/sae_flow.py``: plot, cosine table, verdict, examples and ``README.md``.

Everything in the README is computed from the run's rows (``sae_flow.py --report-only`` rebuilds it from
``results.json``), so no number is written by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from common import markdown  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "sae_flow"
METHODS = ("single L12", "flow", "flow cumulative")


def plot(rows: list[dict]) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for method, marker in zip(METHODS, "o^s"):
        mine = [r for r in rows if r["method"] == method]
        ax.scatter([r["perplexity"] for r in mine], [r["concept_rate"] for r in mine], marker=marker, label=method,
                   alpha=0.7)
    ax.set(xlabel="median perplexity (unsteered model)", ylabel="concept keyword rate", xscale="log",
           title="single-layer vs flow-guided multi-layer SAE steering")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "flow.png", dpi=120)


def cosine_table(cosines: dict) -> str:
    rows = [{"latents": name, **{k: (f"{v:.3f}" if k != "n" else v) for k, v in cosines[name].items()}}
            for name in ("all block-12 latents", "start latents", "random directions (chance)")]
    return markdown(rows, ["latents", "n", "median", "p90", ">=0.5", ">=0.4", ">=0.3", ">=0.2"])


def sign_test(wins: int, losses: int) -> float:
    """Two-sided sign-test p-value of wins against losses (ties dropped)."""
    n = wins + losses
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def verdict(rows: list[dict], graphs: dict, cosines: dict, prompts: int) -> str:
    """Flow against single L12 on the linked concepts, cell by cell (concept x coefficient)."""
    single = {(r["concept"], r["coef"]): r for r in rows if r["method"] == "single L12"}
    linked = [name for name, g in graphs.items() if len(g["nodes"]) > 1]
    lines, benefit = [f"Start latents linked to a block-11 latent: {len(linked)} of {len(graphs)} "
                      f"({', '.join(linked)}); unlinked ones get exactly the single-layer plan."], False
    for method in METHODS[1:]:
        cells = [(r, single[(r["concept"], r["coef"])]) for r in rows
                 if r["method"] == method and r["concept"] in linked]
        wins = sum(r["concept_rate"] > s["concept_rate"] for r, s in cells)
        losses = sum(r["concept_rate"] < s["concept_rate"] for r, s in cells)
        lower = sum(r["perplexity"] < s["perplexity"] for r, s in cells)
        higher = sum(r["perplexity"] > s["perplexity"] for r, s in cells)
        ratio = sorted(r["perplexity"] / s["perplexity"] for r, s in cells)[len(cells) // 2] if cells else 1.0
        lines.append(f"- {method} vs single L12, linked concepts ({len(cells)} cells): concept rate higher in {wins}, "
                     f"lower in {losses} (sign test p = {sign_test(wins, losses):.2f}); perplexity lower in {lower}, "
                     f"higher in {higher} (p = {sign_test(lower, higher):.2f}), median ratio {ratio:.2f}.")
        benefit |= wins > losses and sign_test(wins, losses) < 0.05
    best = max(r["concept_rate"] for r in rows if r["method"] in METHODS)
    lines.append(f"- Highest concept rate of any steered cell: {best:.3f} ({round(best * prompts)} of {prompts} "
                 f"outputs); one output moves a cell by {1 / prompts:.3f}.")
    if not benefit:
        lines.append(f"\n**Flow gives no measurable concept benefit over single-layer steering here.** "
                     f"{explanation(cosines)}")
    return "\n".join(lines)


def examples(rows: list[dict], coef: float) -> str:
    """The first output of each method at one coefficient (and unsteered), to show what the start latents write."""
    picked = [{**r, "coef": f"{r['coef']:g}", "example": r["example"][:110].replace("\n", " ").replace("|", "/")}
              for r in rows if r["coef"] in (0.0, coef)]
    return markdown(picked, ["concept", "method", "coef", "example"])


def explanation(cosines: dict) -> str:
    """Why flow can add little here, from the measured decoder cosines."""
    start, every = cosines["start"].values(), cosines["all block-12 latents"]
    low, high = min(s["cosine"] for s in start), max(s["cosine"] for s in start)
    chance = cosines["random directions (chance)"]["median"]
    text = (f"The start latents' block-11 matches have decoder cosines {low:.2f}-{high:.2f} (all latents: median "
            f"{every['median']:.2f}, {every['>=0.5']:.0%} at 0.5 or more; random directions: {chance:.2f}).")
    if high < 0.71:  # cos^2 < 1/2: most of a linked row's energy lies off the start row
        text += (f" The links are far above chance, but a linked block-11 row puts only {low * low:.0%}-"
                 f"{high * high:.0%} of its energy along the start row, so the share of the coefficient moved there "
                 "mostly pushes other directions.")
    return text


def sae_line(name: str, m: dict) -> str:
    nan = float("nan")
    return (f"| {name} | {m.get('explained_variance', nan):.3f} | {m.get('l0', nan):.1f} | "
            f"{m.get('dead_fraction', nan):.4f} | {m.get('loss_recovered', nan):.3f} | "
            f"{m.get('tokens_trained', 0):,} |")


def intro(args) -> str:
    """What was compared, on which SAEs, with which judges."""
    return f"""Start latent per concept: the `sae_contrast` finder's top latent of the shipped block-12 SAE on the token
activations of the concept's held-out texts vs other texts (the `flow` finder's choice). Methods, at each total
coefficient `c` (latent units; decoder rows are unit vectors):

- "single L12": `c * W_dec[f]` at block 12;
- "flow": `c * w_l * W_dec_l[f_l]` at every node of the flow graph, w = path cosines normalised to sum 1 (the same
  total, split across layers);
- "flow cumulative": unnormalised weights (`FlowGraph.plan(normalize=False)`): `c` at block 12 plus `c * cos` at
  block 11.

"layers" lists each block's coefficient. {args.prompts} neutral prompts, greedy, {args.max_new_tokens} new tokens.
Concept rate = fraction of outputs with a concept keyword; perplexity = median under the unsteered model.

The two SAEs, from their own metadata (held-out shard; tokens trained count every epoch; the block-11 SAE's
training command is in `benchmarks/sae_flow.py`):

| SAE | explained variance | L0 | dead fraction | LM loss recovered | tokens trained |
|---|---|---|---|---|---|
{sae_line("shipped, block 12", args.shipped_metrics)}
{sae_line(f"{Path(args.second_sae).name}, block 11", args.second_metrics)}"""


def graph_lines(args, graphs: dict) -> str:
    starts = "\n".join(f"- {name}: #{s['feature']}, best block-11 match #{s['match']} at cosine {s['cosine']:.3f}"
                       for name, s in args.cosines["start"].items())
    links = "\n".join(f"- {name}: " + ", ".join(f"{n['hook_point']} #{n['feature']} (cos {n['similarity']:.2f})"
                                                 for n in g["nodes"]) for name, g in graphs.items())
    return f"Start latents:\n{starts}\n\nGraphs:\n{links}"


def write_report(args, rows: list[dict], graphs: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    saved = {**vars(args), "second_sae": Path(args.second_sae).name}  # no machine paths in tracked files
    (RESULTS / "results.json").write_text(json.dumps({"args": saved, "rows": rows, "graphs": graphs}, indent=2))
    plot(rows)
    coefs = [float(c) for c in args.coefs.split(",")]
    example_coef = coefs[min(1, len(coefs) - 1)]
    table = markdown([{k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in r.items() if k != "example"}
                      for r in rows], ["concept", "method", "coef", "layers", "concept_rate", "perplexity"])
    (RESULTS / "README.md").write_text(f"""# Feature Flow: single-layer vs flow-guided multi-layer steering (SmolLM2)

{intro(args)}

## Do the two SAEs' decoder rows align?

Best block-11 decoder cosine of each block-12 latent (top-1 match, as Feature Flow links features), against
random unit directions as the chance level:

{cosine_table(args.cosines)}

Same-index best matches: {args.cosines['same_index']:.4f} (near 0 for independently initialised SAEs; near 1 means
the links only reflect a shared initialisation). Link threshold: **{args.threshold_value:.3f}**
(`--threshold {args.threshold}`; `median` = the median of the first row, so a typical latent links).

{graph_lines(args, graphs)}

## Steering

{table}

{verdict(rows, graphs, args.cosines, args.prompts)}

A method can raise the concept rate only where the start latent writes about the concept; the first output of each
method at coefficient {example_coef:g} shows what each start latent writes:

{examples(rows, example_coef)}

Command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sae_flow.py --concepts {args.concepts} --prompts \\
{args.prompts} --coefs {args.coefs} --threshold {args.threshold} --max-new-tokens {args.max_new_tokens}`
({args.wall_seconds} s wall; 1-minute load average {args.load_average[0]:.2f} at the start,
{args.load_average[-1]:.2f} at the end, on 2 shared cores)

![flow](flow.png)
""")
