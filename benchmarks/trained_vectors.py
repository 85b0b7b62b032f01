"""Trained steering vectors vs DiffMean at the same layer on SmolLM2-135M-Instruct ("Small Vectors, Big Effects").

For each concept: the persona answers of ``benchmarks/axbench_lite.py`` (cached) become supervised rows (question,
target = the concept answer, contrast = the plain answer); the ``trained`` finder learns one vector at the layer
through the frozen model; DiffMean is fitted on the same answers' pooled activations. Both are then run through the
AxBench-lite protocol: the factor (x the trained vector's norm, x DiffMean's class separation) is chosen on the
selection half and reported on the report half with the same judges.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/trained_vectors.py [--concepts 5] [--steps 60] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time

import axbench_lite as ax
import torch
from common import RESULTS, markdown
from concept_suite import load_suite

from polysteer import hook_point, make_finder, write_text_atomic
from polysteer.modalities.text import collect, load_model
from polysteer.modalities.text.trained import TrainedVector, TrainRow, rows_from_examples

OUT = RESULTS / "trained_vectors"


def fit(model, tokenizer, suite, positives, negatives, args) -> dict:
    """A trained vector and a DiffMean direction per concept, keyed like axbench_lite's fitted finders."""
    hp = hook_point(args.layer)
    X_neg = collect(model, tokenizer, negatives, [hp])[hp]
    fitted = {}
    for c in suite.concepts:
        rows = [TrainRow(r.prompt, _clip(r.target, args.target_words), _clip(r.contrast, args.target_words))
                for r in rows_from_examples(positives[c.name], negatives)]
        trained = TrainedVector(layers=[args.layer], steps=args.steps, lr=args.lr, batch_size=8, patience=3,
                                seed=0).fit_model(model, tokenizer, rows)
        fitted[c.name, "trained", hp] = trained
        fitted[c.name, "diffmean", hp] = make_finder("diffmean").fit(collect(model, tokenizer, positives[c.name],
                                                                             [hp])[hp], X_neg)
        print(f"{c.name}: trained |v| {trained.scale_:.2f}, cos with DiffMean "
              f"{float(trained.direction_ @ fitted[c.name, 'diffmean', hp].direction_):+.3f}", flush=True)
    return fitted


def _clip(text: str, words: int | None) -> str:
    """The first ``words`` words: the opening of an answer carries the concept, and half the tokens halve the cost."""
    return text if words is None else " ".join(text.split()[:words])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concepts", type=int, default=5)
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--target-words", type=int, help="train on the first N words of each answer (default: all)")
    parser.add_argument("--factors", default="0.5,1,2,4")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    ax_args = ax.parse_args(["--factors", args.factors, "--dtype", "float32"] + (["--quick"] if args.quick else []))
    if args.quick:
        args.concepts, args.steps = 1, 4
    start = time.time()
    torch.manual_seed(0)
    model, tokenizer = load_model()
    suite = load_suite().subset(limit=args.concepts)
    work = ax.cache_dir() / "axbench-lite"
    # own cache files (axbench_lite may be appending to its own at the same time), seeded with its generations
    cache, scores = ax.Cache(work / "trained-generations.jsonl"), ax.Cache(work / "trained-scores.jsonl")
    cache.texts = {**ax.Cache(work / "generations.jsonl").texts, **cache.texts}
    positives, negatives = ax.training_data(model, tokenizer, suite, cache, ax_args)
    fitted = fit(model, tokenizer, suite, positives, negatives, args)
    judges = ax.Judges(model, tokenizer, suite, cache, ax_args)
    selection = ax.generate_rows(model, tokenizer, ax.steering_jobs(suite, fitted, ax_args, "selection"), cache,
                                 ax_args, "selection half")
    judges.score(selection, scores)
    chosen = ax.choose_factors(selection)
    report = ax.generate_rows(model, tokenizer, ax.steering_jobs(suite, fitted, ax_args, "report", chosen), cache,
                              ax_args, "report half")
    judges.score(report, scores)
    write(args, suite, report, fitted, chosen, time.time() - start)


def write(args, suite, report, fitted, chosen, seconds) -> None:
    table = ax.summary(report, {}, chosen)
    per = [{"concept": c.name, **{f"{m} {k}": ax.mean([r for r in report if (r["name"], r["method"]) == (c.name, m)], k)
                                  for m in ("trained", "diffmean") for k in ("score", "concept", "fluency")},
            "cos(trained, diffmean)": float(fitted[c.name, "trained", hook_point(args.layer)].direction_
                                            @ fitted[c.name, "diffmean", hook_point(args.layer)].direction_)}
           for c in suite.concepts]
    out = OUT / "quick" if args.quick else OUT
    out.mkdir(parents=True, exist_ok=True)
    text = (f"# Trained steering vectors vs DiffMean on SmolLM2-135M-Instruct (layer {args.layer})\n\n"
            f"Command: `OMP_NUM_THREADS=2 .venv/bin/python benchmarks/trained_vectors.py {' '.join(sys.argv[1:])}` "
            f"({seconds / 60:.0f} min). Supervised objective, {args.steps} steps max (early stopping), lr {args.lr}, "
            f"{'whole answers' if args.target_words is None else f'first {args.target_words} words of each answer'}; "
            f"factors {args.factors} chosen on the selection half, reported on the report half (0-2 judges).\n\n"
            + markdown(table, list(table[0])) + "\n## Per concept\n\n" + markdown(per, list(per[0])))
    write_text_atomic(out / "README.md", text)
    print(text)


if __name__ == "__main__":
    main()
