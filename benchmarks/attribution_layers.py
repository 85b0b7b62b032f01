"""Attribution vs a full sweep: does the layer gradient attribution picks steer as well as the sweep's best layer?

For each concept (``benchmarks/concepts/concepts.json`` when present, else the built-in persona pairs, or
``--concepts FILE`` with ``{"concepts": [{"name", "description", "instruction", "keywords"}, ...]}``):

1. data: the model answers neutral questions with the concept's instruction appended (positives) and plainly
   (negatives), read back without the instruction (the CAA recipe); a DiffMean direction per layer, one capture;
2. attribution (no generation): rank the layers by ``grad . (scale * v)``, the first-order rise of
   ``log p(concept keyword token next)`` on the evaluation prompts when steering with coefficient 1
   (:func:`polysteer.modalities.text.attribution.rank_direction_layers`); also the ``|grad x act|`` ranking;
3. full sweep: generate at every layer x coefficient, keyword judge; a layer's score is its best keyword rate
   over the coefficients whose median perplexity stays within ``--max-ppl-ratio`` x the unsteered one;
4. compare: attribution's layer vs the sweep's best, the sweep score at attribution's layer vs the best, the
   rank of attribution's layer in the sweep, and the Spearman correlation of the two per-layer scores.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/attribution_layers.py --quick       # smoke run
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/attribution_layers.py --limit 8     # 8 concepts, every 2nd layer

Writes ``README.md``, ``results.json`` and ``attribution_layers.png`` to ``benchmarks/results/attribution/``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, markdown  # noqa: E402

from polysteer import atomic_write, write_text_atomic  # noqa: E402
from polysteer.modalities.text import (  # noqa: E402
    EVAL_PROMPTS,
    PERSONAS,
    TRAIN_QUESTIONS,
    TextModality,
    find_direction,
    layer_attribution,
    load_model,
    persona_answers,
    rank_by_attribution,
    rank_direction_layers,
    score_rows,
    summarize,
    sweep_direction,
)

SUITE = Path(__file__).parent / "concepts" / "concepts.json"
OUT = RESULTS / "attribution"


def load_concepts(path: str | None) -> list[dict]:
    """``name, instruction, keywords`` per concept: the file given, the suite if present, else the personas."""
    file = Path(path) if path else SUITE
    if path or file.is_file():
        concepts = json.loads(file.read_text(encoding="utf-8"))["concepts"]
        bad = [c.get("name") for c in concepts if not {"name", "instruction", "keywords"} <= set(c)]
        if bad:
            raise SystemExit(f"{file}: concepts {bad} lack name/instruction/keywords")
        return [{"name": c["name"], "instruction": c["instruction"], "keywords": list(c["keywords"])} for c in concepts]
    return [{"name": p.name, "instruction": p.positive, "keywords": list(p.keywords)} for p in PERSONAS.values()]


def layer_scores(table: list[dict], max_ppl_ratio: float) -> dict[str, float]:
    """Best keyword rate per hook point over the steered coefficients that keep perplexity in bounds."""
    base = statistics.median(r["perplexity"] for r in table if r["coef"] == 0) if any(
        r["coef"] == 0 for r in table) else float("inf")
    scores = {}
    for hp in sorted({r["hook_point"] for r in table}):
        cells = [r for r in table if r["hook_point"] == hp and r["coef"] != 0]
        fluent = [r for r in cells if r["perplexity"] <= max_ppl_ratio * base] or cells
        scores[hp] = max(r["keyword"] for r in fluent)
    return scores


def run_concept(model, tokenizer, concept: dict, negatives, layers, args) -> dict:
    questions = TRAIN_QUESTIONS[: args.questions]
    positives = persona_answers(model, tokenizer, questions, concept["instruction"], args.train_tokens)
    direction = find_direction(model, tokenizer, positives, negatives, layers, "diffmean")
    prompts = list(EVAL_PROMPTS[: args.prompts])
    start = time.time()
    predicted = rank_direction_layers(model, tokenizer, direction, prompts, concept["keywords"])
    act = layer_attribution(model, tokenizer, prompts, concept["keywords"], direction.hook_points).act
    seconds = time.time() - start
    coefs = [0.0] + [float(c) for c in args.coefs.split(",")]
    rows = sweep_direction(model, tokenizer, direction, prompts, coefs, direction.hook_points, args.tokens)
    swept = layer_scores(summarize(score_rows(rows, model, tokenizer, None, concept["keywords"])), args.max_ppl_ratio)
    best = max(swept, key=swept.get)
    chosen, by_act = next(iter(predicted)), next(iter(rank_by_attribution(act, absolute=True)))
    order = sorted(swept, key=lambda hp: -swept[hp])
    rho = _spearman([predicted[hp] for hp in swept], list(swept.values()))
    return {"concept": concept["name"], "attribution_layer": _layer(chosen), "act_layer": _layer(by_act),
            "sweep_best_layer": _layer(best), "score_at_attribution": swept[chosen], "score_at_act": swept[by_act],
            "best_score": swept[best], "rank_in_sweep": order.index(chosen) + 1, "spearman": float(rho),
            "attribution_seconds": seconds, "predicted": predicted, "swept": swept}


def _layer(hp: str) -> int:
    return int(hp.split(".")[2])


def _spearman(a: list[float], b: list[float]) -> float:
    """Rank correlation, NaN when either side is constant (e.g. no layer's sweep ever hit a keyword)."""
    return float(spearmanr(a, b).statistic) if len(set(a)) > 1 and len(set(b)) > 1 else float("nan")


def plot(results: list[dict], path: Path) -> None:
    """Left: attribution's layer vs the sweep's best. Right: sweep score at each pick vs the best."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    best = [r["sweep_best_layer"] for r in results]
    left.scatter(best, [r["attribution_layer"] for r in results], label="grad . v")
    left.scatter(best, [r["act_layer"] for r in results], marker="x", label="|grad x act|")
    top = max(best + [r["attribution_layer"] for r in results] + [r["act_layer"] for r in results]) + 1
    left.plot([0, top], [0, top], color="grey", lw=0.8)
    left.set(xlabel="best layer in the full sweep", ylabel="layer chosen by attribution", title="chosen layer")
    left.legend(fontsize=8)
    x = range(len(results))
    for offset, key, label in ((-0.25, "best_score", "sweep best"), (0, "score_at_attribution", "grad . v pick"),
                               (0.25, "score_at_act", "|grad x act| pick")):
        right.bar([i + offset for i in x], [r[key] for r in results], width=0.25, label=label)
    right.set_xticks(list(x), [r["concept"] for r in results], rotation=45, ha="right", fontsize=8)
    right.set(ylabel="keyword rate (best fluent coefficient)", title="steering score at the chosen layer")
    right.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def report(results: list[dict], args, out: Path) -> str:
    columns = ["concept", "attribution_layer", "act_layer", "sweep_best_layer", "score_at_attribution",
               "score_at_act", "best_score", "rank_in_sweep", "spearman"]
    n = len(results)
    exact = sum(r["attribution_layer"] == r["sweep_best_layer"] for r in results)
    mean_rank = statistics.mean(r["rank_in_sweep"] for r in results)
    tied = sum(r["score_at_attribution"] >= r["best_score"] for r in results)
    ratio = statistics.mean(r["score_at_attribution"] / r["best_score"] if r["best_score"] else 1.0 for r in results)
    lines = [f"# Attribution-chosen layer vs the sweep's best ({args.model})\n",
             "\nCommand: `OMP_NUM_THREADS=2 .venv/bin/python benchmarks/attribution_layers.py "
             f"{' '.join(sys.argv[1:])}`"
             f"\n\n", markdown(results, columns),
             f"\ngrad . v picked the sweep's best layer for {exact}/{n} concepts and a layer scoring as well as the "
             f"best for {tied}/{n}; its layer reached on average "
             f"{ratio:.2f} of the best layer's score (mean rank {mean_rank:.1f}"
             f" of {len(results[0]['swept'])} layers). Attribution took "
             f"{statistics.mean(r['attribution_seconds'] for r in results):.1f} s per concept.\n",
             "\n![chosen layers](attribution_layers.png)\n"]
    return "".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--concepts", help="JSON file {'concepts': [...]} (default: the suite, else the personas)")
    parser.add_argument("--limit", type=int, default=8, help="number of concepts")
    parser.add_argument("--layers", help="comma-separated block indices (default: every 2nd layer)")
    parser.add_argument("--coefs", default="1,2,4", help="steered coefficients (x the DiffMean class separation)")
    parser.add_argument("--questions", type=int, default=16, help="training questions per concept")
    parser.add_argument("--prompts", type=int, default=10, help="evaluation prompts")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per sweep generation")
    parser.add_argument("--train-tokens", type=int, default=48, help="new tokens per training answer")
    parser.add_argument("--max-ppl-ratio", type=float, default=5.0)
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--quick", action="store_true", help="5 concepts, 3 layers, 4 prompts, short answers")
    args = parser.parse_args()
    if args.quick:
        args.limit, args.questions, args.prompts, args.tokens, args.train_tokens, args.coefs = 5, 6, 4, 12, 24, "2,4"
    return args


def main() -> None:
    args = parse_args()
    model, tokenizer = load_model(args.model)
    n = TextModality().n_layers(model)
    layers = ([int(x) for x in args.layers.split(",")] if args.layers else
              [n // 4, n // 2, 3 * n // 4] if args.quick else list(range(0, n, 2)))
    negatives = persona_answers(model, tokenizer, TRAIN_QUESTIONS[: args.questions], "", args.train_tokens)
    concepts = load_concepts(args.concepts)[: args.limit]
    results = [run_concept(model, tokenizer, c, negatives, layers, args) for c in concepts]
    out = Path(args.out)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    write_text_atomic(out / "results.json", json.dumps({"args": settings, "results": results}, indent=1))
    plot(results, out / "attribution_layers.png")
    text = report(results, args, out)
    write_text_atomic(out / "README.md", text)
    print(text)


if __name__ == "__main__":
    main()
