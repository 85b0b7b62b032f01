"""Trained steering vectors (supervised, RePS, BiPO) vs DiffMean at the same layer on SmolLM2-135M-Instruct.

For each concept: the persona answers of ``benchmarks/axbench_lite.py`` (cached) become rows (question, target = the
concept answer, contrast = the plain answer); the ``trained`` finder learns one vector at the layer through the
frozen model with each ``--objective``: ``supervised`` (likelihood of the target, bounded contrast term), ``reps``
(RePS, reference-free bidirectional preference) and ``bipo`` (BiPO, DPO against the unsteered model, bidirectional).
DiffMean is fitted on the same answers' pooled activations. All are then run through the AxBench-lite protocol: the
factor (x the trained vector's norm, x DiffMean's class separation) is chosen on the selection half and reported on
the report half with the same judges. The bidirectional check: mean per-token log p(target) - log p(contrast) on the
first 16 rows, unsteered and with +v / -v.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/trained_vectors.py [--concepts 5] [--steps 60]
        [--objective supervised,reps,bipo] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext

import axbench_lite as ax
import torch
from common import RESULTS, markdown
from concept_suite import load_suite
from power_stats import bootstrap_ci, paired_bootstrap_ci, signed_ci, with_ci

from polysteer import Intervention, hook_point, make_finder, steer, write_text_atomic
from polysteer.modalities.text import collect, load_model
from polysteer.modalities.text.trained import Supervised, TrainedVector, TrainRow, rows_from_examples

OUT = RESULTS / "trained_vectors"
OBJECTIVES = {"supervised": {"objective": "supervised"},
              "reps": {"objective": "preference", "preference": "reps"},
              "bipo": {"objective": "preference", "preference": "bipo"}}


def fit(model, tokenizer, suite, positives, negatives, args) -> tuple[dict, dict]:
    """Trained vectors and a DiffMean direction per concept (keyed like axbench_lite), and per-vector facts."""
    hp = hook_point(args.layer)
    X_neg = collect(model, tokenizer, negatives, [hp])[hp]
    fitted, facts = {}, {}
    for c in suite.concepts:
        diffmean = make_finder("diffmean").fit(collect(model, tokenizer, positives[c.name], [hp])[hp], X_neg)
        fitted[c.name, "diffmean", hp] = diffmean
        rows = [TrainRow(r.prompt, _clip(r.target, args.target_words), _clip(r.contrast, args.target_words))
                for r in rows_from_examples(positives[c.name], negatives)]
        facts[c.name, "diffmean"] = {"|v|": diffmean.scale_, "cos(v, diffmean)": 1.0, "steps": "-", "train s": "-",
                                     "logp gap -v / 0 / +v": _gaps(model, tokenizer, diffmean, rows[:16], hp)}
        for name in args.objective:
            start = time.time()
            trained = TrainedVector(layers=[args.layer], steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                                    patience=3, seed=0, **OBJECTIVES[name]).fit_model(model, tokenizer, rows)
            fitted[c.name, name, hp] = trained
            facts[c.name, name] = {"|v|": trained.scale_, "cos(v, diffmean)": float(trained.direction_
                                                                                   @ diffmean.direction_),
                                   "steps": trained.n_steps_, "train s": time.time() - start,
                                   "logp gap -v / 0 / +v": _gaps(model, tokenizer, trained, rows[:16], hp)}
            print(f"{c.name} {name}: {facts[c.name, name]}", flush=True)
    return fitted, facts


@torch.no_grad()
def _gaps(model, tokenizer, trained, rows, hp) -> str:
    """Mean per-token log p(target) - log p(contrast) with -v, no vector and +v (the bidirectional check).

    ``v`` is the trained vector, or DiffMean's unit direction times its class separation.
    """
    scorer, gaps = Supervised(model, tokenizer), []
    for sign in (-1.0, 0.0, 1.0):
        with steer(model, Intervention(trained.direction_, hp, sign * trained.scale_)) if sign else nullcontext():
            target, contrast = scorer.terms(rows)
        gaps.append(float(target.mean() - contrast.mean()))
    return " / ".join(f"{g:+.2f}" for g in gaps)


def _clip(text: str, words: int | None) -> str:
    """The first ``words`` words: the opening of an answer carries the concept, and half the tokens halve the cost."""
    return text if words is None else " ".join(text.split()[:words])


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concepts", type=int, default=5)
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--objective", default="supervised,reps,bipo", help=f"a list of {','.join(OBJECTIVES)}")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=8, help="training rows per step")
    parser.add_argument("--target-words", type=int, help="train on the first N words of each answer (default: all)")
    parser.add_argument("--factors", default="0.5,1,2,4")
    parser.add_argument("--report", type=int, default=3, help="report-half instructions per concept")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    args.objective = args.objective.split(",")
    if set(args.objective) - set(OBJECTIVES):
        parser.error(f"unknown --objective {sorted(set(args.objective) - set(OBJECTIVES))}; use {list(OBJECTIVES)}")
    if args.quick:
        args.concepts, args.steps = 1, 4
    return args


def main() -> None:
    args = parse_args()
    ax_args = ax.parse_args(["--factors", args.factors, "--dtype", "float32", "--report", str(args.report)]
                            + (["--quick"] if args.quick else []))
    args.report = ax_args.report
    start = time.time()
    torch.manual_seed(0)
    model, tokenizer = load_model()
    suite = load_suite().subset(limit=args.concepts)
    work = ax.cache_dir() / "axbench-lite"
    # own cache files (axbench_lite may be appending to its own at the same time), seeded with its generations
    cache, scores = ax.Cache(work / "trained-generations.jsonl"), ax.Cache(work / "trained-scores.jsonl")
    cache.texts = {**ax.Cache(work / "generations.jsonl").texts, **cache.texts}
    positives, negatives = ax.training_data(model, tokenizer, suite, cache, ax_args)
    fitted, facts = fit(model, tokenizer, suite, positives, negatives, args)
    judges = ax.Judges(model, tokenizer, suite, cache, ax_args)
    selection = ax.generate_rows(model, tokenizer, ax.steering_jobs(suite, fitted, ax_args, "selection"), cache,
                                 ax_args, "selection half")
    judges.score(selection, scores)
    chosen = ax.choose_factors(selection)
    report = ax.generate_rows(model, tokenizer, ax.steering_jobs(suite, fitted, ax_args, "report", chosen)
                              + ax.reference_jobs(suite, ax_args), cache, ax_args, "report half")
    judges.score(report, scores)
    write(args, suite, report, facts, chosen, time.time() - start)


def write(args, suite, report, facts, chosen, seconds) -> None:
    table = ax.summary(report, {}, chosen)
    for row in table:
        row["score 95% CI"] = _ci([r["score"] for r in report if r["method"] == row["method"]])
    out = OUT / "quick" if args.quick else OUT
    out.mkdir(parents=True, exist_ok=True)
    per = per_concept(args, suite, report, facts, chosen)
    text = (f"# Trained steering vectors vs DiffMean on SmolLM2-135M-Instruct (layer {args.layer})\n\n"
            f"Command: `OMP_NUM_THREADS={torch.get_num_threads()} .venv/bin/python benchmarks/trained_vectors.py "
            f"{' '.join(sys.argv[1:])}` ({seconds / 60:.0f} min). Objectives {', '.join(args.objective)}: "
            f"{args.steps} steps max (early stopping on a held-out fifth, patience 3), lr {args.lr}, "
            f"batch {args.batch_size}, "
            f"{'whole answers' if args.target_words is None else f'first {args.target_words} words of each answer'}"
            f"; factors {args.factors} (x |v|, x DiffMean's class separation) chosen on the selection half, "
            f"reported on {args.report} report instructions per concept (0-2 judges; 95% intervals are percentile "
            "bootstraps over the generations). `unsteered` and the prompting rows (the concept instruction as a "
            "system prompt or appended to the question) answer the same report instructions.\n\n"
            + markdown(table, list(table[0])) + "\n## Against DiffMean (paired by concept and instruction)\n\n"
            + markdown(paired(report, args.objective), ["method", "score - diffmean", "concept - diffmean",
                                                        "fluency - diffmean"])
            + "\n## Per concept\n\n`logp gap`: mean per-token log p(concept answer) - log p(plain answer) on the "
            "first 16 training rows, with -v, no vector and +v (a bidirectional vector lowers it with -v and raises it "
            "with +v; DiffMean's v is its direction times its class separation).\n\n"
            + markdown(per, list(dict.fromkeys(k for row in per for k in row))))
    write_text_atomic(out / "README.md", text)
    print(text)


def per_concept(args, suite, report, facts, chosen) -> list[dict]:
    """One row per (concept, method): report scores at the chosen factor and the vector's facts."""
    hp, per = hook_point(args.layer), []
    for c in suite.concepts:
        for method in ["diffmean", *args.objective]:
            rows = [r for r in report if (r["name"], r["method"]) == (c.name, method)]
            row = {"concept": c.name, "method": method, "factor": chosen[c.name, method, hp],
                   "score": ax.mean(rows, "score"), "concept judge": ax.mean(rows, "concept"),
                   "fluency judge": ax.mean(rows, "fluency")}
            per.append({**row, **facts[c.name, method]})
    return per


def paired(report, objectives) -> list[dict]:
    """Each trained method minus DiffMean on the same (concept, instruction) samples, with a paired bootstrap."""
    def by_sample(method, part):
        return {(r["name"], r["task"]): r[part] for r in report if r["method"] == method}

    return [{"method": m, **{f"{part} - diffmean": signed_ci(*paired_bootstrap_ci(by_sample(m, part),
                                                                                 by_sample("diffmean", part)))
                             for part in ("score", "concept", "fluency")}} for m in objectives]


def _ci(values: list[float]) -> str:
    return with_ci(*bootstrap_ci(values)) if len(values) > 1 else "-"


if __name__ == "__main__":
    main()
