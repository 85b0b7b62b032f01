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
4. prompt + steer: the best steering row on the selection half (or ``--prompt-steer-method``) again, now with
   prompt_appended's prompt, its factor chosen the same way (the ``prompt_steer`` row);
5. report: ``--report`` instructions of the report half at the chosen factor, every score with a bootstrap 95%
   interval, paired differences against prompt_appended, and the concept judge's agreement with keyword labels
   (:mod:`axbench_report`, :mod:`power_stats`).

All rows of a phase run as batched generates whose rows carry different directions and factors
(:func:`polysteer.stack_plans`). Generations and activations are cached, so an interrupted run resumes.

Sizing (SmolLM2 generates ~60-90 tokens/s at batch 48 on 2 CPU cores): generations per run are about
concepts x (steering rows x selection x factors + selection x factors for prompt_steer + report x (steering rows +
4)) at ``--tokens`` each, plus 64 x (concepts + 1) persona and plain answers on a cold cache. The default run
(10 steering rows, 2 selection, 3 report, 6 factors) was 25 min; ``--report 10`` on the four rows of the power run
below is about 3,400 generations (~215k tokens).

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/axbench_lite.py            # the full run (see README.md)
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/axbench_lite.py --quick    # 2 concepts, 2 factors, smoke run
    # the power run: 240 report samples per method (24 concepts x 10 report instructions), four steering rows
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/axbench_lite.py --layers 12 --methods diffmean,pca,sae,sae_filtered \\
        --report 10
    # only the SAE rows, without the prompting baselines (--questions N, --out DIR shrink and redirect a run):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/axbench_lite.py --layers 12 --methods sae,sae_filtered --no-prompting
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

# mean and summary are re-exported: trained_vectors.py and peers_run.py read them from this module
from axbench_report import SAE_METHODS, label, mean, selection_scores, summary, write_results  # noqa: F401
from common import RESULTS
from concept_suite import Suite, load_suite
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from polysteer import Intervention, Plan, hook_point, make_finder, registry, stack_plans
from polysteer.modalities.text import Example, cache_dir, collect, generate, load_model, token_labels
from polysteer.modalities.text.evaluators import AxBenchScore, ConceptScore, FluencyScore, InstructionScore
from polysteer.modalities.text.sae import SHIPPED_SAE

OUT = RESULTS / "axbench_lite"
FINDERS = {"diffmean": ("diffmean", {}), "pca": ("pca_diff", {}), "probe": ("probe", {}), "rfm": ("rfm", {}),
           "sae": ("sae_contrast", {"sae": str(SHIPPED_SAE)}),
           "sae_filtered": ("sae_contrast", {"sae": str(SHIPPED_SAE), "score_filter": "output"})}
# fluency-preserving ways to apply a row's direction, each a "+variant" row of the best steering row; the magnitude
# (factor x class separation) is what "add" would add at the layer


def _spread(iv: Intervention, offsets: tuple[int, ...], **changes) -> list[Intervention]:
    """``iv`` split evenly over the blocks ``offsets`` away from its own."""
    return [replace(iv, hook_point=hook_point(layer_of(iv.hook_point) + k), coefficient=iv.coefficient / len(offsets),
                    **changes) for k in offsets]


def _rotate(iv: Intervention, norm: float) -> list[Intervention]:
    """The norm-preserving operator, its first step turning the activation as far as adding ``iv`` to one of the
    typical norm would (coefficient c turns normalize(h) by gain x c x unit(v))."""
    gain = registry("operators")["rotate"]().gain
    return [replace(iv, coefficient=iv.coefficient / (gain * norm), operator="rotate")]


VARIANTS = {
    "rotate": _rotate,
    "spread": lambda iv, norm: _spread(iv, (-2, -1, 0, 1, 2)),
    "generated": lambda iv, norm: [replace(iv, schedule="generated-only")],
    "decay": lambda iv, norm: [replace(iv, schedule="decay:0-32")],
    "spread-decay": lambda iv, norm: _spread(iv, (-2, 0, 2), schedule="decay:0-20"),  # the demo's recipe
}


def layer_of(hp: str) -> int:
    return int(hp.split(".")[2])


def apply_variant(method: str, iv: Intervention, norms: dict[str, float]) -> Intervention | Plan:
    """``iv`` as the row's variant (after ``+`` in ``method``) applies it; plain ``iv`` for a row without one."""
    variant = method.partition("+")[2]
    return Plan(VARIANTS[variant](iv, norms.get(iv.hook_point, 0.0))) if variant else iv


@dataclass
class Job:
    """One generation: its cache key, the user prompt, an optional system prompt and the row's plan."""

    key: str
    prompt: str
    system: str | None = None
    plan: Intervention | Plan | None = None


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


def steering_jobs(suite: Suite, fitted: dict, args, half: str, chosen: dict | None = None,
                  appended: bool = False, norms: dict[str, float] | None = None) -> list[tuple[dict, Job]]:
    """(row, job) pairs: every factor on the selection half, or each chosen factor on the report half.

    With ``appended`` the user prompt carries the concept's instruction, as prompt_appended's does (prompt + steer);
    ``norms`` (median token norm per hook point) sizes the rotate variant.
    """
    pairs = []
    for i, c in enumerate(suite.concepts):
        instructions = rotate(suite.selection, i, args.selection) if half == "selection" else rotate(
            suite.report, i, args.report)
        for (name, method, hp), finder in fitted.items():
            if name != c.name:
                continue
            factors = (args.variant_factors if "+" in method else args.factors) if chosen is None else [
                chosen[name, method, hp]]
            for factor in factors:
                plan = Intervention(finder.direction_, hp, factor * float(finder.scale_))
                applied = apply_variant(method, plan, norms or {})
                for ins in instructions:
                    row = {"name": name, "method": method, "hook_point": hp, "factor": factor, "instruction": ins}
                    job_key = key("steer", name, method, hp, factor, ins, args.tokens, args.dtype, fingerprint(plan),
                                  *(["appended"] if appended else []))
                    prompt = f"{ins} {c.instruction}" if appended else ins
                    pairs.append((row, Job(job_key, prompt, None, applied)))
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
        self.fluency = FluencyScore.calibrated(model, tokenizer, answers)
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
    # "task" keeps the instruction's text: judging overwrites "instruction" with its score
    return [{**row, "task": row["instruction"], "key": job.key, "text": t} for (row, job), t in zip(pairs, texts)]


def choose_factors(rows: list[dict]) -> dict:
    """The factor with the best mean score per (concept, method, hook point); ties go to the smaller factor."""
    means: dict[tuple, dict[float, list[float]]] = {}
    for r in rows:
        means.setdefault((r["name"], r["method"], r["hook_point"]), {}).setdefault(r["factor"], []).append(r["score"])
    return {k: max(sorted(f), key=lambda x: statistics.mean(f[x])) for k, f in means.items()}


def best_steering(selection: list[dict], chosen: dict) -> tuple[str, str]:
    """The (method, hook point) whose chosen factors score best on the selection half, averaged over concepts."""
    scores = selection_scores(selection, chosen)
    return max(scores, key=scores.get)


def prompt_steer_source(args, best: tuple[str, str]) -> tuple[str, str] | None:
    """prompt_steer's (method, hook point): ``--prompt-steer-method``, else ``best``; None: no row."""
    if args.no_prompting or args.prompt_steer_method == "none":
        return None
    if args.prompt_steer_method:
        method, layer = args.prompt_steer_method.split("@")
        return method, (args.sae_hook_point if method in SAE_METHODS else hook_point(int(layer)))
    return best


def variant_rows(fitted: dict, source: tuple[str, str], args) -> dict:
    """``source``'s fitted finders again under each ``--variants`` name (method ``"METHOD+VARIANT"``)."""
    return {(name, f"{method}+{v}", hp): finder for (name, method, hp), finder in fitted.items()
            if (method, hp) == source for v in args.variants}


def token_norms(model, tokenizer, suite: Suite, points: list[str]) -> dict[str, float]:
    """The median norm of one token's activation at each hook point, over the suite's neutral texts."""
    acts = collect(model, tokenizer, list(suite.neutral), points, pooling="tokens",
                   cache_dir=str(cache_dir() / "axbench-lite" / "activations"))
    return {hp: float(acts[hp].float().norm(dim=-1).median()) for hp in points}


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
    parser.add_argument("--prompt-steer-method", default=None,
                        help="METHOD@LAYER (e.g. diffmean@12) steered with prompt_appended's prompt in the "
                             "prompt_steer row; default the best steering row on the selection half; 'none': no row")
    parser.add_argument("--variants", default="",
                        help=f"comma-separated ways to apply the best steering row, of {','.join(VARIANTS)} (rows "
                             "METHOD+VARIANT, their factors chosen on the selection half from --variant-factors)")
    parser.add_argument("--variant-source", default=None, help="METHOD@LAYER the variants apply (default: the best "
                        "steering row on the selection half)")
    parser.add_argument("--variant-factors", default="0.1,0.25,0.5,1,2,4", help="the variants' factor grid")
    parser.add_argument("--quick", action="store_true", help="2 concepts, 2 factors, 2+2 instructions, 32 tokens")
    args = parser.parse_args(argv)
    if args.quick:
        args.concepts, args.factors, args.selection, args.report, args.tokens = 2, "1,4", 2, 2, 32
    args.layers = [int(x) for x in args.layers.split(",")]
    args.methods = args.methods.split(",")
    if set(args.methods) - set(FINDERS):
        parser.error(f"unknown --methods {sorted(set(args.methods) - set(FINDERS))}; choose from {list(FINDERS)}")
    args.factors = [float(x) for x in args.factors.split(",")]
    args.variant_factors = [float(x) for x in args.variant_factors.split(",")]
    args.variants = [v for v in args.variants.split(",") if v]
    if set(args.variants) - set(VARIANTS):
        parser.error(f"unknown --variants {sorted(set(args.variants) - set(VARIANTS))}; choose from {list(VARIANTS)}")
    args.sae_hook_point = hook_point(sae_layer())
    if args.prompt_steer_method not in (None, "none"):
        args.prompt_steer_method = _steered_row(parser, args, args.prompt_steer_method)
    if args.variant_source:
        method, layer = _steered_row(parser, args, args.variant_source, "--variant-source").split("@")
        args.variant_source = (method, args.sae_hook_point if method in SAE_METHODS else hook_point(int(layer)))
    args.out = args.out or (OUT / "quick" if args.quick else OUT)
    return args


def _steered_row(parser, args, spec: str, flag: str = "--prompt-steer-method") -> str:
    """``METHOD@LAYER`` checked against the rows this run fits: ``--methods`` at ``--layers``, SAE rows at the SAE's."""
    method, _, layer = spec.partition("@")
    layer = layer.removeprefix("L")
    if method not in args.methods or not layer.isdigit():
        parser.error(f"{flag} {spec!r}: give METHOD@LAYER with METHOD one of --methods {args.methods}")
    layers = [int(args.sae_hook_point.split(".")[2])] if method in SAE_METHODS else args.layers
    if int(layer) not in layers:
        parser.error(f"{flag} {spec!r}: {method} runs at layers {layers}; pick one of them")
    return f"{method}@{int(layer)}"


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
    # v2: fluency judged on the output alone (v1 conditioned it on the prompt); v3: character-level loops penalised
    cache, scores = Cache(work / "generations.jsonl"), Cache(work / "scores-v3.jsonl")
    positives, negatives = training_data(model, tokenizer, suite, cache, args)
    fitted = fit_directions(model, tokenizer, suite, positives, negatives, args)
    aurocs = detection(model, tokenizer, suite, fitted, args)
    generator = model if args.dtype == "float32" else copy.deepcopy(model).to(getattr(torch, args.dtype))
    judges = Judges(model, tokenizer, suite, cache, args, generator)
    phase = lambda pairs, desc: generate_rows(generator, tokenizer, pairs, cache, args, desc)
    selection = phase(steering_jobs(suite, fitted, args, "selection"), "selection half")
    judges.score(selection, scores)
    chosen = choose_factors(selection)
    best = best_steering(selection, chosen)
    variants = variant_rows(fitted, args.variant_source or best, args)
    norms = token_norms(model, tokenizer, suite, sorted({hp for _, _, hp in variants})) if variants else {}
    if variants:
        applied = phase(steering_jobs(suite, variants, args, "selection", norms=norms), "variant selection")
        judges.score(applied, scores)
        chosen |= choose_factors(applied)
        selection += applied
    source = prompt_steer_source(args, best)
    steered = {k: f for k, f in fitted.items() if (k[1], k[2]) == source}
    steered = {(name, "prompt_steer", hp): f for (name, _, hp), f in steered.items()}
    if steered:  # the same factor search, with the prompt present
        prompted = phase(steering_jobs(suite, steered, args, "selection", appended=True), "prompt_steer selection")
        judges.score(prompted, scores)
        chosen |= choose_factors(prompted)
        selection += prompted
    report = phase(steering_jobs(suite, fitted | variants, args, "report", chosen, norms=norms) +
                   reference_jobs(suite, args) +
                   steering_jobs(suite, steered, args, "report", chosen, appended=True), "report half")
    judges.score(report, scores)
    write_results(args, suite, selection, report, fitted, aurocs, chosen, time.time() - start,
                  label(*source) if source else None)


if __name__ == "__main__":
    main()
