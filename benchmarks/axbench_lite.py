"""AxBench-lite on SmolLM2-135M-Instruct: every method, two layers, the concept suite, local 0-2 judges.

For each concept of ``benchmarks/concepts/`` and each method (prompting with a system prompt or an appended
instruction, DiffMean, PCA, probe, RFM, the best contrast SAE feature and the best output-score-filtered one):

1. training data: the model answers the 64 neutral questions with the concept's instruction appended, read back
   without it (positives), against its plain answers (negatives); activations mean-pooled over answer tokens
   (every answer token a row for the SAE contrast finder, its ``preferred_pooling``);
2. fit the direction per layer; concept-detection AUROC on the held-out texts (token scores mean-pooled per text);
3. steer: generate for ``--selection`` instructions of the selection half at every factor (factor x the
   direction's class separation, so one grid fits every method), score with the AxBench rule (harmonic mean of
   concept, instruction and fluency, each 0-2; :mod:`polysteer.modalities.text.evaluators`), pick the best factor;
4. report: ``--report`` instructions of the report half at the chosen factor.

All rows of a phase run as batched generates whose rows carry different directions and factors
(:func:`polysteer.stack_plans`). Generations and activations are cached, so an interrupted run resumes.

Sizing (the full run should take about an hour on 2 CPU cores, where SmolLM2 generates ~60-90 tokens/s at batch
48): 24 concepts x 10 (method, layer) pairs x (2 selection instructions x 6 factors + 3 report instructions) x 64
new tokens, plus 1,600 persona answers and the baselines: about 330k generated tokens.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/axbench_lite.py            # the full run (see README.md)
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/axbench_lite.py --quick    # 2 concepts, 2 factors, smoke run
    # only the SAE rows, without the prompting baselines (--questions N, --out DIR shrink and redirect a run):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/axbench_lite.py --layers 12 --methods sae,sae_filtered --no-prompting
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from common import RESULTS, markdown
from concept_suite import Suite, load_suite
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from polysteer import Intervention, hook_point, make_finder, stack_plans, write_text_atomic
from polysteer.modalities.text import Example, cache_dir, collect, generate, load_model, token_labels
from polysteer.modalities.text.evaluators import AxBenchScore, ConceptScore, FluencyScore, InstructionScore
from polysteer.modalities.text.sae import SHIPPED_SAE

OUT = RESULTS / "axbench_lite"
FINDERS = {"diffmean": ("diffmean", {}), "pca": ("pca_diff", {}), "probe": ("probe", {}), "rfm": ("rfm", {}),
           "sae": ("sae_contrast", {"sae": str(SHIPPED_SAE)}),
           "sae_filtered": ("sae_contrast", {"sae": str(SHIPPED_SAE), "score_filter": "output"})}
SAE_METHODS = ("sae", "sae_filtered")
PROMPTING = ("prompt_system", "prompt_appended")


@dataclass
class Job:
    """One generation: its cache key, the user prompt, an optional system prompt and the row's plan."""

    key: str
    prompt: str
    system: str | None = None
    plan: Intervention | None = None


class Cache:
    """JSON values keyed by a hash of what made them, appended to a JSONL file (resumable)."""

    def __init__(self, path: Path):
        self.path, self.texts = path, {}
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut by an interrupted run
                    continue
                self.texts[row["key"]] = row["value"]

    def add(self, rows: list[tuple[str, object]]) -> None:
        with self.path.open("a") as f:
            f.writelines(json.dumps({"key": k, "value": v}) + "\n" for k, v in rows)
        self.texts.update(rows)


def key(*parts) -> str:
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:20]


def fingerprint(plan: Intervention) -> str:
    """A digest of the steered vector (4 decimals), so a re-fitted direction never reuses stale generations."""
    vector = (torch.as_tensor(plan.direction).float() * plan.coefficient).numpy().round(4)
    return hashlib.sha1(vector.tobytes()).hexdigest()[:12]


def run_jobs(model, tokenizer, jobs: list[Job], cache: Cache, args, desc: str) -> list[str]:
    """Generate what the cache lacks in batches of ``args.batch`` rows (one system prompt per batch)."""
    todo = {j.key: j for j in jobs if j.key not in cache.texts}
    groups: dict[str | None, list[Job]] = {}
    for job in todo.values():
        groups.setdefault(job.system, []).append(job)
    batches = [(s, js[i : i + args.batch]) for s, js in groups.items() for i in range(0, len(js), args.batch)]
    for system, batch in tqdm(batches, desc=desc):
        plans = [j.plan for j in batch]
        plan = stack_plans(plans) if any(p is not None for p in plans) else None
        texts = generate(model, tokenizer, [j.prompt for j in batch], plan, max_new_tokens=args.tokens,
                         batch_size=len(batch), system=system, progress=False)
        cache.add([(j.key, t) for j, t in zip(batch, texts)])
    return [cache.texts[j.key] for j in jobs]


def rotate(items: tuple[str, ...], index: int, n: int) -> list[str]:
    """``n`` items starting at ``index * n`` (wrapping), so concepts share out the instruction halves."""
    return [items[(index * n + i) % len(items)] for i in range(n)]


def training_data(model, tokenizer, suite: Suite, cache, args) -> tuple[dict, list[Example]]:
    """Persona answers per concept (positives) and the plain answers (negatives), read back without persona."""
    questions = suite.questions[: args.questions]
    plain = run_jobs(model, tokenizer, [Job(key("train", "", q, args.tokens), q) for q in questions],
                     cache, args, "plain answers")
    negatives = [Example(a.strip() or ".", prompt=q) for q, a in zip(questions, plain)]
    jobs = [Job(key("train", c.name, q, args.tokens), f"{q} {c.instruction}")
            for c in suite.concepts for q in questions]
    answers = iter(run_jobs(model, tokenizer, jobs, cache, args, "persona answers"))
    positives = {c.name: [Example(next(answers).strip() or ".", prompt=q) for q in questions]
                 for c in suite.concepts}
    return positives, negatives


def fit_directions(model, tokenizer, suite, positives, negatives, args) -> dict:
    """Fitted finders keyed by (concept, method, hook point)."""
    points = [hook_point(layer) for layer in args.layers]
    acts_dir = str(cache_dir() / "axbench-lite" / "activations")
    poolings = {getattr(make_finder(FINDERS[m][0], **FINDERS[m][1]), "preferred_pooling", "mean")
                for m in args.methods}  # sae_contrast reads every answer token, the others mean-pooled answers
    X_neg = {p: collect(model, tokenizer, negatives, points, p, cache_dir=acts_dir) for p in poolings}
    fitted = {}
    for c in tqdm(suite.concepts, desc="fitting"):
        X_pos = {p: collect(model, tokenizer, positives[c.name], points, p, cache_dir=acts_dir) for p in poolings}
        for method in args.methods:
            name, params = FINDERS[method]
            for hp in points:
                if method in SAE_METHODS and hp != args.sae_hook_point:
                    continue
                if method == "sae_filtered":
                    params = {**params, "threshold": args.output_threshold}
                finder = make_finder(name, **params)
                pooling = getattr(finder, "preferred_pooling", "mean")
                fitted[c.name, method, hp] = finder.fit(X_pos[pooling][hp], X_neg[pooling][hp])
    return fitted


def detection(model, tokenizer, suite: Suite, fitted: dict, args) -> dict:
    """AUROC per (concept, method, hook point): token scores mean-pooled per held-out text."""
    texts = [t for c in suite.concepts for t in c.heldout] + list(suite.neutral)
    points = sorted({hp for _, _, hp in fitted})
    acts = collect(model, tokenizer, texts, points, pooling="tokens",
                   cache_dir=str(cache_dir() / "axbench-lite" / "activations"))
    owner = token_labels(tokenizer, texts, list(range(len(texts))))
    counts = torch.bincount(owner, minlength=len(texts)).float()
    index = {t: i for i, t in enumerate(texts)}
    aurocs = {}
    for (name, method, hp), finder in fitted.items():
        concept = next(c for c in suite.concepts if c.name == name)
        per_text = torch.zeros(len(texts)).index_add_(0, owner, finder.score(acts[hp]).float()) / counts
        pos, neg = list(concept.heldout), suite.negatives(concept)
        scores = per_text[[index[t] for t in pos + neg]]
        aurocs[name, method, hp] = float(roc_auc_score([1] * len(pos) + [0] * len(neg), scores.numpy()))
    return aurocs


def steering_jobs(suite: Suite, fitted: dict, args, half: str, chosen: dict | None = None) -> list[tuple[dict, Job]]:
    """(row, job) pairs: every factor on the selection half, or each chosen factor on the report half."""
    pairs = []
    for i, c in enumerate(suite.concepts):
        instructions = rotate(suite.selection, i, args.selection) if half == "selection" else rotate(
            suite.report, i, args.report)
        for (name, method, hp), finder in fitted.items():
            if name != c.name:
                continue
            factors = args.factors if chosen is None else [chosen[name, method, hp]]
            for factor in factors:
                plan = Intervention(finder.direction_, hp, factor * float(finder.scale_))
                for ins in instructions:
                    row = {"name": name, "method": method, "hook_point": hp, "factor": factor, "instruction": ins}
                    job_key = key("steer", name, method, hp, factor, ins, args.tokens, args.dtype, fingerprint(plan))
                    pairs.append((row, Job(job_key, ins, None, plan)))
    return pairs


def reference_jobs(suite: Suite, args) -> list[tuple[dict, Job]]:
    """Unsteered answers and the two prompting baselines on each concept's report instructions."""
    pairs = []
    for i, c in enumerate(suite.concepts):
        for ins in rotate(suite.report, i, args.report):
            row = {"name": c.name, "hook_point": "-", "factor": 0.0, "instruction": ins}
            pairs.append(({**row, "method": "unsteered"}, Job(key("base", ins, args.tokens, args.dtype), ins)))
            if args.no_prompting:
                continue
            pairs += [({**row, "method": "prompt_system"},
                       Job(key("prompt_system", c.name, ins, args.tokens, args.dtype), ins, c.instruction)),
                      ({**row, "method": "prompt_appended"},
                       Job(key("prompt_appended", c.name, ins, args.tokens, args.dtype), f"{ins} {c.instruction}"))]
    return pairs


class Judges:
    """The AxBench-style judges: instruction and fluency calibrated on unsteered answers, concept per concept."""

    def __init__(self, model, tokenizer, suite: Suite, cache: Cache, args, generator=None):
        instructions = list(suite.selection + suite.report)
        answers = run_jobs(generator or model, tokenizer, [Job(key("base", i, args.tokens, args.dtype), i)
                                                           for i in instructions], cache, args, "unsteered answers")
        self.instruction = InstructionScore.calibrated(instructions, answers)
        self.fluency = FluencyScore.calibrated(model, tokenizer, instructions, answers)
        self.concepts = {c.name: ConceptScore.calibrated(c.description, c.heldout, suite.negatives(c))
                         for c in suite.concepts}

    def score(self, rows: list[dict], scores: Cache) -> None:
        """Add concept / instruction / fluency / score to each row (cached by the row's generation key)."""
        todo = [r for r in rows if r["key"] not in scores.texts]
        for name in tqdm(sorted({r["name"] for r in todo}), desc="judging"):
            part = [r for r in todo if r["name"] == name]
            texts, prompts = [r["text"] for r in part], [r["instruction"] for r in part]
            judge = AxBenchScore(self.concepts[name], self.instruction, self.fluency)
            scores.add([(r["key"], s) for r, s in zip(part, judge.breakdown(texts, prompts))])
        for r in rows:
            r.update(scores.texts[r["key"]])


def generate_rows(model, tokenizer, pairs, cache: Cache, args, desc: str) -> list[dict]:
    texts = run_jobs(model, tokenizer, [job for _, job in pairs], cache, args, desc)
    return [{**row, "key": job.key, "text": t} for (row, job), t in zip(pairs, texts)]


def choose_factors(rows: list[dict]) -> dict:
    """The factor with the best mean score per (concept, method, hook point); ties go to the smaller factor."""
    means: dict[tuple, dict[float, list[float]]] = {}
    for r in rows:
        means.setdefault((r["name"], r["method"], r["hook_point"]), {}).setdefault(r["factor"], []).append(r["score"])
    return {k: max(sorted(f), key=lambda x: statistics.mean(f[x])) for k, f in means.items()}


def mean(rows: list[dict], field: str) -> float:
    return statistics.mean(r[field] for r in rows) if rows else float("nan")


def summary(report: list[dict], aurocs: dict, chosen: dict) -> list[dict]:
    """One row per (method, hook point): report-half means, median chosen factor, mean detection AUROC."""
    table = []
    for method, hp in dict.fromkeys((r["method"], r["hook_point"]) for r in report):
        rows = [r for r in report if (r["method"], r["hook_point"]) == (method, hp)]
        aucs = [a for (_, m, h), a in aurocs.items() if (m, h) == (method, hp)]
        factors = [f for (_, m, h), f in chosen.items() if (m, h) == (method, hp)]
        table.append({"method": method, "layer": hp.split(".")[2] if hp != "-" else "-",
                      "score": mean(rows, "score"), "concept": mean(rows, "concept"),
                      "instruction": mean(rows, "instruction"), "fluency": mean(rows, "fluency"),
                      "factor": f"{statistics.median(factors):g}" if factors else "-",
                      "AUROC": f"{statistics.mean(aucs):.3f}" if aucs else "-", "n": len(rows)})
    return sorted(table, key=lambda t: -t["score"])


def per_concept(report: list[dict], columns: list[tuple[str, str]]) -> list[dict]:
    """Report-half score per concept for each (method, hook point)."""
    table = []
    for name in dict.fromkeys(r["name"] for r in report):
        row = {"concept": name}
        for method, hp in columns:
            rows = [r for r in report if (r["name"], r["method"], r["hook_point"]) == (name, method, hp)]
            row[label(method, hp)] = mean(rows, "score")
        table.append(row)
    return table


def auroc_table(aurocs: dict) -> tuple[list[dict], list[str]]:
    """Detection AUROC per concept (rows) and (method, layer) (columns), with a mean row."""
    columns = [label(m, hp) for m, hp in dict.fromkeys((m, hp) for _, m, hp in aurocs)]
    table = {}
    for (name, method, hp), value in aurocs.items():
        table.setdefault(name, {"concept": name})[label(method, hp)] = value
    rows = list(table.values())
    rows.append({"concept": "mean", **{c: statistics.mean(r[c] for r in rows) for c in columns}})
    return rows, ["concept"] + columns


def label(method: str, hp: str) -> str:
    return method if hp == "-" else f"{method}@L{hp.split('.')[2]}"


def sae_comparison(selection: list[dict], report: list[dict], fitted: dict, hp: str) -> list[dict]:
    """Filtered vs unfiltered SAE feature per concept: features, report scores, best concept at fluency >= 1."""
    table = []
    for name in dict.fromkeys(r["name"] for r in report):
        if (name, "sae", hp) not in fitted or (name, "sae_filtered", hp) not in fitted:
            continue
        row = {"concept": name}
        for method in SAE_METHODS:
            rep = [r for r in report if (r["name"], r["method"], r["hook_point"]) == (name, method, hp)]
            sel = [r for r in selection if (r["name"], r["method"], r["hook_point"]) == (name, method, hp)]
            fluent = [mean(g, "concept") for g in _by_factor(sel).values() if mean(g, "fluency") >= 1.0]
            row |= {f"{method} feature": int(fitted[name, method, hp].features_[0]),
                    f"{method} score": mean(rep, "score"), f"{method} concept": mean(rep, "concept"),
                    f"{method} fluency": mean(rep, "fluency"),
                    f"{method} concept@fluency>=1": max(fluent) if fluent else 0.0}
        table.append(row)
    return table


def _by_factor(rows: list[dict]) -> dict[float, list[dict]]:
    groups: dict[float, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["factor"], []).append(r)
    return dict(sorted(groups.items()))


def pareto_plot(selection: list[dict], report: list[dict], path: Path) -> None:
    """Mean concept vs mean fluency per factor (selection half), one line per method and layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from polysteer import atomic_write

    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    for method, hp in dict.fromkeys((r["method"], r["hook_point"]) for r in selection):
        groups = _by_factor([r for r in selection if (r["method"], r["hook_point"]) == (method, hp)])
        xs, ys = [mean(g, "fluency") for g in groups.values()], [mean(g, "concept") for g in groups.values()]
        ax.plot(xs, ys, marker="o", linestyle="-" if hp == selection[0]["hook_point"] else "--",
                label=label(method, hp))
        for f, x, y in zip(groups, xs, ys):
            ax.annotate(f"{f:g}", (x, y), fontsize=6)
    for method in ("unsteered", *PROMPTING):
        rows = [r for r in report if r["method"] == method]
        ax.scatter([mean(rows, "fluency")], [mean(rows, "concept")], marker="*", s=160, label=method, zorder=3)
    ax.set(xlabel="fluency (0-2)", ylabel="concept score (0-2)", xlim=(0, 2.05), ylim=(0, 2.05),
           title="AxBench-lite on SmolLM2-135M-Instruct: concept vs fluency (labels: factor)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concepts", type=int, default=None, help="first N concepts of the suite (default: all)")
    parser.add_argument("--layers", default="12,20", help="layers steered (the SAE methods run at the SAE's)")
    parser.add_argument("--methods", default=",".join(FINDERS), help=f"steering rows, of {','.join(FINDERS)}")
    parser.add_argument("--questions", type=int, default=None, help="first N training questions (default: all)")
    parser.add_argument("--no-prompting", action="store_true", help="leave out the two prompting baselines")
    parser.add_argument("--out", type=Path, default=None, help=f"results folder (default {OUT})")
    parser.add_argument("--factors", default="0.5,1,2,3,4,6", help="x the direction's class separation")
    parser.add_argument("--selection", type=int, default=2, help="selection-half instructions per concept")
    parser.add_argument("--report", type=int, default=3, help="report-half instructions per concept")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per steered generation")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16",
                        help="generation dtype of the steered runs (bfloat16 uses the CPU's AMX units, ~1.5x faster); "
                             "persona answers, activations, directions and judges stay float32")
    parser.add_argument("--batch", type=int, default=48, help="rows per batched generate")
    parser.add_argument("--output-threshold", type=float, default=0.01, help="sae_filtered's output-score floor")
    parser.add_argument("--quick", action="store_true", help="2 concepts, 2 factors, 2+2 instructions, 32 tokens")
    args = parser.parse_args(argv)
    if args.quick:
        args.concepts, args.factors, args.selection, args.report, args.tokens = 2, "1,4", 2, 2, 32
    args.layers = [int(x) for x in args.layers.split(",")]
    args.methods = args.methods.split(",")
    if set(args.methods) - set(FINDERS):
        parser.error(f"unknown --methods {sorted(set(args.methods) - set(FINDERS))}; choose from {list(FINDERS)}")
    args.factors = [float(x) for x in args.factors.split(",")]
    args.sae_hook_point = hook_point(sae_layer())
    args.out = args.out or (OUT / "quick" if args.quick else OUT)
    return args


def sae_layer() -> int:
    """The layer of the shipped SAE (its cfg is in SAELens' layout; polysteer's hook point is in its metadata)."""
    from polysteer.plugins.sae import load_sae

    return int(load_sae(SHIPPED_SAE).hook_point.split(".")[2])


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.time()
    torch.manual_seed(0)
    model, tokenizer = load_model()
    suite = load_suite().subset(limit=args.concepts)
    work = cache_dir() / "axbench-lite"
    cache, scores = Cache(work / "generations.jsonl"), Cache(work / "scores.jsonl")
    positives, negatives = training_data(model, tokenizer, suite, cache, args)
    fitted = fit_directions(model, tokenizer, suite, positives, negatives, args)
    aurocs = detection(model, tokenizer, suite, fitted, args)
    generator = model if args.dtype == "float32" else copy.deepcopy(model).to(getattr(torch, args.dtype))
    judges = Judges(model, tokenizer, suite, cache, args, generator)
    selection = generate_rows(generator, tokenizer, steering_jobs(suite, fitted, args, "selection"), cache, args,
                              "selection half")
    judges.score(selection, scores)
    chosen = choose_factors(selection)
    report = generate_rows(generator, tokenizer, steering_jobs(suite, fitted, args, "report", chosen) +
                           reference_jobs(suite, args), cache, args, "report half")
    judges.score(report, scores)
    write_results(args, suite, selection, report, fitted, aurocs, chosen, time.time() - start)


def write_results(args, suite, selection, report, fitted, aurocs, chosen, seconds) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    table = summary(report, aurocs, chosen)
    columns = list(dict.fromkeys((r["method"], r["hook_point"]) for r in report))
    sae = sae_comparison(selection, report, fitted, args.sae_hook_point)
    pareto_plot(selection, report, args.out / "pareto.png")
    command = "OMP_NUM_THREADS=2 .venv/bin/python benchmarks/axbench_lite.py " + " ".join(sys.argv[1:])
    ordering = " > ".join(f"{t['method']}{'' if t['layer'] == '-' else '@L' + t['layer']} {t['score']:.3f}"
                          for t in table)
    text = [f"# AxBench-lite on SmolLM2-135M-Instruct\n\nCommand: `{command.strip()}` ({seconds / 60:.0f} min, "
            f"{torch.get_num_threads()} threads).\n\n{len(suite.concepts)} concepts; factors {args.factors} x class "
            f"separation; {args.selection} selection + {args.report} report instructions per concept; "
            f"{args.tokens} new tokens, greedy, generated in {args.dtype}. Scores are 0-2 (AxBench rule: harmonic "
            "mean, 0 if any part is 0); "
            f"AUROC is concept detection on the held-out texts.\n\nOrdering: {ordering}\n",
            "## Methods (report half, chosen factor)\n", markdown(table, list(table[0])), "![pareto](pareto.png)\n",
            "## Score per concept\n",
            markdown(per_concept(report, columns), ["concept"] + [label(*c) for c in columns])]
    if sae:
        text += ["## SAE feature: output-score filtered vs unfiltered\n", markdown(sae, list(sae[0]))]
    detection, detection_columns = auroc_table(aurocs)
    text += ["## Concept detection AUROC (held-out texts: 16 of the concept vs 48 neutral + 2 of every other "
             "concept; token scores mean-pooled per text)\n", markdown(detection, detection_columns)]
    write_text_atomic(args.out / "README.md", "\n".join(text))
    write_text_atomic(args.out / "results.json", json.dumps(
        {"summary": table, "sae": sae, "aurocs": {"|".join(k): v for k, v in aurocs.items()},
         "chosen": {"|".join(k): v for k, v in chosen.items()}, "report": report}, indent=1))
    print("\n".join(text))


if __name__ == "__main__":
    main()
