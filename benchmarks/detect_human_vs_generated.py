"""Human-written vs SmolLM2-generated text: detection by DiffMean, a logistic probe, RFM and SAE features.

Human text: passages of the Debian corpus (``polysteer.modalities.text.sae.corpus``: the Jargon File, the
Debian Reference, the Python docs, fortunes when installed) taken *after* the prefix of the corpus stream that
the shipped SAE's activation store consumed, so the SAE never trained on them; when the store is on disk its
first window is compared with the stream to check that the corpus is the same one (reported). Each passage is
cut into a prefix (the neutral prompt) and its human continuation; SmolLM2 writes its own continuation of the
same prefix (sampled, no chat template), and the human one is trimmed to the same token count, so topic and
length carry no signal. Both are read after their prefix at text.blocks.12.resid_post; attention-sink tokens
(norm above the SAE's max_norm) are dropped. Pairs are split into train and test; DiffMean, ``probe`` and ``rfm``
are fitted on mean-pooled train passages, and SAE features are ranked by their mean-code contrast on train.
Thresholds are the best-F1 ones on train, applied to test.

Usage::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/detect_human_vs_generated.py          # 300 pairs
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/detect_human_vs_generated.py --quick  # a smoke run

Writes ``README.md``, ``roc.png`` and ``results.json`` to ``benchmarks/results/detection/``; generations are
cached under the polysteer cache (``detect-human-vs-generated/``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Iterable, Iterator

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from polysteer import cache_key, write_text_atomic  # noqa: E402
from polysteer.modalities.text import cache_dir, generate, load_model, text_activations  # noqa: E402
from polysteer.modalities.text.sae import SHIPPED_SAE, debian_corpus, token_windows, vocab_proj  # noqa: E402
from polysteer.plugins.detection import FinderDetector, best_f1_threshold, detection_metrics, feature_codes  # noqa: E402
from polysteer.plugins.sae import SAE  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, markdown  # noqa: E402

HP = "text.blocks.12.resid_post"
STORE = cache_dir() / "sae-store-smollm2-L12"


def skip_consumed(tokenizer, documents: Iterable[str], consumed: int) -> Iterator[str]:
    """Documents that start after the first ``consumed`` tokens of the packed stream (EOS after each)."""
    seen = 0
    for doc in documents:
        if seen >= consumed:
            yield doc
        seen += len(tokenizer(doc, add_special_tokens=False).input_ids) + 1


def unseen_documents(tokenizer, sae: SAE) -> tuple[Iterator[str], str]:
    """The corpus after the SAE's training windows, and how sure that is (checked against the store)."""
    context, skip, status = 128, 1, "assumed: no activation store on disk to compare the corpus with"
    if (STORE / "store.json").is_file():
        manifest = json.loads((STORE / "store.json").read_text())
        context, skip = manifest["context"], manifest["skip"]
        with safe_open(str(STORE / manifest["shards"][0]), framework="pt") as f:
            stored = f.get_tensor("tokens")[0].tolist()
        same = stored == next(token_windows(tokenizer, debian_corpus(), context))
        status = ("verified: the store's first window matches this corpus stream" if same else
                  "NOT trackable: this machine's corpus differs from the SAE's; passages may overlap its training")
    stored_tokens = (sae.metadata.get("metrics") or {}).get("tokens_stored")
    if stored_tokens is None:
        return debian_corpus(), "NOT trackable: the SAE records no tokens_stored; passages may overlap its training"
    consumed = stored_tokens // (context - skip) * context
    return skip_consumed(tokenizer, debian_corpus(), consumed), status


def human_passages(tokenizer, documents: Iterator[str], n: int, prefix: int, length: int) -> list[tuple[str, str]]:
    """``(prefix text, human continuation)`` from the first ``n`` documents long enough, one per document."""
    pairs = []
    for doc in documents:
        ids = tokenizer(doc, add_special_tokens=False).input_ids
        if len(ids) >= prefix + length:
            pairs.append((tokenizer.decode(ids[:prefix]), tokenizer.decode(ids[prefix : prefix + length])))
        if len(pairs) == n:
            break
    return pairs


def build_dataset(model, tokenizer, sae: SAE, args) -> dict:
    """Prefixes, human and generated continuations (same token count), cached as JSON."""
    params = {k: str(getattr(args, k)) for k in ("n", "prefix_tokens", "new_tokens", "temperature", "seed", "sae")}
    file = args.cache / f"pairs-{cache_key(**params)}.json"
    if file.is_file():
        return json.loads(file.read_text())
    documents, status = unseen_documents(tokenizer, sae)
    pairs = human_passages(tokenizer, documents, args.n, args.prefix_tokens, args.new_tokens)
    prefixes = [p for p, _ in pairs]
    generated = generate(model, tokenizer, prefixes, max_new_tokens=args.new_tokens, batch_size=16, chat=False,
                         do_sample=True, temperature=args.temperature, seed=args.seed)
    data = {"params": params, "corpus": status, "prefixes": [], "human": [], "generated": []}
    for (prefix, human), gen in zip(pairs, generated):
        n_gen = len(tokenizer(gen, add_special_tokens=False).input_ids)
        if n_gen >= 4:  # a continuation that stopped at once has nothing to read
            human_ids = tokenizer(human, add_special_tokens=False).input_ids[:n_gen]
            data["prefixes"].append(prefix), data["human"].append(tokenizer.decode(human_ids))
            data["generated"].append(gen)
    write_text_atomic(file, json.dumps(data, indent=1))
    return data


def split(n_pairs: int, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Passage indices of train and test; a prefix's human and generated passages stay together."""
    order = list(range(n_pairs))
    random.Random(seed).shuffle(order)
    n_test = max(1, round(test_fraction * n_pairs))
    pairs_of = lambda ids: torch.tensor([i for p in ids for i in (p, n_pairs + p)])  # noqa: E731
    return pairs_of(order[n_test:]), pairs_of(order[:n_test])


def evaluate(name: str, train_scores, test_scores, y_train, y_test) -> dict:
    """Test AUROC and F1 at the train split's best-F1 threshold."""
    metrics = detection_metrics(test_scores, y_test, best_f1_threshold(train_scores, y_train))
    return {"detector": name, "test AUROC": metrics.auroc, "test F1": metrics.f1, "threshold": metrics.threshold,
            "roc": [list(map(float, a)) for a in roc_curve(y_test.numpy(), torch.as_tensor(test_scores).numpy())[:2]]}


def probe_rows(tokens, train, test, y) -> list[dict]:
    """DiffMean, logistic probe and RFM fitted on mean-pooled train passages, scored with each pooling."""
    pooled = tokens.select(train).pool()
    bandwidth = float(torch.cdist(pooled, pooled).median())  # RFM's L: the typical distance between passages
    params = {"diffmean": {}, "probe": {"standardize": True}, "rfm": {"bandwidth": bandwidth}}
    rows = []
    for name, kwargs in params.items():
        detector = FinderDetector.fit(name, pooled, y[train], **kwargs)
        for pooling in ("mean", "max"):
            rows.append(evaluate(f"{name} ({pooling})", detector.passage_scores(tokens.select(train), pooling),
                                 detector.passage_scores(tokens.select(test), pooling), y[train], y[test]))
    return rows


def feature_rows(model, tokenizer, sae: SAE, tokens, train, test, y, top: int) -> tuple[list[dict], list[dict]]:
    """SAE features ranked by train contrast (generated minus human mean code): detectors and descriptions."""
    codes = feature_codes(sae, tokens, "mean")
    gen, hum = train[y[train] == 1], train[y[train] == 0]
    contrast = codes[gen].mean(0) - codes[hum].mean(0)
    ranked = [int(f) for f in contrast.topk(top).indices] + [int(f) for f in (-contrast).topk(top).indices]
    features = []
    for f in ranked:
        sign = 1.0 if contrast[f] > 0 else -1.0
        auroc = evaluate("", sign * codes[train, f], sign * codes[test, f], y[train], y[test])["test AUROC"]
        tokens_top = vocab_proj(model, tokenizer, sae.W_dec[f].detach(), 6).top
        features.append({"feature": f, "marks": "generated" if sign > 0 else "human", "contrast": float(contrast[f]),
                         "test AUROC": auroc, "VocabProj": " ".join(repr(t) for t in tokens_top).replace("|", "/")})
    pos, neg = ranked[:top], ranked[top:]
    signed = codes[:, pos].sum(1) - codes[:, neg].sum(1)
    rows = [evaluate(f"SAE feature {ranked[0]} (mean)", codes[train, ranked[0]], codes[test, ranked[0]], y[train],
                     y[test]),
            evaluate(f"SAE top-{top} +/- features (mean)", signed[train], signed[test], y[train], y[test])]
    return rows, features


def write_report(out: Path, data: dict, rows: list[dict], features: list[dict], args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for row in rows:
        if "(max)" not in row["detector"]:
            ax.plot(*row["roc"], label=f"{row['detector']} ({row['test AUROC']:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="Generated (positive) vs human, test")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=120)
    write_text_atomic(out / "results.json", json.dumps({"args": data["params"], "corpus": data["corpus"],
                                                        "detectors": rows, "features": features}, indent=1))
    n = len(data["prefixes"])
    command = " ".join(["OMP_NUM_THREADS=2 .venv/bin/python benchmarks/detect_human_vs_generated.py", *sys.argv[1:]])
    write_text_atomic(out / "README.md", f"""# Human-written vs SmolLM2-generated text ({HP})

{n} prefixes of {args.prefix_tokens} tokens from the Debian corpus, each with its human continuation and a SmolLM2
continuation (sampled, temperature {args.temperature}, up to {args.new_tokens} tokens; the human one trimmed to
the same length). Corpus vs the SAE's training text: {data["corpus"]}. Test split: {args.test_fraction:.0%} of the
prefixes. Positive = generated. Thresholds: best F1 on train.

{markdown(rows, ["detector", "test AUROC", "test F1", "threshold"])}
SAE features of the shipped SAE ranked by train contrast (mean code on generated minus human passages):

{markdown(features, ["feature", "marks", "contrast", "test AUROC", "VocabProj"])}
Command: `{command}`

![ROC curves](roc.png)
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300, help="prefixes (each gives a human and a generated passage)")
    parser.add_argument("--prefix-tokens", type=int, default=24)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("--top", type=int, default=10, help="SAE features listed per side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sae", default=str(SHIPPED_SAE))
    parser.add_argument("--cache", type=Path, default=cache_dir() / "detect-human-vs-generated")
    parser.add_argument("--out", type=Path, default=RESULTS / "detection")
    parser.add_argument("--quick", action="store_true", help="12 prefixes, 16 new tokens (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.n, args.new_tokens, args.top = 12, 16, 3
    run(args)


def run(args) -> None:
    model, tokenizer = load_model()
    sae = SAE.load(args.sae)
    data = build_dataset(model, tokenizer, sae, args)
    n = len(data["prefixes"])
    texts, prompts = data["human"] + data["generated"], data["prefixes"] * 2
    tokens = text_activations(model, tokenizer, texts, HP, prompts, batch_size=16).without_outliers(
        sae.metadata.get("max_norm"))
    y = torch.cat([torch.zeros(n), torch.ones(n)]).long()
    train, test = split(n, args.test_fraction, args.seed)
    rows = probe_rows(tokens, train, test, y)
    sae_rows, features = feature_rows(model, tokenizer, sae, tokens, train, test, y, args.top)
    write_report(args.out, data, rows + sae_rows, features, args)
    print(markdown(rows + sae_rows, ["detector", "test AUROC", "test F1", "threshold"]))


if __name__ == "__main__":
    main()
