"""Decompose DiffMean concept directions of SmolLM2 into the shipped SAE's features (Mayne et al.).

For each concept (the persona answers of ``benchmarks/axbench_lite.py``, cached): DiffMean at the SAE's layer, then
(a) the signed decoder cosine of the direction with every latent and (b) the contrast of the SAE codes of the
positive and negative answer tokens, each with the top positive and negative features and their VocabProj tokens.
The vector itself is never encoded.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/decompose_concepts.py [--concepts weddings,ocean,french]
"""

from __future__ import annotations

import argparse
import sys

import axbench_lite as ax
from common import RESULTS, markdown
from concept_suite import load_suite

from polysteer import hook_point, make_finder, write_text_atomic
from polysteer.modalities.text import load_model
from polysteer.modalities.text.sae import SHIPPED_SAE, token_activations, vocab_proj
from polysteer.plugins.sae import SAE, contrast_decomposition, decoder_cosine, reconstruction_cosine

OUT = RESULTS / "decomposition"


def rows(model, tokenizer, sae, decomposition, n: int) -> list[dict]:
    """Top ``n`` positive and negative contributors with their VocabProj tokens."""
    picked = decomposition.positive(n) + decomposition.negative(n)
    return [{"feature": c.feature, "score": c.score,
             "VocabProj": " ".join(repr(t) for t in vocab_proj(model, tokenizer, sae.W_dec[c.feature].detach(), 6).top)}
            for c in picked]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concepts", default="weddings,ocean,french,cooking,space_travel")
    parser.add_argument("-n", type=int, default=5, help="features per sign")
    args = parser.parse_args()
    model, tokenizer = load_model()
    sae = SAE.load(SHIPPED_SAE)
    hp = hook_point(ax.sae_layer())
    suite = load_suite().subset(names=args.concepts.split(","))
    ax_args = ax.parse_args(["--dtype", "float32"])
    positives, negatives = ax.training_data(model, tokenizer, suite, ax.Cache(ax.cache_dir() / "axbench-lite" /
                                                                             "generations.jsonl"), ax_args)
    X_neg = token_activations(model, tokenizer, negatives, hp)
    text = [f"# SAE decomposition of DiffMean concept directions (SmolLM2, {hp})\n\nCommand: `OMP_NUM_THREADS=2 "
            f".venv/bin/python benchmarks/decompose_concepts.py {' '.join(sys.argv[1:])}`. Decoder cosine: signed "
            "cosine of the direction with each decoder row. Contrast: mean SAE code of the concept answers' tokens "
            "minus that of the plain answers' tokens; 'rebuilt cos' is the cosine of its reconstruction with the "
            "direction. The direction itself is never encoded.\n"]
    for c in suite.concepts:
        X_pos = token_activations(model, tokenizer, positives[c.name], hp)
        direction = make_finder("diffmean").fit(X_pos, X_neg).direction_
        cosine, contrast = decoder_cosine(sae, direction), contrast_decomposition(sae, X_pos, X_neg)
        text += [f"## {c.name}\n", f"Contrast rebuilt cos: {reconstruction_cosine(sae, contrast, direction):.3f}\n",
                 "### Decoder cosine\n", markdown(rows(model, tokenizer, sae, cosine, args.n), ["feature", "score",
                                                                                                "VocabProj"]),
                 "### Contrast of SAE codes\n", markdown(rows(model, tokenizer, sae, contrast, args.n),
                                                          ["feature", "score", "VocabProj"])]
    OUT.mkdir(parents=True, exist_ok=True)
    write_text_atomic(OUT / "README.md", "\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
