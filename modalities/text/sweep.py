"""Sweeps of coefficients x layers on a prompt set, scored for concept and fluency, as a table and a plot.

Every coefficient of one prompt chunk runs as a single batched generate (one row per coefficient).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from polysteer.direction import Direction
from polysteer.io import atomic_write
from polysteer.modalities.text.evaluators.judges import ConceptSimilarity, KeywordJudge, Perplexity, distinct_ratio
from polysteer.modalities.text.generation import generate


def sweep_direction(model, tokenizer, direction: Direction, prompts, coefs, hook_points, max_new_tokens=48,
                    rows_per_batch=32):
    """Generate for every (hook point, coefficient, prompt); returns rows of dicts with the texts."""
    per_chunk = max(1, rows_per_batch // len(coefs))
    results = []
    for hp in tqdm(hook_points, desc="layers", leave=False):
        for start in range(0, len(prompts), per_chunk):
            chunk = prompts[start : start + per_chunk]
            rows = [(p, c) for p in chunk for c in coefs]
            plan = direction.to_plan([c for _, c in rows], hook_points=[hp])
            texts = generate(model, tokenizer, [p for p, _ in rows], plan, max_new_tokens=max_new_tokens,
                             batch_size=len(rows), progress=False)
            results += [{"hook_point": hp, "coef": c, "prompt": p, "text": t} for (p, c), t in zip(rows, texts)]
    return results


def score_rows(rows, model, tokenizer, concept: str | None, keywords):
    """Add concept similarity, keyword hit, perplexity and distinct-3gram ratio to each row."""
    texts = [r["text"] for r in rows]
    if concept:
        for r, s in zip(rows, ConceptSimilarity(concept).evaluate(texts)):
            r["concept"] = s
    if keywords:
        for r, s in zip(rows, KeywordJudge(keywords).evaluate(texts)):
            r["keyword"] = s
    ppl = Perplexity(model, tokenizer).evaluate(texts, prompts=[r["prompt"] for r in rows])
    for r, p in zip(rows, ppl):
        r["perplexity"], r["distinct"] = p, distinct_ratio(r["text"])
    return rows


def summarize(rows) -> list[dict]:
    """Mean of each score per (hook point, coefficient); perplexity as a median (it has outliers)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["hook_point"], r["coef"]), []).append(r)
    table = []
    for (hp, coef), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        entry = {"hook_point": hp, "coef": coef, "n": len(rs),
                 "perplexity": float(torch.tensor([r["perplexity"] for r in rs]).median()),
                 "distinct": sum(r["distinct"] for r in rs) / len(rs)}
        for key in ("concept", "keyword"):
            if key in rs[0]:
                entry[key] = sum(r[key] for r in rs) / len(rs)
        table.append(entry)
    return table


def markdown_table(table: list[dict]) -> str:
    keys = list(table[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in table:
        cells = (f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]) for k in keys)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: list[dict], path: Path, score_key: str) -> None:
    """Concept score vs perplexity, one line per hook point, points labelled by coefficient."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for hp in sorted({r["hook_point"] for r in table}):
        rows = [r for r in table if r["hook_point"] == hp]
        ax.plot([r["perplexity"] for r in rows], [r[score_key] for r in rows], marker="o", label=hp)
        for r in rows:
            ax.annotate(f"{r['coef']:g}", (r["perplexity"], r[score_key]), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("median perplexity under the unsteered model (lower = more fluent)")
    ax.set_ylabel(score_key)
    ax.set_title("steering sweep: concept vs fluency")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
