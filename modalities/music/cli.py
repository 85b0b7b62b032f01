"""``polysteer music find | generate | eval``."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from polysteer.errors import PolysteerError
from polysteer.finder import make_finder
from polysteer.modalities.music.quiet import silence_third_party
from polysteer.option_types import (
    NONNEGATIVE_FLOAT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    CheckedChoice,
    CheckedFloat,
    Parsed,
    check_output_path,
    input_type,
    output_type,
)
from polysteer.options import (
    coef_option,
    direction_option,
    finder_option,
    finder_param_option,
    layers_option,
    model_options,
    output_option,
    resolve_layers,
    schedule_option,
    seed_option,
)

silence_third_party()  # before audiocraft (and so xformers) is imported by any command

backend_option = click.option("--backend", default="auto", show_default=True,
                              type=CheckedChoice(["auto", "transformers", "audiocraft"]),
                              help="MusicGen implementation to load the model with.")
#: Frame rate used to check schedule specs in seconds; the engine parses them again with the model's own.
FRAME_RATE = 50.0


@click.group()
def music():
    """Steer MusicGen: find note/chord directions, generate steered audio, evaluate audio."""


def _octaves(spec: str, option: str) -> list[int]:
    try:
        octaves = [int(part) for part in spec.split(",")]
    except ValueError:
        octaves = [-1]
    if not all(0 <= octave <= 8 for octave in octaves):
        raise PolysteerError(f"bad {option} {spec!r}: give comma-separated octaves from 0 to 8, e.g. '3,4'")
    return octaves


def _concept(spec: str, option: str) -> str:
    """The concept in its canonical spelling (``note:e`` -> ``note:E``), so duplicates are seen as such."""
    from polysteer.modalities.music.workflow import Concept

    try:
        return str(Concept.parse(spec))
    except PolysteerError as exc:
        raise PolysteerError(f"bad {option} {spec!r}: {exc}") from None


@music.command()
@click.option("--concept", "concepts", multiple=True, required=True, type=Parsed("concept", _concept),
              help="note:<pitch class> (note:E) or chord:<quality> (chord:minor); repeat for several.")
@model_options(required=True, help="Local path or hub id; tiny:transformers for a dry run.")
@backend_option
@finder_option(None, help="Registered finder (default: rfm if installed, else diffmean).")
@finder_param_option()
@layers_option(help="Decoder blocks to probe (default: all).")
@click.option("--top-k", type=POSITIVE_INT, help="Keep only the k layers with the best validation AUC.")
@click.option("--variants", default=2, show_default=True, type=POSITIVE_INT,
              help="Random variants of each synthetic clip.")
@click.option("--seconds", default=1.0, show_default=True, type=POSITIVE_FLOAT, help="Length of each synthetic clip.")
@click.option("--octaves", type=Parsed("octaves", _octaves),
              help="Octaves to render, e.g. '3,4' (default: notes 2-5, chords 3-4).")
@click.option("--val-fraction", default=0.25, show_default=True, type=CheckedFloat(0, 1, min_open=True, max_open=True),
              help="Held-out share for per-layer AUC.")
@seed_option()
@click.option("--cache-dir", type=output_type("dir"), help="Reuse activations saved here.")
@output_option("file-or-dir", help="Direction file for one concept; for several, a folder that gets one file per "
               "concept.")
def find(concepts, model_name, device, dtype, backend, finder, finder_params, layers, top_k, variants, seconds, octaves,
         val_fraction, seed, cache_dir, output):
    """Learn one direction per concept from synthetic notes/chords (every layer, AUC-weighted).

    RFM's kernel bandwidth is 10 activation units by default (MusicRFM's value); --finder-param bandwidth=median
    sets it from the data (the median distance between training points), which suits any layer's scale.
    docs/music.md also covers tempo directions and steering note, chord and tempo together.
    """
    from polysteer.modalities.music.modality import MusicModality
    from polysteer.modalities.music.models import load_music_model
    from polysteer.modalities.music.workflow import default_finder, find_concepts

    make_finder(finder or default_finder(), **finder_params)  # unknown parameters fail before the model loads
    several = len(set(concepts)) > 1
    check_output_path(output, "dir" if several else "file", "--output")
    model, _ = load_music_model(model_name, backend, device, dtype)
    layer_list = resolve_layers(layers, MusicModality().n_layers(model))
    fits = find_concepts(model, concepts, layer_list, finder, seconds, variants, val_fraction, top_k, seed,
                         cache_dir, octaves, **finder_params)
    for fit in fits.values():
        path = Path(output) / f"{fit.concept.slug}.safetensors" if len(fits) > 1 else Path(output)
        fit.direction.save(path)
        aucs = ", ".join(f"{hp.split('.')[2]}:{auc:.3f}" for hp, auc in fit.aucs.items())
        click.echo(f"wrote {path}: {fit.concept} ({fit.direction.finder['name']}); validation AUC by layer {aucs}")


@music.command()
@click.argument("prompt")
@direction_option(multiple=True)
@coef_option(1.0, help="Coefficient for directions without @COEF.")
@schedule_option(multiple=True, steps_per_second=FRAME_RATE,
                 help="One for all directions or one each, e.g. ramp:5s-15s, exp-decay:0.998, window:2s-4s; "
                      "crossfade two directions with decay:5s-10s and ramp:5s-10s.")
@click.option("--branch", default="both", show_default=True, type=CheckedChoice(["both", "cond", "uncond"]),
              help="Classifier-free-guidance half to steer.")
@click.option("--seconds", default=10.0, show_default=True, type=POSITIVE_FLOAT)
@model_options(help="Local path or hub id (default: the model the direction was made on).")
@backend_option
@seed_option()
@click.option("--guidance", default=3.0, show_default=True, type=NONNEGATIVE_FLOAT,
              help="Classifier-free guidance scale (1: none).")
@click.option("--greedy", is_flag=True, help="Greedy decoding instead of top-k sampling.")
@click.option("--force", is_flag=True, help="Use a direction made on another model with the same width.")
@click.option("--compare", is_flag=True,
              help="Also generate unsteered (same seed): write OUTPUT.unsteered.wav and OUTPUT.compare.png "
                   "(spectrograms, strength over time) and print where the codebook tokens diverge.")
@output_option(help="WAV file to write (the steered one).")
def generate(prompt, directions, coef, schedules, branch, seconds, model_name, device, dtype, backend, seed, guidance,
             greedy, force, compare, output):
    """Generate a WAV from a text PROMPT, steered by direction files.

    What to expect from tiny:transformers / tiny:audiocraft: their weights are random, so the audio is
    noise, and their codec ignores its codes: steered and unsteered WAVs match to about 1e-5 however strong
    the steering. Use --compare to see the steering anyway: it prints the first step whose codebook tokens
    differ and the share of steps that differ. With sampling, the tiny model's near-uniform logits hide
    most changes (the same seed draws the same token); --greedy shows them.
    """
    from polysteer.modalities.music.audio import write_wav
    from polysteer.modalities.music.generation import build_plan, generate_audio
    from polysteer.modalities.music.modality import MusicModality
    from polysteer.modalities.music.models import load_music_model

    _check_schedules(schedules, directions)
    if compare and not directions:
        raise PolysteerError("--compare sets steered against unsteered audio: give -d FILE[@COEF] too")
    loaded, model_name, backend = _load_directions(directions, coef, model_name, backend)
    strengths = _strengths(directions, loaded, schedules)
    model, tokenizer = load_music_model(model_name, backend, device, dtype)
    plan = build_plan(model, [d for d, _ in loaded], [c for _, c in loaded], list(schedules) or [None], branch,
                      force) if loaded else None
    settings = dict(seconds=seconds, tokenizer=tokenizer, seed=seed, sample=not greedy, guidance=guidance)
    runs = {"steered": plan, "unsteered": None} if compare else {"steered": plan}
    audio, tokens = {}, {}
    for name, run_plan in runs.items():
        tokens[name] = []
        audio[name] = generate_audio(model, [prompt], run_plan, tokens=tokens[name], **settings)[0]
    write_wav(output, audio["steered"], MusicModality().backend(model).sample_rate)
    click.echo(f"wrote {output}: {audio['steered'].shape[-1]} samples, {len(loaded)} direction(s)")
    if compare:
        _report_comparison(model, audio, tokens, strengths, output)


def _load_directions(directions: tuple, coef: float, model_name: str | None, backend: str):
    """``([(Direction, coefficient)], model name, backend)``: the model defaults to the first direction's."""
    from polysteer.direction import Direction

    loaded = [(Direction.load(path), coef if own is None else own) for path, own in directions]
    if not model_name and loaded:  # the model the first direction was made on
        model_name = loaded[0][0].model.get("name")
        if backend == "auto" and loaded[0][0].model.get("architecture", "").startswith("audiocraft"):
            backend = "audiocraft"
    if not model_name:
        raise PolysteerError("give --model (no direction names the model it was made on)")
    return loaded, model_name, backend


def _strengths(directions: tuple, loaded: list, schedules: tuple) -> list:
    """Each direction's label, coefficient and effective schedule, for the comparison plot."""
    from polysteer.modalities.music.compare import Strength

    return [Strength(Path(path).name, c, (schedules[i] if len(schedules) > 1 else schedules[0]) if schedules
                     else d.schedule) for i, ((path, _), (d, c)) in enumerate(zip(directions, loaded))]


def _report_comparison(model, audio: dict, tokens: dict, strengths: list, output: str) -> None:
    """Write the unsteered WAV and the PNG next to ``output``; print the token divergence."""
    from polysteer.modalities.music.audio import write_wav
    from polysteer.modalities.music.compare import companion_paths, divergence_summary, plot_comparison
    from polysteer.modalities.music.generation import token_divergence
    from polysteer.modalities.music.modality import MusicModality

    backend = MusicModality().backend(model)
    unsteered_path, png = companion_paths(output)
    write_wav(unsteered_path, audio["unsteered"], backend.sample_rate)
    divergence = token_divergence(tokens["steered"], tokens["unsteered"])
    steered, unsteered = (np.asarray(audio[k], dtype=np.float64).mean(0) for k in ("steered", "unsteered"))
    plot_comparison(png, steered, unsteered, backend.sample_rate, strengths, divergence, backend.frame_rate)
    click.echo(f"wrote {unsteered_path} (unsteered, same seed) and {png}")
    click.echo(divergence_summary(divergence, backend.frame_rate, float(np.abs(steered - unsteered).max())))


def _check_schedules(schedules: tuple[str, ...], directions: tuple) -> None:
    """One schedule for all directions or one each, and none without a direction (it would be ignored)."""
    if schedules and not directions:
        raise PolysteerError("--schedule applies to steering directions: give -d FILE[@COEF] too")
    if len(schedules) > 1 and len(schedules) != len(directions):
        raise PolysteerError(f"got {len(schedules)} --schedule values for {len(directions)} directions; "
                             "give one for all or one each")


@music.command(name="eval")
@click.argument("files", nargs=-1, required=True, type=input_type())
@click.option("--target-note", help="Score the share of clips whose dominant pitch class is this (e.g. E).")
@click.option("--target-chord", help="Score clips against a chord, ROOT:QUALITY (e.g. C:major).")
@click.option("--tempo", is_flag=True, help="Estimate each clip's tempo.")
@click.option("--reference", "references", multiple=True, type=input_type(),
              help="Reference WAVs (e.g. unsteered) for the Frechet distance on the model's EnCodec embeddings.")
@click.option("--metric", "metrics", multiple=True, type=CheckedChoice(["clap"]),
              help="clap: text adherence, the cosine of CLAP's embeddings of --prompt and of each clip.")
@click.option("--prompt", "prompts", multiple=True, help="Text the clips were generated from, for --metric clap: "
              "one for all clips or one each (repeat).")
@click.option("--clap-model", help="CLAP folder or hub id for --metric clap [default: laion/clap-htsat-unfused].")
@model_options(help="Model whose audio encoder embeds clips (needed with --reference).")
@backend_option
def evaluate(files, target_note, target_chord, tempo, references, metrics, prompts, clap_model, model_name, device,
             dtype, backend):
    """Measure FILES: target note/chord accuracy, tempo, CLAP text adherence, and a Frechet distance to
    --reference clips."""
    from polysteer.modalities.music.audio import read_audio
    from polysteer.modalities.music.evaluators import ChordAccuracy, NoteAccuracy, TempoEstimate

    if not (target_note or target_chord or tempo or references or metrics):
        raise PolysteerError("nothing to measure: give --target-note, --target-chord, --tempo, --metric or --reference")
    _check_clap_options(metrics, prompts, clap_model, len(files))
    judges = {"note-accuracy": target_note and NoteAccuracy(target_note),
              "chord-accuracy": target_chord and ChordAccuracy(target_chord), "tempo": tempo and TempoEstimate()}
    for path in (*files, *references) if references else ():  # a bad clip fails before the model loads
        read_audio(path)
    model, rate = _embedding_model(model_name, backend, device, dtype) if references else (None, None)
    clips = [read_audio(path, rate) for path in files]
    rate = rate or clips[0][1]
    if any(r != rate for _, r in clips):
        raise PolysteerError("clips have different sample rates; pass --model to resample them to its rate")
    audio = [a for a, _ in clips]
    scores = {name: judge.evaluate(audio, rate) for name, judge in judges.items() if judge}
    if references:
        from polysteer.modalities.music.evaluators import FrechetAudioDistance

        reference = [read_audio(path, rate)[0] for path in references]
        scores["frechet-audio"] = FrechetAudioDistance(model, reference, rate).evaluate(audio, rate)
    if "clap" in metrics:
        from polysteer.modalities.music.clap import DEFAULT_CLAP, ClapScore

        scores["clap"] = ClapScore(clap_model or DEFAULT_CLAP, device).evaluate(audio, rate, prompts=prompts)
    for i, path in enumerate(files):
        click.echo(json.dumps({"file": str(path), **{k: v[i] for k, v in scores.items()}}))
    click.echo(json.dumps({"mean": {k: float(np.mean(v)) for k, v in scores.items()}}))


def _check_clap_options(metrics: tuple, prompts: tuple, clap_model: str | None, n_files: int) -> None:
    """--prompt and --clap-model go with --metric clap; one prompt for all clips or one each; the CLAP exists."""
    if "clap" not in metrics:
        if prompts or clap_model:
            raise PolysteerError("--prompt and --clap-model are for CLAP text adherence: add --metric clap")
        return
    if len(prompts) not in (1, n_files):
        raise PolysteerError(f"--metric clap needs the text the clips were generated from: give --prompt once for "
                             f"all {n_files} clips or once each (got {len(prompts)})")
    from polysteer.hub import resolve_model_source
    from polysteer.modalities.music.clap import DEFAULT_CLAP

    resolve_model_source(clap_model or DEFAULT_CLAP)  # a missing folder or uncached id fails before any model loads


def _embedding_model(model_name: str | None, backend: str, device: str, dtype: str):
    """The model whose EnCodec embeds clips for the Frechet distance, and its sample rate."""
    if not model_name:
        raise PolysteerError("--reference needs --model: the Frechet distance uses its EnCodec embeddings")
    from polysteer.modalities.music.modality import MusicModality
    from polysteer.modalities.music.models import load_music_model

    model, _ = load_music_model(model_name, backend, device, dtype)
    return model, MusicModality().backend(model).sample_rate
