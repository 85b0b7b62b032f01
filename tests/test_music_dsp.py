"""Synthetic concept audio and the audio evaluators: chroma note/chord accuracy, tempo, Frechet distance, WAV I/O."""

import numpy as np
import pytest

from polysteer import PolysteerError, registry
from polysteer.modalities.music import dsp, synth
from polysteer.modalities.music.audio import read_audio, write_wav
from polysteer.modalities.music.evaluators import (
    ChordAccuracy,
    NoteAccuracy,
    NoteShare,
    TempoEstimate,
    frechet_distance,
)

SR = 16000


@pytest.fixture(scope="module")
def notes():
    return synth.notes(SR, seconds=0.6, variants=2, seed=3)


@pytest.fixture(scope="module")
def chords():
    """Every chord clip with its estimated (root, quality)."""
    clips = synth.chords(SR, seconds=0.4, seed=3)
    return [(clip, dsp.estimate_chord(clip.audio, SR)) for clip in clips]


def test_note_set_covers_classes_octaves_and_timbres(notes):
    assert len(notes) == 12 * 4 * len(synth.TIMBRES) * 2
    assert {c.labels["pitch_class"] for c in notes} == set(synth.PITCH_CLASSES)
    assert {c.labels["timbre"] for c in notes} == set(synth.TIMBRES)
    for clip in notes[:20]:
        assert clip.audio.dtype == np.float32 and len(clip.audio) == int(0.6 * SR)
        assert 0.4 < np.abs(clip.audio).max() <= 0.9


def test_tone_has_the_requested_pitch():
    audio = synth.tone(69, 1.0, SR, "sine")  # A4
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.fft.rfftfreq(len(audio), 1 / SR)[spectrum.argmax()] == pytest.approx(440.0, abs=1.0)


@pytest.mark.parametrize("name, index", [("C", 0), ("E", 4), ("F#", 6), ("Bb", 10), ("b", 11)])
def test_pitch_class_names(name, index):
    assert synth.pitch_class(name) == index


def test_bad_pitch_class_names_the_choices():
    with pytest.raises(PolysteerError, match="use one of C, C#"):
        synth.pitch_class("H")


def test_note_accuracy_on_synthetic_notes(notes):
    hits = [NoteAccuracy(c.labels["pitch_class"]).evaluate([c.audio], SR)[0] for c in notes]
    assert np.mean(hits) >= 0.95
    # the evaluator really discriminates: the wrong target scores (almost) never
    misses = [NoteAccuracy(synth.PITCH_CLASSES[(synth.pitch_class(c.labels["pitch_class"]) + 5) % 12])
              .evaluate([c.audio], SR)[0] for c in notes]
    assert np.mean(misses) <= 0.05


def test_chord_accuracy_on_synthetic_chords(chords):
    hits = [ChordAccuracy(f"{c.labels['root']}:{c.labels['quality']}").evaluate([c.audio], SR)[0]
            for c, _ in chords[::4]]
    assert np.mean(hits) >= 0.95
    by_quality = {}
    for clip, (root, quality) in chords:
        truth = dsp.chord_pitch_classes(synth.pitch_class(clip.labels["root"]), clip.labels["quality"])
        by_quality.setdefault(clip.labels["quality"], []).append(dsp.chord_pitch_classes(root, quality) == truth)
    assert len(by_quality) == len(synth.CHORD_QUALITIES)
    assert np.mean([hit for v in by_quality.values() for hit in v]) >= 0.95
    assert min(np.mean(v) for v in by_quality.values()) >= 0.9


def test_chord_root_pitch_class_of_unambiguous_chords(chords):
    clear = [(c, root) for c, (root, _) in chords if c.labels["quality"] in ("major", "minor", "dominant7", "major7")]
    assert np.mean([root == synth.pitch_class(c.labels["root"]) for c, root in clear]) >= 0.95


def test_note_share_counts_frames():
    first, second = synth.tone(64, 2.0, SR, "saw"), synth.tone(60, 2.0, SR, "saw")  # E4 then C4
    share = NoteShare("E").evaluate([np.concatenate([first, second])], SR)[0]
    assert 0.3 < share < 0.7
    assert NoteShare("E").evaluate([first], SR)[0] == 1.0


@pytest.mark.parametrize("bpm", [72, 100, 120, 150])
def test_tempo_estimate(bpm):
    clip = synth.tempos(SR, bpms=[bpm], seconds=6.0)[0]
    assert TempoEstimate().evaluate([clip.audio], SR)[0] == pytest.approx(bpm, rel=0.03)


def test_intervals_and_scales_carry_their_labels():
    intervals = synth.intervals(SR, seconds=0.3, timbres=("sine",))
    assert len(intervals) == 12 * 12 and {c.labels["semitones"] for c in intervals} == set(range(1, 13))
    scales = synth.scales(SR, note_seconds=0.1, timbres=("sine",))
    major_c = next(c for c in scales if c.labels["mode"] == "major" and c.labels["root"] == "C")
    per_note = np.split(major_c.audio, 7)
    assert [dsp.estimate_note(n, SR) for n in per_note] == [0, 2, 4, 5, 7, 9, 11]


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    shifted = a + np.array([2.0, 0.0, 0.0])
    assert frechet_distance(a, shifted) == pytest.approx(4.0, rel=1e-6)
    # 1-D closed form: (mu1 - mu2)^2 + (s1 - s2)^2
    b = rng.standard_normal((4000, 1)) * 3.0 + 1.0
    c = rng.standard_normal((4000, 1))
    expected = (b.mean() - c.mean()) ** 2 + (b.std(ddof=1) - c.std(ddof=1)) ** 2
    assert frechet_distance(b, c) == pytest.approx(expected, rel=1e-6)


def test_wav_round_trip_and_dataset(tmp_path):
    clip = synth.notes(SR, seconds=0.2, octaves=(4,), timbres=("sine",))[0]
    path = write_wav(tmp_path / "a.wav", clip.audio, SR)
    audio, rate = read_audio(path)
    assert rate == SR and np.allclose(audio, clip.audio)
    stereo = write_wav(tmp_path / "s.wav", np.stack([clip.audio, 0 * clip.audio]), SR)
    assert np.allclose(read_audio(stereo)[0], clip.audio / 2)
    half, rate = read_audio(path, sample_rate=SR // 2)
    assert rate == SR // 2 and abs(len(half) - len(clip.audio) // 2) <= 1
    index = synth.write_dataset(synth.notes(SR, seconds=0.1, octaves=(4,), timbres=("sine",)), tmp_path / "set")
    assert len(index.read_text().splitlines()) == 12 and len(list((tmp_path / "set").glob("*.wav"))) == 12
    assert not list(tmp_path.rglob("*.tmp"))


def test_read_audio_errors(tmp_path):
    with pytest.raises(PolysteerError, match="does not exist"):
        read_audio(tmp_path / "missing.wav")
    (tmp_path / "bad.wav").write_text("not audio")
    with pytest.raises(PolysteerError, match="cannot read"):
        read_audio(tmp_path / "bad.wav")


def test_evaluators_are_registered_for_music():
    reg = registry("evaluators")
    for name in ("note-accuracy", "note-share", "chord-accuracy", "tempo", "frechet-audio"):
        assert reg[name].modalities == ("music",)
