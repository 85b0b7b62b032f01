"""Sweeps of coefficients x layers on a prompt set, scored for concept and fluency, as a table and a plot.

Every coefficient of one prompt chunk runs as a single batched generate (one row per coefficient). ``sweep.md``
defines each of its columns and shows sample texts per cell, so it reads without this code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from polysteer.direction import Direction
from polysteer.hookpoints import HookPoint
from polysteer.io import atomic_write
from polysteer.modalities.text.evaluators.judges import ConceptSimilarity, KeywordJudge, Perplexity, distinct_ratio
from polysteer.modalities.text.generation import generate
from polysteer.progress import TokenTicks

#: What each column of the summary table means, as written into ``sweep.md``.
COLUMNS = {
    "hook_point": "where the direction is added: `text.blocks.{i}.resid_post` is the residual stream after block i.",
    "coef": "steering coefficient: the added vector is coef x the direction file's scale for that layer "
            "(0 = unsteered).",
    "n": "texts in the cell: one generation per prompt.",
    "perplexity": "**median** over the cell's texts of each text's perplexity under the *unsteered* model, given "
                  "its prompt (lower = more fluent; a median because a few broken texts reach huge values).",
    "distinct": "mean share of distinct word 3-grams per text: 1 = no repetition, near 0 = the text loops.",
    "concept": "mean cosine similarity (MiniLM sentence embeddings) between each text and the --concept "
               "description: higher = more on-concept (unrelated text scores about 0-0.2).",
    "keyword": "share of texts that mention any --keywords word (whole word, plurals count), from 0 to 1.",
}


def sweep_direction(model, tokenizer, direction: Direction, prompts, coefs, hook_points, max_new_tokens=48,
                    rows_per_batch=32, progress: bool = True):
    """Generate for every (hook point, coefficient, prompt); returns rows of dicts with the texts.

    One progress bar counts every text of every cell, advancing token by token within each batched generate.
    """
    per_chunk = max(1, rows_per_batch // len(coefs))
    results = []
    total = len(hook_points) * len(prompts) * len(coefs)
    with tqdm(total=total * max_new_tokens, desc="sweep", unit="token", disable=not progress) as bar:
        for hp in hook_points:
            for start in range(0, len(prompts), per_chunk):
                chunk = prompts[start : start + per_chunk]
                rows = [(p, c) for p in chunk for c in coefs]
                bar.set_postfix_str(f"{hp}, prompts {start + 1}-{start + len(chunk)} of {len(prompts)}")
                plan = direction.to_plan([c for _, c in rows], hook_points=[hp])
                with TokenTicks(model, bar, len(rows)):
                    texts = generate(model, tokenizer, [p for p, _ in rows], plan, max_new_tokens=max_new_tokens,
                                     batch_size=len(rows), progress=False)
                results += [{"hook_point": hp, "coef": c, "prompt": p, "text": t} for (p, c), t in zip(rows, texts)]
                bar.update(len(results) * max_new_tokens - bar.n)  # rows that stopped before max_new_tokens
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
    for (hp, coef), rs in sorted(groups.items(), key=lambda kv: (_layer_first(kv[0][0]), kv[0][1])):
        entry = {"hook_point": hp, "coef": coef, "n": len(rs),
                 "perplexity": float(torch.tensor([r["perplexity"] for r in rs]).median()),
                 "distinct": sum(r["distinct"] for r in rs) / len(rs)}
        for key in ("concept", "keyword"):
            if key in rs[0]:
                entry[key] = sum(r[key] for r in rs) / len(rs)
        table.append(entry)
    return table


def _layer_first(hook_point: str) -> tuple:
    """Sort key: block 8 before block 12 (not as strings), then the full name."""
    return HookPoint.parse(hook_point).layer, hook_point


def markdown_table(table: list[dict]) -> str:
    keys = list(table[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in table:
        cells = (f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]) for k in keys)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sweep_markdown(table: list[dict], rows: list[dict], context: dict[str, str], samples: int = 2) -> str:
    """The whole ``sweep.md``: what was run, the table, every column's definition and sample texts per cell.

    Args:
        table: :func:`summarize` output.
        rows: the scored rows (with prompts and texts).
        context: labelled facts about the run (direction, model, prompts, ...), listed first.
        samples: texts shown per cell, for the same first prompts in every cell.
    """
    parts = ["# Steering sweep\n", *(f"- {label}: {value}" for label, value in context.items()),
             "\n## Results\n", markdown_table(table), "## Columns\n"]
    parts += [f"- `{key}`: {COLUMNS[key]}" for key in table[0] if key in COLUMNS]
    if samples:
        parts.append(f"\n## Sample texts (first {samples} prompt(s) of each cell)\n")
        for entry in table:
            parts.append(f"### {entry['hook_point']}, coef {entry['coef']:g}\n")
            cell = [r for r in rows if r["hook_point"] == entry["hook_point"] and r["coef"] == entry["coef"]]
            parts += [f"- *{_one_line(r['prompt'])}* -> {_one_line(r['text']) or '(empty)'}"
                      for r in cell[:samples]]
            parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def _one_line(text: str) -> str:
    """A text on one markdown line: whitespace collapsed, markdown's emphasis and table characters escaped."""
    flat = " ".join(text.split())
    for char in "\\*_|`<":
        flat = flat.replace(char, "\\" + char)
    return flat


def _plain_numbers(ax) -> None:
    """Log-axis ticks as plain numbers (4, 6, 10, 20), not 4x10^0; minor ticks labelled on narrow ranges only."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda x, _: f"{x:g}")
    low, high = ax.get_xlim()
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain if high / max(low, 1e-12) < 30 else NullFormatter())


def plot(table: list[dict], path: Path, score_key: str) -> None:
    """Concept score vs perplexity, one line per hook point, points labelled by coefficient."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for hp in sorted({r["hook_point"] for r in table}, key=_layer_first):
        rows = [r for r in table if r["hook_point"] == hp]
        ax.plot([r["perplexity"] for r in rows], [r[score_key] for r in rows], marker="o", label=hp)
        for r in rows:
            ax.annotate(f"coef {r['coef']:g}", (r["perplexity"], r[score_key]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    _plain_numbers(ax)
    ax.set_xlabel("median perplexity under the unsteered model (log scale; lower = more fluent)")
    ax.set_ylabel({"concept": "concept: mean similarity to the --concept text",
                   "keyword": "keyword: share of texts with a --keywords word"}.get(score_key, score_key))
    ax.set_title("steering sweep: concept vs fluency (labels: coefficient)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
