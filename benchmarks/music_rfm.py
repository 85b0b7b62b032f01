"""MusicRFM's note-steering table: target-note accuracy of MusicGen outputs, unsteered vs steered, per note.

For each of the 12 pitch classes a one-vs-rest direction is learnt per decoder layer from synthetic notes
(teacher-forced EnCodec codes, no text), layers are weighted by validation AUC, and the model generates
from the same prompts and seeds with and without steering. A chroma analysis scores whether each clip's
dominant pitch class is the target; a Frechet distance on EnCodec embeddings (steered vs unsteered)
stands in for the quality side effect. MusicRFM reports 0.23 -> 0.82 on MusicGen-Large (text adherence,
CLAP, within 0.02); CLAP is not available offline, so text adherence is not measured here.

On the ``tiny:*`` random models the rows only show that the pipeline runs end to end. Their random EnCodec
decoders emit nearly the same waveform whatever the codes (upsampling artefacts at multiples of 2 kHz,
which the chroma reads as B), so accuracy cannot move even though steering changes the generated codes
("waveform change" is the relative L2 change of the audio). Their note probes sit near chance: random
features do not know that octaves share a pitch class; the single-octave control (pitch height) is easier.

Usage (real weights: a local folder or hub id; the tiny random models run anywhere in about a minute)::

    .venv/bin/python benchmarks/music_rfm.py --model facebook/musicgen-large --seconds 10 --prompts 8
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/music_rfm.py --model tiny:transformers --model tiny:audiocraft

Writes ``README.md`` (tables and commands), ``music_rfm.png`` and ``results.json`` (every model run so far,
merged by model name) to ``benchmarks/results/music_rfm/``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from polysteer import atomic_write, write_text_atomic  # noqa: E402
from polysteer.modalities.music import (  # noqa: E402
    PITCH_CLASSES,
    FrechetAudioDistance,
    MusicModality,
    NoteAccuracy,
    build_plan,
    default_finder,
    find_concepts,
    generate_audio,
    load_model,
)

OUT = Path(__file__).parent / "results" / "music_rfm"
PROMPTS = ["a calm piano melody", "lofi hip hop beat", "acoustic guitar ballad", "upbeat electronic dance track",
           "orchestral film score", "jazz trio with upright bass", "ambient synth pads", "rock band with drums"]


def layer_aucs(model, finder: str, args, octaves) -> tuple[dict[str, dict[str, float]], dict]:
    """Validation AUC of every note probe at every layer (``{note: {hook point: auc}}``) and the fits."""
    fits = find_concepts(model, [f"note:{pc}" for pc in PITCH_CLASSES], finder=finder, seconds=args.clip_seconds,
                         variants=args.variants, seed=args.seed, cache_dir=args.cache_dir, octaves=octaves)
    return {spec.split(":")[1]: fit.aucs for spec, fit in fits.items()}, fits


def steer_table(model, tokenizer, fits, args) -> dict:
    """Per note: unsteered and steered target-note accuracy, the Frechet distance steered vs unsteered, and
    the relative L2 change of the waveforms (does steering reach the audio at all?)."""
    prompts = (PROMPTS * (args.prompts // len(PROMPTS) + 1))[: args.prompts]
    gen = dict(seconds=args.seconds, tokenizer=tokenizer, seed=args.seed, guidance=args.guidance,
               sample=not args.greedy)
    base = list(generate_audio(model, prompts, **gen)[:, 0])
    rate = MusicModality().backend(model).sample_rate
    fad = FrechetAudioDistance(model, base, rate)
    rows = {}
    for spec, fit in tqdm(fits.items(), desc="steered generation", leave=False):
        note = spec.split(":")[1]
        plan = build_plan(model, [fit.direction], [args.coef], [args.schedule], branch=args.branch)
        steered = list(generate_audio(model, prompts, plan, **gen)[:, 0])
        judge = NoteAccuracy(note)
        rows[note] = {"unsteered": float(np.mean(judge.evaluate(base, rate))),
                      "steered": float(np.mean(judge.evaluate(steered, rate))),
                      "frechet": fad.evaluate(steered, rate)[0],
                      "change": float(np.mean([np.linalg.norm(s - b) / max(np.linalg.norm(b), 1e-12)
                                               for s, b in zip(steered, base)]))}
    return rows


def run_model(name: str, args) -> dict:
    start = time.time()
    model, tokenizer = load_model(name, args.backend)
    finders = [default_finder()] + (["diffmean"] if default_finder() != "diffmean" else [])
    settings = {k: v for k, v in vars(args).items() if k not in ("model", "cache_dir", "report_only")}
    result = {"model": name, "finders": {}, "settings": settings}
    for finder in finders:
        aucs, fits = layer_aucs(model, finder, args, None)
        control, _ = layer_aucs(model, finder, args, [args.control_octave])
        result["finders"][finder] = {"aucs": aucs, "control_aucs": control,
                                     "steering": steer_table(model, tokenizer, fits, args)}
        print(f"{name} {finder}: done in {time.time() - start:.0f} s", file=sys.stderr)
    result["seconds_total"] = round(time.time() - start, 1)
    result["command"] = " ".join(["benchmarks/music_rfm.py", *sys.argv[1:]])
    return result


def mean_auc_by_layer(aucs: dict[str, dict[str, float]]) -> list[float]:
    points = list(next(iter(aucs.values())))
    return [float(np.mean([aucs[note][hp] for note in aucs])) for hp in points]


def markdown(results: dict) -> str:
    lines = ["# MusicRFM note steering", "", __doc__.split("Usage")[0].strip(), "",
             f"Machine: {platform.machine()}, Python {platform.python_version()}.", ""]
    for name, res in results.items():
        s = res["settings"]
        decoding = "greedy" if s["greedy"] else "top-k sampling"
        lines += [f"## {name}", "", f"{s['prompts']} prompts x {s['seconds']} s ({decoding}), coefficient {s['coef']}, "
                  f"schedule `{s['schedule']}`, CFG branch {s['branch']}, guidance {s['guidance']}; total "
                  f"{res['seconds_total']} s. Command: `{res['command']}`", ""]
        for finder, part in res["finders"].items():
            lines += _auc_table(finder, part, s["control_octave"]) + _steer_table(finder, part["steering"])
    return "\n".join(lines) + "\n"


def _auc_table(finder: str, part: dict, octave: int) -> list[str]:
    main, control = mean_auc_by_layer(part["aucs"]), mean_auc_by_layer(part["control_aucs"])
    out = [f"### {finder}: validation AUC per layer (mean over the 12 note probes)", "",
           "| layer | pitch class (octaves 2-5) | pitch height control (octave " f"{octave} only) |", "|---|---|---|"]
    out += [f"| {i} | {a:.3f} | {c:.3f} |" for i, (a, c) in enumerate(zip(main, control))]
    return out + [""]


def _steer_table(finder: str, rows: dict) -> list[str]:
    out = [f"### {finder}: target-note accuracy", "",
           "| note | unsteered | steered | Frechet (steered vs unsteered) | waveform change |", "|---|---|---|---|---|"]
    out += [f"| {n} | {r['unsteered']:.2f} | {r['steered']:.2f} | {r['frechet']:.3g} | {r['change']:.3g} |"
            for n, r in rows.items()]
    means = {k: np.mean([r[k] for r in rows.values()]) for k in ("unsteered", "steered", "frechet", "change")}
    out.append(f"| **mean** | **{means['unsteered']:.2f}** | **{means['steered']:.2f}** | {means['frechet']:.3g} | "
               f"{means['change']:.3g} |")
    return out + [""]


def plot(results: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, res in results.items():
        for finder, part in res["finders"].items():
            axes[0].plot(mean_auc_by_layer(part["aucs"]), marker="o", label=f"{name} {finder}")
            rows = part["steering"]
            gain = [rows[n]["steered"] - rows[n]["unsteered"] for n in PITCH_CLASSES if n in rows]
            axes[1].plot(range(len(gain)), gain, marker="s", label=f"{name} {finder}")
    axes[0].axhline(0.5, color="grey", lw=0.8, ls="--")
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set(xlabel="decoder layer", ylabel="validation AUC (mean over notes)", title="Note probes per layer")
    axes[1].axhline(0.0, color="grey", lw=0.8, ls="--")
    axes[1].set(xticks=range(12), xticklabels=PITCH_CLASSES, ylabel="steered - unsteered accuracy",
                title="Target-note accuracy gain")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", help="Path, hub id or tiny:transformers / tiny:audiocraft (repeat).")
    p.add_argument("--backend", default="auto", choices=["auto", "transformers", "audiocraft"])
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--seconds", type=float, default=2.0, help="Length of each generated clip.")
    p.add_argument("--coef", type=float, default=1.0)
    p.add_argument("--schedule", default="constant", help="e.g. exp-decay:0.998 or ramp:1s-3s")
    p.add_argument("--branch", default="both", choices=["both", "cond", "uncond"])
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--greedy", action="store_true", help="Greedy decoding (MusicRFM samples; tiny models need it).")
    p.add_argument("--clip-seconds", type=float, default=1.0, help="Length of each synthetic note.")
    p.add_argument("--variants", type=int, default=2)
    p.add_argument("--control-octave", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", help="Activation cache (default: a temporary folder shared by the finders).")
    p.add_argument("--report-only", action="store_true", help="Redraw README.md and the plot from results.json.")
    args = p.parse_args(argv)
    args.model = args.model or ["tiny:transformers", "tiny:audiocraft"]
    return args


def main(argv=None):
    args = parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    store = OUT / "results.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        args.cache_dir = args.cache_dir or tmp
        for name in [] if args.report_only else args.model:
            results[name] = run_model(name, args)
    write_text_atomic(store, json.dumps(results, indent=1))
    write_text_atomic(OUT / "README.md", markdown(results))
    plot(results, OUT / "music_rfm.png")
    print((OUT / "README.md").read_text())


if __name__ == "__main__":
    main()
