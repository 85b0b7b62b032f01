"""CLAP text adherence on a tiny random CLAP saved to a folder and loaded through ``from_pretrained``."""

import json

import numpy as np
import pytest
import torch
from transformers import ClapModel, ClapProcessor

from polysteer import PolysteerError
from polysteer.modalities.music.audio import read_audio, write_wav
from polysteer.modalities.music.clap import ClapScore, save_tiny_clap

PROMPTS = ["a calm piano melody", "rock band with drums", "ambient synth pads"]


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    return save_tiny_clap(tmp_path_factory.mktemp("tiny-clap"))


@pytest.fixture(scope="module")
def clap(clap_dir):
    return ClapScore(str(clap_dir), device="cpu")


def clips(rate: int = 16000) -> list[np.ndarray]:
    t = np.arange(rate) / rate
    noise = np.random.default_rng(0).standard_normal(rate // 2) * 0.2
    return [np.sin(2 * np.pi * 440 * t), noise, np.stack([np.sin(2 * np.pi * 220 * t)] * 2)]  # mono, short, stereo


def test_scores_are_the_models_own_cosines(clap, clap_dir):
    """The score is CLAP's text-audio cosine as ClapModel's forward computes it (logits / logit scale)."""
    scores = clap.evaluate(clips(), 16000, prompts=PROMPTS)
    assert all(np.isfinite(scores)) and all(-1 <= s <= 1 for s in scores)
    model, processor = ClapModel.from_pretrained(clap_dir).eval(), ClapProcessor.from_pretrained(clap_dir)
    audio = [clap.prepare(a, 16000) for a in clips()]
    assert all(len(a) == 48000 // 2 * (2 if i != 1 else 1) for i, a in enumerate(audio))  # 48 kHz
    text = processor.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    features = processor.feature_extractor(audio, sampling_rate=48000, return_tensors="pt")
    with torch.no_grad():
        out = model(**text, **features)
    cosines = (out.logits_per_audio / model.logit_scale_a.exp()).diagonal()
    assert scores == pytest.approx(cosines.tolist(), abs=1e-5)


def test_matched_prompt_beats_a_mismatched_one(clap):
    """Built so: each clip's matched prompt is the one CLAP's embeddings rank first, and the evaluator agrees."""
    audio = clips()
    text, sound = clap.embed_text(PROMPTS), clap.embed_audio(audio, 16000)
    best = (sound @ text.T).argmax(1)
    worst = (sound @ text.T).argmin(1)
    matched = clap.evaluate(audio, 16000, prompts=[PROMPTS[i] for i in best])
    mismatched = clap.evaluate(audio, 16000, prompts=[PROMPTS[i] for i in worst])
    assert all(m > w for m, w in zip(matched, mismatched))


def test_resampled_and_native_rate_audio_score_alike(clap):
    """The same tone at 16 kHz and at CLAP's 48 kHz scores the same (resampling is exact for a pure tone)."""
    tone = lambda rate: np.sin(2 * np.pi * 440 * np.arange(rate) / rate)  # noqa: E731
    low = clap.evaluate([tone(16000)], 16000, prompts="a tone")
    high = clap.evaluate([tone(48000)], 48000, prompts="a tone")
    assert low == pytest.approx(high, abs=1e-3)


def test_bad_input(clap, tmp_path):
    with pytest.raises(PolysteerError, match="2 prompts for 3 clips"):
        clap.evaluate(clips(), 16000, prompts=PROMPTS[:2])
    with pytest.raises(PolysteerError, match="does not exist"):
        ClapScore(str(tmp_path / "missing"))


def test_music_eval_metric_clap(clap_dir, clap, tmp_path, invoke):
    paths = [str(write_wav(tmp_path / f"{i}.wav", a, 16000)) for i, a in enumerate(clips())]
    out = invoke("music", "eval", *paths, "--metric", "clap", "--prompt", PROMPTS[0], "--clap-model", str(clap_dir))
    # weight-loading progress bars share the captured output (and a line, through carriage returns)
    rows = [json.loads(line[line.index('{"'):]) for line in out.output.splitlines() if '{"' in line]
    expected = clap.evaluate([read_audio(path)[0] for path in paths], 16000, prompts=PROMPTS[0])
    assert [r["clap"] for r in rows[:-1]] == pytest.approx(expected, abs=1e-4)
    assert rows[-1]["mean"]["clap"] == pytest.approx(np.mean(expected), abs=1e-4)


@pytest.mark.parametrize("args, message", [
    (["--metric", "clap"], "give --prompt once"),
    (["--tempo", "--prompt", "x"], "add --metric clap"),
    (["--metric", "clap", "--prompt", "x", "--clap-model", "/no/such/clap"], "does not exist"),
])
def test_music_eval_clap_bad_input(args, message, tmp_path, invoke):
    path = str(write_wav(tmp_path / "a.wav", clips()[0], 16000))
    with pytest.raises(PolysteerError, match=message):
        invoke("music", "eval", path, path, *args)
