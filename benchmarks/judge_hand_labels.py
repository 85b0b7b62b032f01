"""How AxBench-lite's 0-2 concept judge agrees with a labelled sample of its report outputs.

``results/axbench_lite/hand_labels.json`` holds 120 report outputs (15 from each row of the power run of
ae2ff92, drawn with ``random.Random(0)``), each labelled 0-2 for its concept with AxBench's concept rubric by a
reader who saw only the concept's description and the text: not the method, the instruction or any judge's score.
The reader was an AI agent reading each text, not a human annotator, and not the judge under test. This script
scores the same texts with the concept judge (:class:`ConceptScore`, calibrated per concept as ``axbench_lite.py``
does) and the keyword label, and writes the agreement to ``results/axbench_lite/hand_labels.md``.

Usage::

    .venv/bin/python benchmarks/judge_hand_labels.py
"""

from __future__ import annotations

import json

from common import RESULTS, markdown
from concept_suite import load_suite
from power_stats import judge_agreement
from sklearn.metrics import cohen_kappa_score

from polysteer import write_text_atomic
from polysteer.modalities.text.evaluators import ConceptScore, KeywordJudge

LABELS = RESULTS / "axbench_lite" / "hand_labels.json"


def judged(rows: list[dict]) -> list[dict]:
    """Each labelled row with the concept judge's score (``judge``) and the keyword label (``keyword``)."""
    suite = load_suite()
    concepts = {c.name: c for c in suite.concepts}
    for name in sorted({r["name"] for r in rows}):
        c = concepts[name]
        judge = ConceptScore.calibrated(c.description, c.heldout, suite.negatives(c))
        part = [r for r in rows if r["name"] == name]
        for r, score, hit in zip(part, judge.evaluate([r["text"] for r in part]),
                                 KeywordJudge(c.keywords).evaluate([r["text"] for r in part])):
            r["judge"], r["keyword"] = int(round(score)), bool(hit)
    return rows


def agreement(rows: list[dict]) -> dict:
    """Exact and binary (present / absent) agreement of the judge, and of keywords, with the labels."""
    labels, judge = [r["label"] for r in rows], [r["judge"] for r in rows]
    present = [label > 0 for label in labels]
    return {"n": len(rows), "exact": sum(a == b for a, b in zip(labels, judge)) / len(rows),
            "weighted kappa": float(cohen_kappa_score(labels, judge, weights="quadratic", labels=[0, 1, 2])),
            "judge > 0 vs label > 0": judge_agreement(judge, present),
            "keyword vs label > 0": judge_agreement([2 * int(r["keyword"]) for r in rows], present)}


def confusion(rows: list[dict]) -> list[dict]:
    return [{"label": a, **{f"judge {b}": sum(r["label"] == a and r["judge"] == b for r in rows) for b in (0, 1, 2)}}
            for a in (0, 1, 2)]


def main() -> None:
    rows = judged(json.loads(LABELS.read_text()))
    stats = agreement(rows)
    binary, keyword = stats["judge > 0 vs label > 0"], stats["keyword vs label > 0"]
    methods = {m: [r for r in rows if r["method"] == m] for m in sorted({r["method"] for r in rows})}
    per_method = [{"row": m, "n": len(g), "label mean": sum(r["label"] for r in g) / len(g),
                   "judge mean": sum(r["judge"] for r in g) / len(g)} for m, g in methods.items()]
    summary = (f"n = {stats['n']}: the judge gives the label's exact score on {stats['exact']:.3f} of texts "
               f"(quadratic-weighted kappa {stats['weighted kappa']:.3f}); present vs absent (score > 0): accuracy "
               f"{binary['accuracy']:.3f}, kappa {binary['kappa']:.3f}. Keyword hits against the same labels: "
               f"accuracy {keyword['accuracy']:.3f}, kappa {keyword['kappa']:.3f}.\n")
    text = ["# The concept judge against a labelled sample\n",
            "Command: `.venv/bin/python benchmarks/judge_hand_labels.py`. "
            + __doc__.split("\n\n")[1].replace("\n", " ") + "\n", summary,
            markdown(confusion(rows), ["label", "judge 0", "judge 1", "judge 2"]),
            "Per row of the power run (means over its 15 sampled texts):\n",
            markdown(per_method, ["row", "n", "label mean", "judge mean"])]
    write_text_atomic(LABELS.with_name("hand_labels.md"), "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
