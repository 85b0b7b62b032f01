"""Output and input scores (Arad et al.) and descriptions for every feature of the shipped SmolLM2 SAE.

Reads the SAE trained by ``benchmarks/sae_train_smollm2.py`` and the held-out shard of its activation
store; adds ``output_score`` and ``input_score`` to the SAE's ``feature_stats.safetensors`` so finders can
filter on them, and writes a markdown table of sample features (VocabProj tokens, top-activating
contexts from the held-out text) to ``benchmarks/results/sae_smollm2/features.md`` with a score histogram.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/sae_feature_scores.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from polysteer import write_safetensors_atomic  # noqa: E402
from polysteer.modalities.text import cache_dir, load_model  # noqa: E402
from polysteer.modalities.text.sae import (  # noqa: E402
    SHIPPED_SAE,
    ActivationStore,
    feature_stats,
    input_scores,
    output_scores,
    vocab_proj,
)
from polysteer.plugins.sae import SAE, STATS_FILE, load_stats  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "sae_smollm2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sae", default=str(SHIPPED_SAE))
    parser.add_argument("--store", default=str(cache_dir() / "sae-store-smollm2-L12"))
    parser.add_argument("--samples", type=int, default=16, help="features described in the table")
    args = parser.parse_args()
    model, tokenizer = load_model()
    sae = SAE.load(args.sae)
    store = ActivationStore(args.store)
    shard = sae.metadata["metrics"]["tokens_stored"] // store.manifest["shard_tokens"] - 1  # the held-out one
    stats = feature_stats(sae, store, [shard], top=20)
    inputs = input_scores(model, sae, stats)
    outputs = output_scores(model, tokenizer, sae, sae.metadata["hook_name"], stats.max)
    saved = load_stats(args.sae) or {}
    saved.update(output_score=outputs, input_score=inputs)
    write_safetensors_atomic(Path(args.sae) / STATS_FILE, {k: v.float().contiguous() for k, v in saved.items()},
                             {"scored_on_shard": str(shard)})
    write_report(model, tokenizer, sae, stats, inputs, outputs, args.samples)


def _context(tokenizer, stats, row: int, width: int = 8) -> str:
    window = stats.windows[row // stats.per_window]
    pos = stats.skip + row % stats.per_window
    before = tokenizer.decode(window[max(0, pos - width) : pos])
    return f"{before}[[{tokenizer.decode(window[pos : pos + 1])}]]".replace("\n", " ").replace("|", "/")


def write_report(model, tokenizer, sae, stats, inputs, outputs, samples: int) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    live = stats.frequency > 0
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(outputs[live].numpy(), bins=50)
    ax.set(xlabel="output score", ylabel="live latents", title="Output scores, SmolLM2 L12 SAE")
    fig.tight_layout()
    fig.savefig(RESULTS / "output_scores.png", dpi=120)
    chosen = torch.nonzero(live).flatten()
    chosen = chosen[torch.randperm(len(chosen), generator=torch.Generator().manual_seed(0))[:samples]]
    rows = []
    for f in sorted(chosen.tolist(), key=lambda j: -float(outputs[j])):
        tokens = vocab_proj(model, tokenizer, sae.W_dec[f].detach(), 5).top
        contexts = " <br> ".join(_context(tokenizer, stats, int(r)) for r in stats.top_rows[f, :2])
        rows.append(f"| {f} | {float(stats.frequency[f]):.4f} | {float(stats.max[f]):.1f} | {float(outputs[f]):.3f} | "
                    f"{float(inputs[f]):.2f} | {' '.join(repr(t) for t in tokens)} | {contexts} |")
    summary = {"live latents": int(live.sum()), "median output score (live)": float(outputs[live].median()),
               "output score >= 0.01 (live)": float((outputs[live] >= 0.01).float().mean()),
               "mean input score (live)": float(inputs[live].mean())}
    lines = "\n".join(f"- {k}: {v:.3f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in summary.items())
    (RESULTS / "features.md").write_text(f"""# Feature scores and descriptions, SmolLM2 L12 SAE

Output score (Arad et al.; prompt "From my experience,", 10 x max activation, |T_f| = 20) and input
score (top-20 activating tokens of the held-out shard) for every latent; random sample of live latents below.

{lines}

| feature | frequency | max act. | output score | input score | VocabProj top-5 | top contexts (held-out) |
| --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

![output scores](output_scores.png)
""")


if __name__ == "__main__":
    main()
