"""Feature Flow on SmolLM2: single-layer SAE-feature steering vs flow-guided multi-layer steering.

For each concept, the start latent of the shipped SAE (``text.blocks.12.resid_post``) is the ``sae_contrast``
finder's top latent on the token activations of the concept's held-out texts vs other texts (the ``flow`` finder's
choice). Its flow graph over the shipped SAE and a second SAE at block 11 (see below) links it to its block-11
predecessor when their decoder rows' cosine reaches the threshold. Neutral prompts are then answered unsteered,
steered at block 12 alone (``c * W_dec[f]``), steered along the graph with per-layer coefficients that add the
same total (``flow``: ``c * w_l * W_dec_l[f_l]``, w = path cosines normalised to sum 1) and cumulatively
(``flow cumulative``: unnormalised weights, so block 11 adds ``c * cos`` on top of block 12's ``c``). Every method
and coefficient of a concept runs as one batched generate (one plan per row). Judges: concept keyword rate
(``KeywordJudge``) and median perplexity under the unsteered model. The report is ``sae_flow_report.py``.

Threshold: Laptev et al. (2025) link a feature to its top-1 decoder-cosine match in the adjacent layer's SAE; the
cut-off under which a link is dropped is a free parameter. ``--threshold median`` (default) is the median, over all
block-12 latents, of each latent's best block-11 cosine, so a typical latent links; a number sets it directly. The
report prints that distribution, the start latents' cosines and chance (random unit directions).

The block-11 SAE (a benchmark artefact under ``results/cache``, not in git) has the shipped SAE's settings (Debian
corpus: ``apt-get install fortunes jargon-text debian-reference-en python3-doc``; 4096 latents, k=32, lr 1e-3, bf16
capture) but 8 shards of 65,532 tokens for 3 epochs (381 steps) instead of 2M tokens once, one more shard held out::

    OMP_NUM_THREADS=1 .venv/bin/polysteer sae train --layer 11 --tokens 524256 --shard-tokens 65536 --bf16 \\
        --d-sae 4096 -k 32 --lr 1e-3 --epochs 3 --seed 11 \\
        --store benchmarks/results/cache/store-smollm2-L11 -o benchmarks/results/cache/sae-smollm2-L11-seed11

Seed 0 would give it the shipped SAE's initial decoder rows, and links would follow the shared initialisation
(93% same-index matches in an earlier 32k-token run); the report prints the same-index fraction as a check.

Usage (defaults: 6 concepts, 8 prompts, coefficients 40-240)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sae_flow.py

Writes ``README.md``, ``flow.png`` and ``results.json`` to ``benchmarks/results/sae_flow/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
from concept_suite import load_suite
from sae_flow_report import RESULTS, write_report

from polysteer import Intervention, Plan, stack_plans
from polysteer.modalities.text import EVAL_PROMPTS, TextModality, generate, load_model
from polysteer.modalities.text.evaluators import KeywordJudge, Perplexity
from polysteer.modalities.text.sae import SHIPPED_SAE
from polysteer.plugins.sae import SAE, FeatureFlow, flow_graph

SECOND = Path(__file__).parent / "results" / "cache" / "sae-smollm2-L11-seed11"


def start_feature(model, tokenizer, sae: SAE, suite, concept) -> int:
    """The flow finder's start latent (the sae_contrast choice on token rows), concept texts vs the others."""
    modality, hp = TextModality(), sae.hook_point
    X = [modality.capture(model, tokenizer, texts, [hp], pooling="tokens")[hp]
         for texts in (list(concept.heldout), suite.negatives(concept))]
    return FeatureFlow(sae=sae).fit(*X).feature_


def best_cosines(target: torch.Tensor, source: SAE) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 cosine (and index) of each row of ``target`` against the source SAE's decoder rows."""
    a = torch.nn.functional.normalize(target.detach().float(), dim=1)
    b = torch.nn.functional.normalize(source.W_dec.detach().float(), dim=1)
    best = (a @ b.T).max(1)
    return best.values, best.indices


def summary(values: torch.Tensor) -> dict[str, float]:
    """Median, 90th percentile and the fraction reaching 0.2 / 0.3 / 0.4 / 0.5 of a set of best cosines."""
    q = torch.quantile(values.float(), torch.tensor([0.5, 0.9]))
    return {"n": len(values), "median": float(q[0]), "p90": float(q[1]),
            **{f">={t}": float((values >= t).float().mean()) for t in (0.2, 0.3, 0.4, 0.5)}}


def cosine_report(start: SAE, other: SAE, features: dict[str, int]) -> dict:
    """The best-cosine distributions (all latents, start latents, chance) and the same-index check."""
    values, indices = best_cosines(start.W_dec, other)
    n = min(start.d_sae, other.d_sae)
    chance = torch.randn(start.d_sae, start.d_in, generator=torch.Generator().manual_seed(0))
    picked = torch.tensor(list(features.values()))
    return {"all block-12 latents": summary(values), "start latents": summary(values[picked]),
            "random directions (chance)": summary(best_cosines(chance, other)[0]),
            "same_index": float((indices[:n] == torch.arange(n)).float().mean()),
            "start": {name: {"feature": f, "cosine": float(values[f]), "match": int(indices[f])}
                      for name, f in features.items()}}


def sae_metrics(sae: SAE) -> dict:
    """The training metrics an SAE's metadata records (held-out shard), without the training curve."""
    return {k: v for k, v in sae.metadata.get("metrics", {}).items() if k != "nmse_curve"}


def threshold_arg(value: str) -> str | float:
    """``--threshold``: 'median' or a number, checked before any model loads."""
    try:
        return value if value == "median" else float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or 'median', got {value!r}") from None


def judge(model, tokenizer, prompts, texts, keywords) -> dict[str, float]:
    rate = sum(KeywordJudge(keywords).evaluate(texts)) / len(texts)
    ppl = [p for p in Perplexity(model, tokenizer).evaluate(texts, prompts) if math.isfinite(p)]
    return {"concept_rate": rate, "perplexity": sorted(ppl)[len(ppl) // 2] if ppl else float("nan")}


def method_plans(saes, start: SAE, feature: int, graph, coefs: list[float]) -> list[tuple[str, float, Plan]]:
    """``(method, coefficient, plan)`` for every method at every coefficient."""
    out = []
    for coef in coefs:
        single = Plan([Intervention(start.W_dec[feature].detach().float(), start.hook_point, coef, "add")])
        out += [("single L12", coef, single), ("flow", coef, graph.plan(saes, coef)),
                ("flow cumulative", coef, graph.plan(saes, coef, normalize=False))]
    return out


def run_concept(model, tokenizer, saes, start, feature, graph, concept, prompts, coefs, kw) -> list[dict]:
    """All methods and coefficients of one concept in one batched generate, judged per (method, coefficient)."""
    plans = method_plans(saes, start, feature, graph, coefs)
    rows_in = [plan for _, _, plan in plans for _ in prompts]
    texts = generate(model, tokenizer, prompts * len(plans), stack_plans(rows_in), batch_size=len(rows_in), **kw)
    rows = []
    for i, (method, coef, plan) in enumerate(plans):
        mine = texts[i * len(prompts) : (i + 1) * len(prompts)]
        layers = ", ".join(f"{iv.hook_point.split('.')[2]}:{iv.coefficient:.1f}" for iv in plan.interventions)
        rows.append({"concept": concept.name, "method": method, "coef": coef, "layers": layers,
                     "example": mine[0][:160], **judge(model, tokenizer, prompts, mine, concept.keywords)})
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concepts", default="ocean,weddings,football,cooking,dogs,space_travel")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--coefs", default="40,80,120,160,240",
                        help="total coefficients in latent units (decoder rows are unit; activations ~140 at L12)")
    parser.add_argument("--threshold", default="median", type=threshold_arg,
                        help="decoder-cosine cut-off of a link: a number, or 'median' (of all block-12 latents' best "
                             "block-11 cosine)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--second-sae", default=str(SECOND))
    parser.add_argument("--report-only", action="store_true", help="rewrite README.md and flow.png from results.json")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.report_only:
        saved = json.loads((RESULTS / "results.json").read_text())
        saved["args"].setdefault("shipped_metrics", sae_metrics(SAE.load(SHIPPED_SAE)))  # results of older runs
        return write_report(argparse.Namespace(**saved["args"]), saved["rows"], saved["graphs"])
    if not Path(args.second_sae).is_dir():
        raise SystemExit(f"no block-11 SAE at {args.second_sae}; train it with the command in this file's docstring")
    args.load_average, begin = [os.getloadavg()[0]], time.time()
    rows, graphs = run(args)
    args.wall_seconds, args.load_average = round(time.time() - begin), args.load_average + [os.getloadavg()[0]]
    write_report(args, rows, graphs)


def run(args) -> tuple[list[dict], dict]:
    """Start latents, cosine report and threshold (stored on ``args``), then every concept's rows and graph."""
    model, tokenizer = load_model()
    saes = {sae.hook_point: sae for sae in (SAE.load(SHIPPED_SAE), SAE.load(args.second_sae))}
    start, other = saes["text.blocks.12.resid_post"], saes["text.blocks.11.resid_post"]
    suite, prompts = load_suite(), list(EVAL_PROMPTS[: args.prompts])
    concepts = suite.subset(args.concepts.split(",")).concepts
    features = {c.name: start_feature(model, tokenizer, start, suite, c) for c in concepts}
    args.cosines = cosine_report(start, other, features)
    median = round(args.cosines["all block-12 latents"]["median"], 3)
    args.threshold_value = median if args.threshold == "median" else args.threshold
    args.shipped_metrics, args.second_metrics = sae_metrics(start), sae_metrics(other)
    coefs, kw = [float(c) for c in args.coefs.split(",")], dict(max_new_tokens=args.max_new_tokens)
    base = generate(model, tokenizer, prompts, **kw)
    rows, graphs = [], {}
    for concept in concepts:
        graph = flow_graph(saes, start.hook_point, features[concept.name], args.threshold_value)
        graphs[concept.name] = graph.to_json()
        rows.append({"concept": concept.name, "method": "unsteered", "coef": 0.0, "layers": "",
                     "example": base[0][:160], **judge(model, tokenizer, prompts, base, concept.keywords)})
        rows += run_concept(model, tokenizer, saes, start, features[concept.name], graph, concept, prompts, coefs, kw)
    return rows, graphs


if __name__ == "__main__":
    main()
