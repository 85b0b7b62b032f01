"""Train the shipped TopK SAE for SmolLM2-135M-Instruct (text.blocks.12.resid_post) and report its metrics.

Text: the Debian corpus (fortunes, the Jargon File, the Debian Reference, the Python documentation;
``apt-get install fortunes jargon-text debian-reference-en python3-doc``). Activations are streamed into a
resumable on-disk store (bfloat16 autocast forward, fp16 shards), one shard is held out; the SAE is saved
in SAELens format as fp16. The same run as a command::

    polysteer sae train --layer 12 --tokens 2000000 --bf16 -o modalities/text/data/sae-smollm2-L12

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/sae_train_smollm2.py --tokens 2000000

Writes ``README.md`` (metrics table and the command), ``training.png`` (training curve and latent firing
frequencies) and ``metrics.json`` to ``benchmarks/results/sae_smollm2/``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from polysteer.modalities.text import cache_dir, load_model  # noqa: E402
from polysteer.modalities.text.sae import SHIPPED_SAE, debian_corpus, train_text_sae  # noqa: E402
from polysteer.plugins.sae import TrainConfig, load_stats  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "sae_smollm2"
HOOK_POINT = "text.blocks.12.resid_post"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=2_000_000, help="training tokens (one shard more is held out)")
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("-k", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--warmup", type=int, default=50, help="learning-rate warm-up steps")
    parser.add_argument("--store", default=str(cache_dir() / "sae-store-smollm2-L12"))
    parser.add_argument("--output", default=str(SHIPPED_SAE))
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_model()
    config = TrainConfig(d_sae=args.d_sae, k=args.k, lr=args.lr, epochs=args.epochs, warmup_steps=args.warmup,
                         seed=0)  # the shipped SAE's seed
    start = time.time()
    sae, metrics = train_text_sae(model, tokenizer, debian_corpus(), HOOK_POINT, args.output, args.store,
                                  args.tokens, config, bf16=True, corpus="debian")
    metrics["wall_seconds"] = round(time.time() - start)
    write_report(args, metrics, load_stats(args.output))


def write_report(args, metrics: dict, stats: dict | None) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    curve = metrics.pop("nmse_curve")
    (RESULTS / "metrics.json").write_text(json.dumps({**metrics, "nmse_curve": curve}, indent=2))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.plot([c[0] for c in curve], [c[1] for c in curve])
    left.set(xlabel="step (4096 tokens)", ylabel="normalised MSE (training batch)", title="TopK SAE training")
    if stats is not None:
        freq = stats["frequency"].clamp_min(1e-7).log10()
        right.hist(freq.numpy(), bins=50)
        right.set(xlabel="log10 firing frequency (held-out shard)", ylabel="latents", title="Latent frequencies")
    fig.tight_layout()
    fig.savefig(RESULTS / "training.png", dpi=120)
    rows = [("explained variance (held-out)", "explained_variance"), ("L0", "l0"),
            ("dead fraction (never fires on held-out)", "dead_fraction"),
            ("dead fraction (training, no firing in 1M tokens)", "dead_fraction_training"),
            ("attention-sink tokens left out (norm > 10x median)", "outlier_fraction"),
            ("LM loss clean", "loss_clean"), ("LM loss, SAE spliced in", "loss_spliced"),
            ("LM loss increase", "loss_increase"), ("LM loss, mean-ablated", "loss_mean_ablated"),
            ("fraction of loss recovered", "loss_recovered"), ("tokens trained on", "tokens_trained"),
            ("tokens stored (incl. held-out)", "tokens_stored"), ("wall time (s)", "wall_seconds")]
    table = "\n".join(f"| {label} | {_fmt(metrics.get(key))} |" for label, key in rows)
    (RESULTS / "README.md").write_text(f"""# TopK SAE for SmolLM2-135M-Instruct, {HOOK_POINT}

{args.d_sae} latents, k={args.k}, {args.epochs} epoch(s), lr {args.lr}; Debian corpus; shipped as fp16 in
`{Path(args.output).name}` (SAELens format). Metrics on a held-out shard of the store; the LM loss is the
next-token loss on 64 held-out windows of 128 tokens. Attention-sink tokens (the first position of each
window, and tokens with a norm above 10x the median, e.g. a leading "\\n\\n" with norm ~24000 against a
median of ~140) are left out of training and metrics and keep their activation when splicing; with them
the explained variance would measure almost nothing else (they hold ~95% of the variance).

| metric | value |
| --- | --- |
{table}

Command: `OMP_NUM_THREADS=2 .venv/bin/python benchmarks/sae_train_smollm2.py --tokens {args.tokens} \\
--epochs {args.epochs} --lr {args.lr} --warmup {args.warmup}`

![training](training.png)
""")


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else f"{value:,}"


if __name__ == "__main__":
    main()
