"""The body of ``benchmarks/peers.py``, run inside the peers' venv (it imports steering-vectors and repeng)."""

from __future__ import annotations

import inspect
import os
import platform
import statistics
import time
from contextlib import contextmanager
from importlib.metadata import version

import axbench_lite as ax
import torch
from common import RESULTS, interleaved_times, markdown
from concept_suite import load_suite
from repeng import ControlModel, ControlVector, DatasetEntry
from steering_vectors import SteeringVector, mean_aggregator, train_steering_vector

from polysteer import Intervention, atomic_write, hook_point, make_finder, steer, write_text_atomic
from polysteer.modalities.text import collect, format_prompt, generate, load_model

OUT = RESULTS / "peers"


def vectors(model, tokenizer, concept, positives, negatives, layer: int) -> dict[str, torch.Tensor]:
    """Each library's vector for one concept at ``layer`` (steering-vectors and repeng read the last token)."""
    hp = hook_point(layer)
    pos = [format_prompt(tokenizer, e.prompt) + e.text for e in positives]
    neg = [format_prompt(tokenizer, e.prompt) + e.text for e in negatives]
    sv = train_steering_vector(model, tokenizer, list(zip(pos, neg)), layers=[layer], aggregator=mean_aggregator(),
                               batch_size=8)
    rp = ControlVector.train(model, tokenizer, [DatasetEntry(p, n) for p, n in zip(pos, neg)],
                             hidden_layers=[layer], method="pca_diff", batch_size=8)
    last_pos = collect(model, tokenizer, pos, [hp], pooling="last", chat=False)[hp]
    last_neg = collect(model, tokenizer, neg, [hp], pooling="last", chat=False)[hp]
    mean_pos = collect(model, tokenizer, positives, [hp])[hp]
    mean_neg = collect(model, tokenizer, negatives, [hp])[hp]
    fit = lambda name, a, b: make_finder(name).fit(a, b)  # noqa: E731
    return {"steering-vectors": sv.layer_activations[layer].float(), "repeng": torch.from_numpy(rp.directions[layer]),
            "diffmean (last token)": fit("diffmean", last_pos, last_neg).direction_,
            "pca_diff (last token)": fit("pca_diff", last_pos, last_neg).direction_,
            "pca_diff uncentred (last token)": make_finder("pca_diff", center=False).fit(last_pos, last_neg).direction_,
            "diffmean (mean, default)": fit("diffmean", mean_pos, mean_neg).direction_,
            "pca_diff (mean, default)": fit("pca_diff", mean_pos, mean_neg).direction_,
            "scale": torch.tensor(fit("diffmean", mean_pos, mean_neg).scale_)}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=0))


COSINES = {"diffmean vs steering-vectors (last token)": ("diffmean (last token)", "steering-vectors"),
           "pca_diff vs repeng (last token)": ("pca_diff (last token)", "repeng"),
           "pca_diff uncentred vs repeng (last token)": ("pca_diff uncentred (last token)", "repeng"),
           "diffmean (default) vs steering-vectors": ("diffmean (mean, default)", "steering-vectors"),
           "pca_diff (default) vs repeng": ("pca_diff (mean, default)", "repeng")}


def cosine_rows(vecs: dict) -> list[dict]:
    """One row per concept: the cosine of each pair of vectors in ``COSINES``."""
    return [{"concept": name, **{col: cosine(v[a], v[b]) for col, (a, b) in COSINES.items()}}
            for name, v in vecs.items()]


@contextmanager
def steering(library: str, model, vector: torch.Tensor, layers: list[int], norm: float):
    """Steer ``layers`` by ``norm * unit(vector)`` with one library (repeng wraps and unwraps the model)."""
    unit = vector.float() / vector.float().norm()
    if library == "polysteer":
        with steer(model, [Intervention(unit, hook_point(layer), norm) for layer in layers]):
            yield
    elif library == "steering-vectors":
        with SteeringVector({layer: unit for layer in layers}, "decoder_block").apply(model, multiplier=norm):
            yield
    elif library == "repeng":
        wrapped = ControlModel(model, layers)
        try:
            wrapped.set_control(ControlVector(model.config.model_type, {layer: unit.numpy() for layer in layers}), norm)
            yield
        finally:
            wrapped.unwrap()
    elif library == "naive hook":
        handles = [model.model.layers[layer].register_forward_hook(
            lambda m, a, out: (out[0] + norm * unit,) + out[1:] if isinstance(out, tuple) else out + norm * unit)
            for layer in layers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
    else:
        yield


def judged(model, tokenizer, suite, vecs: dict, args, judges) -> list[dict]:
    """Each library's steered answers to every concept's report instructions, scored by the AxBench-lite judges."""
    rows = []
    for i, c in enumerate(suite.concepts):
        prompts = ax.rotate(suite.report, i, 4)
        norm = args.factor * float(vecs[c.name]["scale"])
        for library, name in (("polysteer", "diffmean (mean, default)"), ("steering-vectors", "steering-vectors"),
                              ("repeng", "repeng")):
            with steering(library, model, vecs[c.name][name], [args.layer], norm):
                texts = generate(model, tokenizer, prompts, max_new_tokens=64, progress=False)
            rows += [{"key": ax.key("peers", library, c.name, p, args.factor, args.layer, t), "name": c.name,
                      "method": library, "instruction": p, "text": t} for p, t in zip(prompts, texts)]
    judges.score(rows, ax.Cache(ax.cache_dir() / "axbench-lite" / "peer-scores.jsonl"))
    return rows


def throughput(model, tokenizer, vector: torch.Tensor, norm: float, args, prompts) -> list[dict]:
    """Tokens/s per library at batch 1 and 8, one layer and every layer, interleaved rounds (median)."""
    table = []
    for batch in (1, 8):
        tokenizer.padding_side = "left"
        enc = tokenizer([format_prompt(tokenizer, p) for p in prompts[:batch]], return_tensors="pt", padding=True,
                        add_special_tokens=False)
        run = lambda: model.generate(**enc, max_new_tokens=args.tokens, min_new_tokens=args.tokens,  # noqa: E731
                                     do_sample=False, pad_token_id=tokenizer.pad_token_id)
        rounds = _timed_variants(model, vector, norm, args, run)
        base = batch * args.tokens / statistics.median(rounds["unsteered"])
        for name, seconds in rounds.items():
            tps = batch * args.tokens / statistics.median(seconds)
            table.append({"batch": batch, "variant": name, "tokens/s": tps, "vs unsteered": f"{tps / base - 1:+.1%}",
                          "best round tokens/s": batch * args.tokens / min(seconds)})
    return table


def decode_steps(model, tokenizer, vector: torch.Tensor, norm: float, args, prompts) -> list[dict]:
    """Milliseconds per cached decode step under each library at batch 1 and 8: the hooks' own cost.

    Whole generations vary by several percent from run to run here; one decode step, repeated on the same cache
    (cropped back after each step), isolates what the hooks add. Median over shuffled rounds of ``args.steps`` steps.
    """
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    table = []
    for batch in (1, 8):
        tokenizer.padding_side = "left"
        enc = tokenizer([format_prompt(tokenizer, p) for p in prompts[:batch]], return_tensors="pt", padding=True,
                        add_special_tokens=False)
        with torch.no_grad():
            out = model(**enc, use_cache=True)
        cache, ids = out.past_key_values, out.logits[:, -1:].argmax(-1)
        mask = torch.cat([enc["attention_mask"], enc["attention_mask"].new_ones(batch, 1)], dim=1)
        positions = (mask.long().cumsum(-1) - 1).clamp_min(0)[:, -1:]  # per row, as generate passes them

        def block():
            for _ in range(args.steps):
                model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_kw: cache})
                cache.crop(-1)

        rounds = _timed_variants(model, vector, norm, args, block)
        base = statistics.median(rounds["unsteered"])
        for name, seconds in rounds.items():
            ms = 1000 * statistics.median(seconds) / args.steps
            table.append({"batch": batch, "variant": name, "ms per step": ms,
                          "vs unsteered": f"{statistics.median(seconds) / base - 1:+.1%}"})
    return table


def _timed_variants(model, vector, norm, args, run) -> dict[str, list[float]]:
    """Seconds per round of ``run`` unsteered and under each library, one layer and every layer, after a warm-up."""
    n_layers = model.config.num_hidden_layers
    variants = {"unsteered": run}
    for library in ("polysteer", "steering-vectors", "repeng", "naive hook"):
        for scope, layers in (("1 layer", [args.layer]), (f"all {n_layers} layers", list(range(n_layers)))):
            variants[f"{library}, {scope}"] = _steered_run(library, model, vector, layers, norm, run)
    with torch.no_grad():
        interleaved_times(variants, 1)  # warm-up round
        return interleaved_times(variants, args.repeats)


def _steered_run(library, model, vector, layers, norm, run):
    def steered():
        with steering(library, model, vector, layers, norm):
            run()

    return steered


def ratios(table: list[dict]) -> list[dict]:
    """polysteer's tokens/s over each peer's, per batch size and scope (medians, and best rounds)."""
    by = {(r["batch"], r["variant"]): r for r in table}
    rows = []
    for (batch, variant), row in by.items():
        library, _, scope = variant.partition(", ")
        if library in ("steering-vectors", "repeng", "naive hook"):
            ours = by[batch, f"polysteer, {scope}"]
            rows.append({"batch": batch, "scope": scope, "peer": library,
                         "polysteer / peer": ours["tokens/s"] / row["tokens/s"],
                         "best rounds": ours["best round tokens/s"] / row["best round tokens/s"]})
    return rows


def plot(table: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax_, batch in zip(axes, (1, 8)):
        rows = [r for r in table if r["batch"] == batch]
        ax_.barh([r["variant"] for r in rows], [r["tokens/s"] for r in rows], color="tab:blue")
        ax_.set(xlabel="tokens/s (median)", title=f"SmolLM2-135M generation, batch {batch}")
        ax_.invert_yaxis()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def _prepare(args, n_concepts: int):
    """SmolLM2, the suite's first ``n_concepts`` concepts, the generation cache and every library's vectors."""
    torch.manual_seed(0)
    model, tokenizer = load_model()
    suite = load_suite().subset(limit=n_concepts)
    ax_args = ax.parse_args(["--dtype", "float32"] + (["--questions", str(args.questions)] if args.questions else []))
    cache = ax.Cache(ax.cache_dir() / "axbench-lite" / "generations.jsonl")
    positives, negatives = ax.training_data(model, tokenizer, suite, cache, ax_args)
    vecs = {c.name: vectors(model, tokenizer, c, positives[c.name], negatives, args.layer) for c in suite.concepts}
    return model, tokenizer, suite, cache, ax_args, vecs


def run(args) -> None:
    import sys

    model, tokenizer, suite, cache, ax_args, vecs = _prepare(args, args.concepts)
    cos = cosine_rows(vecs)
    judges = ax.Judges(model, tokenizer, suite, cache, ax_args)
    rows = judged(model, tokenizer, suite, vecs, args, judges)
    scores = [{"library": lib, **{k: ax.mean([r for r in rows if r["method"] == lib], k)
                                  for k in ("score", "concept", "instruction", "fluency")}}
              for lib in ("polysteer", "steering-vectors", "repeng")]
    first = vecs[suite.concepts[0].name]
    speed = throughput(model, tokenizer, first["diffmean (mean, default)"], args.factor * float(first["scale"]), args,
                       list(suite.report))
    out = OUT / "quick" if args.quick else OUT
    out.mkdir(parents=True, exist_ok=True)
    plot(speed, out / "throughput.png")
    command = "OMP_NUM_THREADS=2 .venv/bin/python benchmarks/peers.py " + " ".join(sys.argv[1:])
    text = [f"# polysteer vs steering-vectors 0.12.2 vs repeng 0.4.0 on SmolLM2-135M-Instruct\n\nCommand: "
            f"`{command.strip()}`; {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}. Layer {args.layer}; steered norm {args.factor} x DiffMean class separation.\n",
            "## Cosine between vectors\n", markdown(cos, list(cos[0])),
            "## AxBench-lite judges on steered answers (0-2)\n", markdown(scores, list(scores[0])),
            f"## Generation throughput ({args.tokens} new tokens; median and best of {args.repeats} rounds, "
            "variant order shuffled each round)\n",
            markdown(speed, list(speed[0])), "## polysteer / peer throughput\n", markdown(ratios(speed),
                                                                                        list(ratios(speed)[0]))]
    write_text_atomic(out / "README.md", "\n".join(text))
    print("\n".join(text))


def run_decode_steps(args) -> None:
    """Only the per-step hook cost (``--decode-only``), written to ``decode_steps.md`` next to the README."""
    import sys

    model, tokenizer, suite, _, _, vecs = _prepare(args, 1)
    v = vecs[suite.concepts[0].name]
    table = decode_steps(model, tokenizer, v["diffmean (mean, default)"], args.factor * float(v["scale"]), args,
                         list(suite.report))
    by = {(r["batch"], r["variant"]): r["ms per step"] for r in table}
    ratio = [{"batch": b, "scope": variant.partition(", ")[2], "peer": variant.partition(", ")[0],
              "polysteer / peer (speed)": ms / by[b, "polysteer, " + variant.partition(", ")[2]]}
             for (b, variant), ms in by.items() if variant.partition(", ")[0] in ("steering-vectors", "repeng")]
    command = "OMP_NUM_THREADS=2 .venv/bin/python benchmarks/peers.py " + " ".join(sys.argv[1:])
    text = (f"# One cached decode step under each library (SmolLM2-135M-Instruct)\n\nCommand: `{command.strip()}`; "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}. Layer {args.layer}; median over "
            f"{args.repeats} shuffled rounds of {args.steps} steps on the same KV cache (cropped back each step).\n\n"
            + markdown(table, list(table[0])) + "\n" + markdown(ratio, list(ratio[0])))
    OUT.mkdir(parents=True, exist_ok=True)
    write_text_atomic(OUT / "decode_steps.md", text)
    print(text)


def run_cosines(args) -> None:
    """Only the cosines between the libraries' vectors (``--cosines-only``), written to ``cosines.md``."""
    import sys

    start, load = time.perf_counter(), os.getloadavg()
    _, _, suite, _, ax_args, vecs = _prepare(args, args.concepts)
    rows = cosine_rows(vecs)
    libraries = ", ".join(f"{lib} {version(lib)}" for lib in ("polysteer", "steering-vectors", "repeng", "torch",
                                                                 "transformers", "numpy", "scikit-learn"))
    command = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} .venv/bin/python benchmarks/peers.py " + \
        " ".join(sys.argv[1:])
    text = (f"# Cosine between polysteer's vectors and the peers' (SmolLM2-135M-Instruct, layer {args.layer})\n\n"
            f"Command: `{command.strip()}`; {len(suite.questions[:ax_args.questions])} contrastive pairs per concept "
            f"(persona answer vs plain answer); {torch.get_num_threads()} threads; wall time "
            f"{time.perf_counter() - start:.0f} s; load average {load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at "
            f"end. Libraries: {libraries}.\n\n"
            "Last token: every library reads the last token of prompt + answer (the peers' recipe). Default: "
            "polysteer's default pooling (mean over answer tokens), against the same peer vectors. pca_diff centres "
            "the pair differences as repeng's sklearn PCA does; the uncentred column is `center=False`.\n\n"
            + markdown(rows, list(rows[0])))
    OUT.mkdir(parents=True, exist_ok=True)
    write_text_atomic(OUT / "cosines.md", text)
    print(text)
