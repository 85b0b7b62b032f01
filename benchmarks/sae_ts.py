"""SAE-TS vs plain SAE-feature steering on SmolLM2 with the shipped SAE: targeted effect vs side effects.

1. Targets: for each concept of the suite, the SAE latent that best separates 8 of its held-out texts from the
   neutral passages (token-level mean activation difference over the latent's mean activation, among latents firing
   on < 5% of tokens, one distinct latent per concept).
2. Effect model (SAE-TS): random sparse feature-space vectors (1-4 decoder rows at random weights, norms 0.25-1.0 x
   the typical activation norm), each steered on the training questions and read back unsteered, then a ridge fit.
   Sized for CPU: the features are drawn from the targets plus ``--pool-extra`` random live latents, so each target
   is in the training set a few times (the paper draws from every latent with 50k vectors).
3. Report: on held-out prompts (EVAL_PROMPTS, disjoint from the training questions) each target is steered with
   its unit decoder row and with its SAE-TS vector at the same norms; target effect = change of the target latent's
   mean activation over generated tokens; side effect = L1 norm of the change of every other latent.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sae_ts.py --concepts 6 --n-vectors 192

Writes ``README.md``, ``sae_ts.png`` and ``results.json`` to ``benchmarks/results/sae_ts/``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from concept_suite import load_suite  # noqa: E402

from polysteer.modalities.text import EVAL_PROMPTS, TRAIN_QUESTIONS, collect, load_model  # noqa: E402
from polysteer.modalities.text.sae import SHIPPED_SAE, fit_effects, measure_effects  # noqa: E402
from polysteer.plugins.sae import SAE, load_stats  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "sae_ts"


def targets(model, tokenizer, sae: SAE, names: int, max_density: float = 0.05) -> dict[str, int]:
    """One distinct, sparse latent per concept: the largest normalised token-level activation difference."""
    suite, stats = load_suite(), load_stats(SHIPPED_SAE)
    typical = stats["mean"].float().clamp_min(1e-3)
    allowed = stats["frequency"].float() < max_density

    def encode(texts) -> torch.Tensor:
        acts = collect(model, tokenizer, list(texts), [sae.hook_point], pooling="tokens", chat=False)
        return sae.encode(acts[sae.hook_point]).mean(0)

    with torch.no_grad():
        neutral = encode(suite.neutral)
    chosen: dict[str, int] = {}
    for concept in suite.concepts[:names]:
        with torch.no_grad():
            diff = (encode(concept.heldout[:8]) - neutral) / typical
        diff[~allowed] = -float("inf")
        diff[list(chosen.values())] = -float("inf")
        chosen[concept.name] = int(diff.argmax())
    return chosen


def evaluate(model, tokenizer, sae: SAE, effects, chosen: dict[str, int], strengths, prompts, max_new_tokens):
    """Target and side effect of the decoder row and the SAE-TS vector of each target at each norm."""
    rows = []
    for concept, f in chosen.items():
        onehot = torch.zeros(sae.d_sae)
        onehot[f] = 1.0
        units = {"SAE feature": torch.nn.functional.normalize(sae.W_dec[f].detach().float(), dim=0),
                 "SAE-TS": effects.targeted_vector(onehot)}
        vectors = torch.stack([u * s * effects.info["typical_norm"] for s in strengths for u in units.values()])
        measured = measure_effects(model, tokenizer, sae, sae.hook_point, vectors, prompts, max_new_tokens, 8)
        for i, (s, method) in enumerate((s, m) for s in strengths for m in units):
            e = measured[i]
            side = float(e.abs().sum() - e[f].abs())
            rows.append({"concept": concept, "feature": f, "method": method, "strength": s,
                         "cos_to_decoder": float(units[method] @ units["SAE feature"]),
                         "target": float(e[f]), "side_l1": side, "target_per_side": float(e[f]) / max(side, 1e-9)})
        print(json.dumps(rows[-2:]), flush=True)
    return rows


def summary(rows, strengths) -> list[dict]:
    out = []
    for s in strengths:
        for method in ("SAE feature", "SAE-TS"):
            sel = [r for r in rows if r["method"] == method and r["strength"] == s]
            target, side = sum(r["target"] for r in sel) / len(sel), sum(r["side_l1"] for r in sel) / len(sel)
            wins = sum(r["target"] > 0 for r in sel)
            out.append({"strength": s, "method": method, "mean target": target, "mean side L1": side,
                        "target / side": target / max(side, 1e-9), "targets raised": f"{wins}/{len(sel)}"})
    return out


def plot(rows, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method, marker in (("SAE feature", "o"), ("SAE-TS", "^")):
        sel = [r for r in rows if r["method"] == method]
        ax.scatter([r["side_l1"] for r in sel], [r["target"] for r in sel], marker=marker, label=method, alpha=0.8)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("side effect (L1 change of the other latents)")
    ax.set_ylabel("target latent change")
    ax.set_title("SmolLM2 L12: SAE-TS vs plain feature steering (same norms)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c])
                                       for c in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", type=int, default=6)
    parser.add_argument("--n-vectors", type=int, default=192)
    parser.add_argument("--pool-extra", type=int, default=60)
    parser.add_argument("--train-prompts", type=int, default=6)
    parser.add_argument("--eval-prompts", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--strengths", default="0.5,1.0", help="Norms, as fractions of the typical norm.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    strengths = [float(s) for s in args.strengths.split(",")]
    start, load_start = time.time(), os.getloadavg()
    model, tokenizer = load_model("smollm2")
    sae = SAE.load(SHIPPED_SAE)
    chosen = targets(model, tokenizer, sae, args.concepts)
    print("targets", chosen, flush=True)
    alive = (load_stats(SHIPPED_SAE)["frequency"] > 0).nonzero().flatten()
    extra = alive[torch.randperm(len(alive), generator=torch.Generator().manual_seed(args.seed))[: args.pool_extra]]
    pool = sorted(set(chosen.values()) | set(extra.tolist()))
    effects = fit_effects(model, tokenizer, sae, TRAIN_QUESTIONS[: args.train_prompts], args.n_vectors,
                          max_new_tokens=args.max_new_tokens, pool=pool, seed=args.seed, vectors_per_batch=8)
    fit_s = time.time() - start
    print("effect model", effects.info, f"{fit_s:.0f} s", flush=True)
    rows = evaluate(model, tokenizer, sae, effects, chosen, strengths, EVAL_PROMPTS[: args.eval_prompts],
                    args.max_new_tokens)
    wall, load_end = time.time() - start, os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(rows, RESULTS / "sae_ts.png")
    info = {k: v for k, v in effects.info.items()}
    (RESULTS / "results.json").write_text(json.dumps({"args": vars(args), "targets": chosen, "effect_model": info,
                                                      "rows": rows, "wall_s": wall, "fit_s": fit_s,
                                                      "load": [load_start, load_end]}, indent=1))
    write_readme(args, chosen, info, rows, summary(rows, strengths), wall, fit_s, load_start, load_end)


def write_readme(args, chosen, info, rows, summ, wall, fit_s, load_start, load_end) -> None:
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sae_ts.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    text = f"""# SAE-TS vs plain SAE-feature steering (SmolLM2-135M-Instruct, shipped SAE at L12)

Command: `{cmd}`

Wall time {wall / 60:.1f} min (effect model {fit_s / 60:.1f} min); load average (1/5/15 min) at start
{'/'.join(f'{x:.1f}' for x in load_start)}, at end {'/'.join(f'{x:.1f}' for x in load_end)} (2 cores, shared).

Effect model: {info['n_vectors']} random sparse feature-space vectors ({info['n_prompts']} training questions,
{info['max_new_tokens']} new tokens each, norms {info['relative_norms']} x typical norm {info['typical_norm']:.1f}),
ridge {info['ridge']}. Held-out share of effect energy explained: {info.get('heldout_explained', float('nan')):.3f}
(bias alone: {info.get('heldout_bias_only', float('nan')):.3f}; predicting zero: 0) on {info.get('n_heldout')} vectors.

Targets (concept -> latent): {', '.join(f'{c} -> {f}' for c, f in chosen.items())}.
Strength = vector norm as a fraction of the typical activation norm; both methods use the same norms, on
{args.eval_prompts} held-out prompts.

{table(summ, list(summ[0]))}

Per target:

{table(rows, ['concept', 'feature', 'method', 'strength', 'cos_to_decoder', 'target', 'side_l1', 'target_per_side'])}

![targeted vs side effect](sae_ts.png)

The concept and fluency judges were not run (CPU budget): this table measures effects in SAE-feature space only.
"""
    (RESULTS / "README.md").write_text(text)


if __name__ == "__main__":
    main()
