"""Steer a note, a chord quality and a tempo together in ONE MusicGen generation.

Three directions are learnt from synthetic audio (``note:E`` from notes, ``chord:minor`` from chords, ``tempo:fast``
from click tracks; one probe per decoder layer, AUC-weighted), saved as direction files, and composed into one plan in
which each has its own coefficient and schedule (defaults: the note constant, the chord decaying as MusicRFM's
``exp-decay:0.998``, the tempo ramping in over the first 2 s). The model then generates the prompt twice from the same
seed, unsteered and steered; both WAVs are written with soundfile and scored for the target note, the target chord
(the note as root with the chord quality, e.g. ``E:minor``), the tempo, and optionally CLAP text adherence.

Usage (real weights: a local folder or hub id; the tiny random model runs anywhere in about a minute)::

    .venv/bin/python examples/music_multi_property.py --model facebook/musicgen-small --output-dir out/multi
    .venv/bin/python examples/music_multi_property.py --model tiny:transformers --greedy --seconds 2 -o out/tiny

The saved files also compose on the command line::

    polysteer music generate "lofi piano beat" -d out/multi/note_E.safetensors@2 \\
        -d out/multi/chord_minor.safetensors@1 -d out/multi/tempo_fast.safetensors@1.5 \\
        --schedule constant --schedule exp-decay:0.998 --schedule ramp:0s-2s --compare -o steered.wav

On the tiny random models the audio is noise and their codec ignores its codes, so the scores do not move; the
token divergence in ``summary.json`` shows that the steering acted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from polysteer import write_json_atomic
from polysteer.modalities.music import (
    ChordAccuracy,
    ClapScore,
    Concept,
    MusicModality,
    NoteAccuracy,
    TempoEstimate,
    build_plan,
    find_concepts,
    find_tempo,
    generate_audio,
    load_model,
    token_divergence,
    write_wav,
)


def find_properties(model, args) -> list[dict]:
    """The three fits with their coefficient and schedule, in note, chord, tempo order."""
    note, chord = str(Concept.parse(f"note:{args.note}")), str(Concept.parse(f"chord:{args.chord}"))
    octaves = [int(o) for o in args.octaves.split(",")] if args.octaves else None
    fits = find_concepts(model, [note, chord], finder=args.finder, seconds=args.concept_seconds,
                         variants=args.variants, seed=args.seed, octaves=octaves)
    tempo = find_tempo(model, args.tempo, finder=args.finder, seconds=args.tempo_seconds, variants=args.variants,
                       seed=args.seed)
    return [{"fit": fits[note], "coefficient": args.note_coef, "schedule": args.note_schedule},
            {"fit": fits[chord], "coefficient": args.chord_coef, "schedule": args.chord_schedule},
            {"fit": tempo, "coefficient": args.tempo_coef, "schedule": args.tempo_schedule}]


def score(audio: dict[str, np.ndarray], rate: int, args) -> dict[str, dict[str, float]]:
    """Per run: target-note and target-chord accuracy, tempo (BPM), and CLAP if ``--clap-model`` is given."""
    note = Concept.parse(f"note:{args.note}").value
    judges = {"note-accuracy": NoteAccuracy(note), "chord-accuracy": ChordAccuracy(f"{note}:{args.chord}"),
              "tempo": TempoEstimate()}
    if args.clap_model:
        judges["clap"] = ClapScore(args.clap_model)
    return {run: {name: judge.evaluate([clip], rate, prompts=[args.prompt])[0] for name, judge in judges.items()}
            for run, clip in audio.items()}


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_model(args.model, args.backend)
    properties = find_properties(model, args)
    for prop in properties:
        prop["fit"].direction.save(out / f"{prop['fit'].concept.slug}.safetensors")
    plan = build_plan(model, [p["fit"].direction for p in properties], [p["coefficient"] for p in properties],
                      [p["schedule"] for p in properties])
    settings = dict(seconds=args.seconds, tokenizer=tokenizer, seed=args.seed, sample=not args.greedy,
                    guidance=args.guidance)
    audio, tokens = {}, {"steered": [], "unsteered": []}
    for run, run_plan in (("unsteered", None), ("steered", plan)):
        audio[run] = generate_audio(model, [args.prompt], run_plan, tokens=tokens[run], **settings)[0]
    rate = MusicModality().backend(model).sample_rate
    for run, clip in audio.items():
        write_wav(out / f"{run}.wav", clip, rate)
    divergence = token_divergence(tokens["steered"], tokens["unsteered"])
    summary = {"model": args.model, "prompt": args.prompt, "seconds": args.seconds,
               "properties": [{"concept": str(p["fit"].concept), "coefficient": p["coefficient"],
                               "schedule": p["schedule"], "val_auc": p["fit"].aucs} for p in properties],
               "scores": score(audio, rate, args),
               "token_divergence": {"first_step": divergence.first, "fraction": divergence.fraction}}
    write_json_atomic(out / "summary.json", summary)
    print(json.dumps(summary["scores"], indent=1))
    print(f"tokens differ at {divergence.fraction:.0%} of the steps; wrote {out}/steered.wav, unsteered.wav, "
          "three direction files and summary.json")
    return summary


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny:transformers", help="Local folder, hub id, or tiny:transformers.")
    p.add_argument("--backend", default="auto", choices=["auto", "transformers", "audiocraft"])
    p.add_argument("--prompt", default="lofi piano beat")
    p.add_argument("--note", default="E", help="Target pitch class.")
    p.add_argument("--chord", default="minor", help="Target chord quality (the note is its root).")
    p.add_argument("--tempo", default="fast", choices=["fast", "slow"])
    for name, coef, schedule in (("note", 2.0, "constant"), ("chord", 1.0, "exp-decay:0.998"),
                                 ("tempo", 1.5, "ramp:0s-2s")):
        p.add_argument(f"--{name}-coef", type=float, default=coef)
        p.add_argument(f"--{name}-schedule", default=schedule)
    p.add_argument("--seconds", type=float, default=10.0, help="Length of the generated clip.")
    p.add_argument("--concept-seconds", type=float, default=1.0, help="Length of each synthetic note and chord.")
    p.add_argument("--tempo-seconds", type=float, default=4.0, help="Length of each synthetic click track.")
    p.add_argument("--variants", type=int, default=2, help="Random variants of each synthetic clip.")
    p.add_argument("--octaves", help="Octaves of the synthetic notes and chords, e.g. '3,4'.")
    p.add_argument("--finder", help="Registered finder (default: rfm if installed, else diffmean).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--greedy", action="store_true", help="Greedy decoding (shows the tiny models' steering).")
    p.add_argument("--clap-model", help="CLAP folder or hub id (laion/clap-htsat-unfused) to score text adherence.")
    p.add_argument("-o", "--output-dir", required=True)
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
