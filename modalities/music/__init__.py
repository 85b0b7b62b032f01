"""The music modality: MusicGen (transformers and audiocraft), concept directions from synthetic audio, steered
generation, audio evaluators and ``polysteer music``.

``from polysteer.modalities import music``, then ``model, tokenizer = music.load_model("tiny:transformers")``,
``music.find_concepts(model, ["note:E"])``, ``music.generate_audio(model, prompts, plan, tokenizer=tokenizer)``.
Names load on first use.
"""

from polysteer.hookspecs import hookimpl
from polysteer.lazy import lazy_exports
from polysteer.modalities.music.modality import MusicModality

_EXPORTS = {
    "load_model": ".models:load_music_model",
    **dict.fromkeys(("TINY", "tiny_musicgen"), ".models"),
    "collect_audio": ".capture",
    **dict.fromkeys(("build_plan", "generate_audio", "token_divergence"), ".generation"),
    **dict.fromkeys(("Concept", "ConceptFit", "concept_clips", "default_finder", "find_concepts", "fit_concept"),
                    ".workflow"),
    **dict.fromkeys(("CHORD_QUALITIES", "PITCH_CLASSES", "Clip", "chords", "notes", "render"), ".synth"),
    **dict.fromkeys(("ChordAccuracy", "FrechetAudioDistance", "NoteAccuracy", "NoteShare", "TempoEstimate"),
                    ".evaluators"),
    **dict.fromkeys(("read_audio", "write_wav"), ".audio"),
    **dict.fromkeys(("ClapScore", "save_tiny_clap"), ".clap"),
    **dict.fromkeys(("TEMPO_BPMS", "TempoConcept", "find_tempo", "tempo_clips"), ".compose"),
    **dict.fromkeys(("chromagram", "estimate_chord", "estimate_note", "estimate_tempo"), ".dsp"),
}
__all__ = sorted([*_EXPORTS, "MusicModality"])
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


@hookimpl
def register_modalities(register):
    register(MusicModality)


@hookimpl
def register_evaluators(register):
    from polysteer.modalities.music.clap import ClapScore
    from polysteer.modalities.music.evaluators import EVALUATORS

    for evaluator in (*EVALUATORS, ClapScore):
        register(evaluator)


@hookimpl
def register_commands(cli):
    from polysteer.modalities.music.cli import music

    cli.add_command(music)
