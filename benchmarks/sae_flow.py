"""Feature Flow on SmolLM2: single-layer SAE-feature steering vs flow-guided multi-layer steering.

For each concept, the start latent of the shipped SAE (``text.blocks.12.resid_post``) is the ``sae_contrast``
finder's top latent on the token activations of the concept's held-out texts vs other texts (the ``flow`` finder's
choice). Its flow graph over the shipped SAE and a second SAE at block 11 (see below) links it to its block-11
predecessor when their decoder rows' cosine reaches ``--threshold``. Then neutral prompts are answered unsteered,
steered at block 12 alone (``c * W_dec[f]``) and steered along the graph with per-layer coefficients (``c * w_l *
W_dec_l[f_l]``, weights = path cosines normalised to sum 1, so both add the same total coefficient). Judges:
concept keyword rate (``KeywordJudge``) and perplexity under the unsteered model.

The block-11 SAE (not in git: a benchmark artefact under ``results/cache``) is trained on the cached activation
store of ``polysteer sae train --layer 11 --text CORPUS --tokens 32768 --shard-tokens 16384`` with
``TrainConfig(d_sae=2048, k=32, lr=2e-3, batch_size=1024, epochs=5, seed=11)``. The seed matters: the trainer's
default seed 0 gives it the shipped SAE's initial decoder rows (rows 0-2047 of the same random draw), and short
training keeps enough of them that 93% of the matches linked the same index in both SAEs, an artefact of the
initialisation rather than flow. The report prints that same-index fraction as a check.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sae_flow.py --concepts ocean,weddings,football --prompts 6

Writes ``README.md``, ``flow.png`` and ``results.json`` to ``benchmarks/results/sae_flow/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from common import markdown  # noqa: E402
from concept_suite import load_suite  # noqa: E402

from polysteer import Intervention, Plan  # noqa: E402
from polysteer.modalities.text import EVAL_PROMPTS, TextModality, generate, load_model  # noqa: E402
from polysteer.modalities.text.evaluators import KeywordJudge, Perplexity  # noqa: E402
from polysteer.modalities.text.sae import SHIPPED_SAE  # noqa: E402
from polysteer.plugins.sae import SAE, FeatureFlow, flow_graph  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "sae_flow"
SECOND = Path(__file__).parent / "results" / "cache" / "sae-smollm2-L11-seed11"


def start_feature(model, tokenizer, sae: SAE, suite, concept) -> int:
    """The flow finder's start latent (the sae_contrast choice on token rows), concept texts vs the others."""
    modality, hp = TextModality(), sae.hook_point
    X = [modality.capture(model, tokenizer, texts, [hp], pooling="tokens")[hp]
         for texts in (list(concept.heldout), suite.negatives(concept))]
    return FeatureFlow(sae=sae).fit(*X).feature_


def same_index_fraction(start: SAE, other: SAE) -> float:
    """Fraction of the start SAE's latents (up to the other's width) whose best decoder match has the same index."""
    n = min(start.d_sae, other.d_sae)
    a = torch.nn.functional.normalize(start.W_dec[:n].detach().float(), dim=1)
    b = torch.nn.functional.normalize(other.W_dec.detach().float(), dim=1)
    return float(((a @ b.T).argmax(1) == torch.arange(n)).float().mean())


def judge(model, tokenizer, prompts, texts, keywords) -> dict[str, float]:
    rate = sum(KeywordJudge(keywords).evaluate(texts)) / len(texts)
    ppl = [p for p in Perplexity(model, tokenizer).evaluate(texts, prompts) if math.isfinite(p)]
    return {"concept_rate": rate, "perplexity": sorted(ppl)[len(ppl) // 2] if ppl else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concepts", default="ocean,weddings,football")
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--coefs", default="40,80", help="total coefficients in latent units (decoder rows are unit)")
    parser.add_argument("--threshold", type=float, default=0.4)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--second-sae", default=str(SECOND))
    args = parser.parse_args()
    if not Path(args.second_sae).is_dir():
        raise SystemExit(f"no block-11 SAE at {args.second_sae}; train it with the command in this file's docstring")
    args.load_average, begin = [os.getloadavg()[0]], time.time()
    model, tokenizer = load_model()
    saes = {sae.hook_point: sae for sae in (SAE.load(SHIPPED_SAE), SAE.load(args.second_sae))}
    start = saes["text.blocks.12.resid_post"]
    args.same_index = same_index_fraction(start, saes["text.blocks.11.resid_post"])
    suite, prompts = load_suite(), list(EVAL_PROMPTS[: args.prompts])
    kw = dict(max_new_tokens=args.max_new_tokens)
    base = generate(model, tokenizer, prompts, **kw)
    rows, graphs = [], {}
    for concept in suite.subset(args.concepts.split(",")).concepts:
        feature = start_feature(model, tokenizer, start, suite, concept)
        graph = flow_graph(saes, start.hook_point, feature, args.threshold)
        graphs[concept.name] = graph.to_json()
        rows.append({"concept": concept.name, "method": "unsteered", "coef": 0.0, "layers": "",
                     **judge(model, tokenizer, prompts, base, concept.keywords)})
        for coef in map(float, args.coefs.split(",")):
            single = Plan([Intervention(start.W_dec[feature].detach().float(), start.hook_point, coef, "add")])
            for method, plan in (("single L12", single), ("flow", graph.plan(saes, coef))):
                texts = generate(model, tokenizer, prompts, plan, **kw)
                layers = ", ".join(f"{iv.hook_point.split('.')[2]}:{iv.coefficient:.1f}" for iv in plan.interventions)
                rows.append({"concept": concept.name, "method": method, "coef": coef, "layers": layers,
                             "example": texts[0][:120], **judge(model, tokenizer, prompts, texts, concept.keywords)})
    args.wall_seconds, args.load_average = round(time.time() - begin), args.load_average + [os.getloadavg()[0]]
    write_report(args, rows, graphs)


def write_report(args, rows: list[dict], graphs: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows, "graphs": graphs}, indent=2))
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for method, marker in (("single L12", "o"), ("flow", "s")):
        mine = [r for r in rows if r["method"] == method]
        ax.scatter([r["perplexity"] for r in mine], [r["concept_rate"] for r in mine], marker=marker, label=method)
    ax.set(xlabel="median perplexity (unsteered model)", ylabel="concept keyword rate", xscale="log",
           title="single-layer vs flow-guided multi-layer SAE steering")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "flow.png", dpi=120)
    links = "\n".join(f"- {name}: " + ", ".join(f"{n['hook_point']} #{n['feature']} (cos {n['similarity']:.2f})"
                                                 for n in g["nodes"]) for name, g in graphs.items())
    table = markdown([{k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in r.items() if k != "example"}
                      for r in rows], ["concept", "method", "coef", "layers", "concept_rate", "perplexity"])
    (RESULTS / "README.md").write_text(f"""# Feature Flow: single-layer vs flow-guided multi-layer steering (SmolLM2)

Start latent per concept: the `sae_contrast` finder's top latent of the shipped block-12 SAE on the token
activations of the concept's held-out texts vs other texts. Flow graph over that SAE and a block-11 SAE
({Path(args.second_sae).name}), decoder-cosine links kept at >= {args.threshold}. Same-index best matches
between the two SAEs: {args.same_index:.3f} (near 0 for independently initialised SAEs; near 1 means the links
only reflect a shared initialisation). "single L12" adds
`c * W_dec[f]` at block 12; "flow" adds `c * w_l * W_dec_l[f_l]` at every node (w = path cosines, normalised to
sum 1: the same total coefficient split across layers; "layers" lists each block's coefficient). {args.prompts}
neutral prompts, greedy, {args.max_new_tokens} new tokens. Concept rate = fraction of outputs with a concept
keyword; perplexity = median under the unsteered model.

Graphs:
{links}

{table}

Command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sae_flow.py --concepts {args.concepts} --prompts \\
{args.prompts} --coefs {args.coefs} --threshold {args.threshold} --max-new-tokens {args.max_new_tokens}`
({args.wall_seconds} s wall; 1-minute load average {args.load_average[0]:.2f} at the start,
{args.load_average[-1]:.2f} at the end, on 2 shared cores)

![flow](flow.png)
""")


if __name__ == "__main__":
    main()
