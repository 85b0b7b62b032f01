"""MusicRFM's note-steering table: target-note accuracy of MusicGen outputs, unsteered vs steered, per note.

For each of the 12 pitch classes a one-vs-rest direction is learnt per decoder layer from synthetic notes
(teacher-forced EnCodec codes, no text), layers are weighted by validation AUC, and the model generates
from the same prompts and seeds with and without steering. A chroma analysis scores whether each clip's
dominant pitch class is the target; a Frechet distance on EnCodec embeddings (steered vs unsteered)
stands in for the quality side effect, and CLAP text adherence (cosine of CLAP's prompt and audio embeddings)
is measured on both. MusicRFM reports 0.23 -> 0.82 on MusicGen-Large with CLAP within 0.02 of unsteered.
Without ``--clap-model`` (e.g. a local copy of laion/clap-htsat-unfused) the CLAP is a tiny one with RANDOM
weights: its numbers only show the metric's plumbing, not text adherence.

On the ``tiny:*`` random models the rows only show that the pipeline runs end to end. Their random EnCodec
decoders emit nearly the same waveform whatever the codes (upsampling artefacts at multiples of 2 kHz,
which the chroma reads as B), so accuracy cannot move even though steering changes the generated codes
("waveform change" is the relative L2 change of the audio), and CLAP cannot either: it scores nearly the same
waveform. Their note probes sit near chance: random
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
import os
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
    ClapScore,
    FrechetAudioDistance,
    MusicModality,
    NoteAccuracy,
    build_plan,
    default_finder,
    find_concepts,
    generate_audio,
    load_model,
    save_tiny_clap,
)

OUT = Path(__file__).parent / "results" / "music_rfm"
RANDOM_CLAP = "tiny random CLAP (random weights: plumbing, not quality)"
PROMPTS = ["a calm piano melody", "lofi hip hop beat", "acoustic guitar ballad", "upbeat electronic dance track",
           "orchestral film score", "jazz trio with upright bass", "ambient synth pads", "rock band with drums"]


def layer_aucs(model, finder: str, args, octaves) -> tuple[dict[str, dict[str, float]], dict]:
    """Validation AUC of every note probe at every layer (``{note: {hook point: auc}}``) and the fits."""
    fits = find_concepts(model, [f"note:{pc}" for pc in PITCH_CLASSES], finder=finder, seconds=args.clip_seconds,
                         variants=args.variants, seed=args.seed, cache_dir=args.cache_dir, octaves=octaves)
    return {spec.split(":")[1]: fit.aucs for spec, fit in fits.items()}, fits


def steer_table(model, tokenizer, fits, clap, args) -> dict:
    """Per note: unsteered and steered target-note accuracy and CLAP text adherence, the Frechet distance steered
    vs unsteered, and the relative L2 change of the waveforms (does steering reach the audio at all?)."""
    prompts = (PROMPTS * (args.prompts // len(PROMPTS) + 1))[: args.prompts]
    gen = dict(seconds=args.seconds, tokenizer=tokenizer, seed=args.seed, guidance=args.guidance,
               sample=not args.greedy)
    base = list(generate_audio(model, prompts, **gen)[:, 0])
    rate = MusicModality().backend(model).sample_rate
    fad = FrechetAudioDistance(model, base, rate)
    clap_base = float(np.mean(clap.evaluate(base, rate, prompts=prompts)))
    rows = {}
    for spec, fit in tqdm(fits.items(), desc="steered generation", leave=False):
        note = spec.split(":")[1]
        plan = build_plan(model, [fit.direction], [args.coef], [args.schedule], branch=args.branch)
        steered = list(generate_audio(model, prompts, plan, **gen)[:, 0])
        judge = NoteAccuracy(note)
        rows[note] = {"unsteered": float(np.mean(judge.evaluate(base, rate))),
                      "steered": float(np.mean(judge.evaluate(steered, rate))),
                      "frechet": fad.evaluate(steered, rate)[0],
                      "clap_unsteered": clap_base,
                      "clap": float(np.mean(clap.evaluate(steered, rate, prompts=prompts))),
                      "change": float(np.mean([np.linalg.norm(s - b) / max(np.linalg.norm(b), 1e-12)
                                               for s, b in zip(steered, base)]))}
    return rows


def run_model(name: str, clap: ClapScore, args) -> dict:
    start, load_start = time.time(), os.getloadavg()
    model, tokenizer = load_model(name, args.backend)
    finders = [default_finder()] + (["diffmean"] if default_finder() != "diffmean" else [])
    settings = {k: v for k, v in vars(args).items() if k not in ("model", "cache_dir", "report_only")}
    result = {"model": name, "finders": {}, "settings": settings, "clap_model": args.clap_model or RANDOM_CLAP}
    for finder in finders:
        aucs, fits = layer_aucs(model, finder, args, None)
        control, _ = layer_aucs(model, finder, args, [args.control_octave])
        result["finders"][finder] = {"aucs": aucs, "control_aucs": control,
                                     "steering": steer_table(model, tokenizer, fits, clap, args)}
        print(f"{name} {finder}: done in {time.time() - start:.0f} s", file=sys.stderr)
    result["seconds_total"] = round(time.time() - start, 1)
    result["load_average"] = {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]}
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
        load = res.get("load_average")
        load = f" at load average {load['start'][0]:.1f} -> {load['end'][0]:.1f} (1 min)" if load else ""
        lines += [f"## {name}", "", f"{s['prompts']} prompts x {s['seconds']} s ({decoding}), coefficient {s['coef']}, "
                  f"schedule `{s['schedule']}`, CFG branch {s['branch']}, guidance {s['guidance']}; total "
                  f"{res['seconds_total']} s{load}. CLAP: {res.get('clap_model', 'not measured')}. "
                  f"Command: `{res['command']}`", ""]
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
    out = [f"### {finder}: target-note accuracy and CLAP text adherence", "",
           "| note | unsteered | steered | CLAP unsteered | CLAP steered | CLAP steered - unsteered | "
           "Frechet (steered vs unsteered) | waveform change |", "|---|---|---|---|---|---|---|---|"]
    out += [f"| {n} | {r['unsteered']:.2f} | {r['steered']:.2f} | {_clap(r)} | {r['frechet']:.3g} | "
            f"{r['change']:.3g} |" for n, r in rows.items()]
    keys = ("unsteered", "steered", "frechet", "change", "clap_unsteered", "clap")
    means = {k: np.mean([r[k] for r in rows.values()]) for k in keys if all(k in r for r in rows.values())}
    out.append(f"| **mean** | **{means['unsteered']:.2f}** | **{means['steered']:.2f}** | {_clap(means, '**')} | "
               f"{means['frechet']:.3g} | {means['change']:.3g} |")
    return out + [""]


def _clap(row: dict, mark: str = "") -> str:
    """The three CLAP cells: unsteered, steered and their difference (dashes for runs made before CLAP)."""
    if "clap" not in row:
        return "- | - | -"
    cells = (f"{row['clap_unsteered']:.4f}", f"{row['clap']:.4f}", f"{row['clap'] - row['clap_unsteered']:+.2g}")
    return " | ".join(f"{mark}{cell}{mark}" for cell in cells)


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
    p.add_argument("--clap-model", help="CLAP folder or hub id, e.g. laion/clap-htsat-unfused (default: a tiny "
                   "CLAP with random weights, which measures nothing but the plumbing).")
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
        if not args.report_only:
            clap = ClapScore(args.clap_model or str(save_tiny_clap(Path(tmp) / "tiny-clap")))
        for name in [] if args.report_only else args.model:
            results[name] = run_model(name, clap, args)
    write_text_atomic(store, json.dumps(results, indent=1))
    write_text_atomic(OUT / "README.md", markdown(results))
    plot(results, OUT / "music_rfm.png")
    print((OUT / "README.md").read_text())


if __name__ == "__main__":
    main()
