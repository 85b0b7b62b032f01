"""Detection and monitoring: detectors, pooling, AUROC/F1, the `detector` evaluator and `polysteer detect`."""

import json
import random

import pytest
import torch
from tiny import axis_sae, tiny_model, tiny_tokenizer

from polysteer import PolysteerError, registry
from polysteer.cli import main
from polysteer.modalities.text.detect import score_texts, text_activations
from polysteer.modalities.text.evaluators.detector import DetectorScore
from polysteer.plugins.detection.scoring import (
    DirectionDetector,
    FeatureDetector,
    FinderDetector,
    TokenActivations,
    best_f1_threshold,
    detection_metrics,
    feature_codes,
    pool_tokens,
)
from polysteer.plugins.sae.model import SAE

HP = "text.blocks.1.resid_post"


def synthetic(n: int = 400, tokens: int = 5, d: int = 16, gap: float = 3.0, seed: int = 0):
    """Passages whose tokens are shifted by ``gap`` along axis 0 when the label is 1."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    owner = torch.arange(n).repeat_interleave(tokens)
    acts = torch.randn(n * tokens, d, generator=g)
    acts[:, 0] += gap * labels[owner]
    return TokenActivations(acts, owner, n), labels


def test_pool_tokens_mean_and_max():
    values = torch.tensor([1.0, 3.0, -2.0, 5.0, 0.0])
    owner = torch.tensor([0, 0, 1, 2, 2])
    assert pool_tokens(values, owner, 3).tolist() == [2.0, -2.0, 2.5]
    assert pool_tokens(values, owner, 3, "max").tolist() == [3.0, -2.0, 5.0]
    assert pool_tokens(torch.stack([values, -values], 1), owner, 3, "max")[:, 1].tolist() == [-1.0, 2.0, 0.0]
    with pytest.raises(PolysteerError, match="at least one token"):
        pool_tokens(values, owner, 4)
    with pytest.raises(PolysteerError, match="unknown pooling"):
        pool_tokens(values, owner, 3, "median")


def test_select_and_outliers_keep_passages_whole():
    tokens = TokenActivations(torch.tensor([[1.0], [100.0], [2.0], [200.0]]), torch.tensor([0, 0, 1, 2]), 3)
    picked = tokens.select([2, 0])
    assert picked.n_passages == 2 and picked.owner.tolist() == [1, 1, 0] and picked.acts[:, 0].tolist() == [1, 100, 200]
    clean = tokens.without_outliers(50.0)  # passage 2 has only an outlier: it keeps it rather than vanish
    assert clean.acts[:, 0].tolist() == [1.0, 2.0, 200.0] and clean.pool().flatten().tolist() == [1.0, 2.0, 200.0]


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_every_detector_separates_separable_data_and_not_shuffled_labels(pooling):
    tokens, labels = synthetic()
    train, test = torch.arange(0, 200), torch.arange(200, 400)
    pooled = tokens.select(train).pool()
    detectors = {"direction": DirectionDetector(torch.eye(16)[0]),
                 "feature": FeatureDetector(axis_sae(hook_point=None), 0)}
    detectors.update({name: FinderDetector.fit(name, pooled, labels[train]) for name in ("diffmean", "probe", "rfm")})
    for name, detector in detectors.items():
        scores = detector.passage_scores(tokens.select(test), pooling)
        assert detection_metrics(scores, labels[test]).auroc > 0.97, name
        shuffled = labels[test][torch.randperm(200, generator=torch.Generator().manual_seed(1))]
        assert abs(detection_metrics(scores, shuffled).auroc - 0.5) < 0.1, name


def test_a_finder_fitted_on_tokens_sees_token_rows_and_pools_its_token_scores():
    tokens, labels = synthetic(n=40)
    seen = []

    def spy(X_pos, X_neg):
        seen.append((len(X_pos), len(X_neg)))
        return X_pos.mean(0) - X_neg.mean(0)

    detector = FinderDetector.fit(spy, tokens, labels)
    assert seen == [(100, 100)] and detector.fitted_on == "tokens"
    assert torch.allclose(detector.passage_scores(tokens), tokens.pool(detector.token_scores(tokens.acts)))
    with pytest.raises(PolysteerError, match="39 labels for 40 passages"):
        FinderDetector.fit(spy, tokens, labels[:39])


def test_sae_contrast_detects_from_token_rows():
    tokens, labels = synthetic()
    tokens.acts[:, 0] -= 1.5  # centred on 0, so latent 0 fires mostly on positives: sparse, as SAE latents are
    train, test = torch.arange(0, 200), torch.arange(200, 400)
    detector = FinderDetector.fit("sae_contrast", tokens.select(train), labels[train], sae=axis_sae(hook_point=None))
    assert detector.finder.features_[0] == 0  # latent 0 reads +axis 0, where the positives' tokens are shifted
    assert detection_metrics(detector.passage_scores(tokens.select(test)), labels[test]).auroc > 0.97


def test_metrics_and_best_f1_threshold():
    scores, labels = [0.1, 0.4, 0.35, 0.8, 0.9], [0, 0, 1, 1, 1]
    assert best_f1_threshold(scores, labels) == pytest.approx(0.35)
    best = detection_metrics(scores, labels)
    assert best.auroc == pytest.approx(5 / 6) and best.oracle_f1 == pytest.approx(6 / 7)
    assert best.threshold_source == "cross-validated" and best.threshold == pytest.approx(0.35)
    fixed = detection_metrics(scores, labels, threshold=0.85)
    assert fixed.threshold == 0.85 and fixed.precision == 1.0 and fixed.recall == pytest.approx(1 / 3)
    assert fixed.threshold_source == "given"
    one_negative = detection_metrics([0.1, 0.5, 0.9], [0, 1, 1])
    assert one_negative.threshold_source == "oracle" and one_negative.f1 == one_negative.oracle_f1 == 1.0


def test_f1_is_never_scored_at_a_threshold_chosen_on_the_same_texts():
    """On scores unrelated to the labels the best threshold in hindsight looks good; held-out calls do not."""
    labels = (torch.arange(40) % 5 == 0).int()
    for seed in range(4):
        metrics = detection_metrics(torch.rand(40, generator=torch.Generator().manual_seed(seed)), labels)
        assert metrics.threshold_source == "cross-validated"
        assert metrics.oracle_f1 > metrics.f1 + 0.03
    with pytest.raises(PolysteerError, match="both present"):
        detection_metrics([0.1, 0.2], [1, 1])
    with pytest.raises(PolysteerError, match="2 scores for 3 labels"):
        detection_metrics([0.1, 0.2], [1, 0, 1])


def test_feature_codes_match_single_feature_detectors():
    tokens, _ = synthetic(n=20)
    sae = axis_sae(hook_point=None)
    for pooling in ("mean", "max"):
        codes = feature_codes(sae, tokens, pooling, batch_size=7)
        for feature in (0, 3, 16):
            assert torch.allclose(codes[:, feature], FeatureDetector(sae, feature).passage_scores(tokens, pooling))


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return tiny_model("llama"), tiny_tokenizer()


def test_text_scores_read_only_the_text_after_its_prompt(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    vector = torch.randn(32, generator=torch.Generator().manual_seed(0))
    evaluator = registry("evaluators")["detector"](model, tokenizer, DirectionDetector(vector), HP)
    assert isinstance(evaluator, DetectorScore)
    got = evaluator.evaluate(["the ocean is big"], prompts=["tell me about the sea"])
    prefix, body = tokenizer("tell me about the sea", add_special_tokens=False).input_ids, \
        tokenizer("the ocean is big", add_special_tokens=False).input_ids
    with torch.no_grad():
        hidden = model(torch.tensor([prefix + body]), output_hidden_states=True).hidden_states[2][0]
    expected = hidden[len(prefix):].mean(0) @ (vector / vector.norm())
    assert got[0] == pytest.approx(float(expected), abs=1e-5)
    tokens = text_activations(model, tokenizer, ["the ocean", "a b c d"], HP)
    assert torch.bincount(tokens.owner).tolist() == [1, 3]  # the first token of each text is skipped
    max_scores = score_texts(model, tokenizer, ["a b c d"], DirectionDetector(vector), HP, "max")
    assert float(max_scores[0]) == pytest.approx(float((tokens.acts[1:] @ (vector / vector.norm())).max()), abs=1e-5)


@pytest.fixture(scope="module")
def files(model_and_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("detect")
    model, tokenizer = model_and_tokenizer
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    rng = random.Random(0)
    fillers = "the a of and is was my good big small new old day week".split()
    for name, n in (("train", 24), ("test", 16)):
        rows = []
        for i in range(n):
            words = ["ocean", "sea", "wave", "beach"] if i % 2 else ["city", "train", "school", "job"]
            text = " ".join(rng.choice(words if j % 2 else fillers) for j in range(10))
            rows.append({"text": text, "label": i % 2})
        (root / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (root / "plain.txt").write_text("the ocean and the sea\nthe city and the train\nmy good day\n")
    sae = SAE(32, 8, "topk", k=2, metadata={"hook_name": HP})
    sae.save(root / "sae")
    return root


def test_detect_with_a_fitted_probe_reports_auroc_and_writes_scores(files, invoke):
    out = files / "scores.json"
    result = invoke("detect", "--model", files / "model", "--finder", "diffmean", "--train", files / "train.jsonl",
                    "--texts", files / "test.jsonl", "--hook-point", HP, "-o", out)
    assert result.exit_code == 0, result.output
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("AUROC")][0]
    auroc = float(line.split()[1])
    assert auroc > 0.9 and "(each text called at a threshold chosen on the other folds;" in line
    assert line.endswith("8 positive, 8 negative")
    data = json.loads(out.read_text())
    assert data["metrics"]["auroc"] == pytest.approx(auroc, abs=1e-4) and len(data["texts"]) == 16
    assert data["detector"]["finder"] == "diffmean" and data["detector"]["hook_point"] == HP
    assert {row["label"] for row in data["texts"]} == {0, 1}
    assert [row["predicted"] for row in data["texts"]] == [int(r["score"] >= data["threshold"]) for r in data["texts"]]
    assert [p.name for p in files.iterdir() if p.name.endswith(".tmp")] == []


def test_detect_feature_plain_text_and_threshold(files, invoke):
    result = invoke("detect", "--model", files / "model", "--feature", 3, "--sae", files / "sae", "--texts",
                    files / "plain.txt", "--pooling", "max", "--threshold", 0.0)
    assert result.exit_code == 0, result.output
    rows = [ln.split("\t") for ln in result.stdout.splitlines()]
    assert len(rows) == 3 and rows[0][2] == "the ocean and the sea" and "AUROC" not in result.stdout
    assert all(float(score) >= 0 and flag in ("0", "1") for score, flag, _ in rows)


def test_detect_output_is_atomic(files, monkeypatch, invoke):
    out = files / "keep.json"
    out.write_text("old")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("polysteer.io.os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        invoke("detect", "--model", files / "model", "--finder", "probe", "--train", files / "train.jsonl", "--texts",
               files / "test.jsonl", "-o", out)
    assert out.read_text() == "old" and [p for p in files.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("content, args, message", [
    (None, ["--finder", "diffmean", "--train", "{train}"], "does not exist"),
    ('{"text": "the sea", "label": 1}\n{"text": "the city", "label": 2}\n', ["--finder", "diffmean", "--train",
                                                                              "{train}"], ":2: label must be 0 or 1"),
    ('{"text": "the sea", "label": 1}\nnot json\n', ["--feature", "1"], ":2: not valid JSON"),
    ('{"label": 1}\n', ["--feature", "1"], ':1: expected {"text"'),
    ('{"text": "the sea", "label": 1}\n', ["--feature", "1", "--finder", "probe"], "exactly one of --direction"),
    ('{"text": "the sea", "label": 1}\n', ["--finder", "probe"], "--finder and --train go together"),
    ('{"text": "the sea", "label": 1}\n', ["--finder", "rfm", "--train", "{train}", "--finder-param", "bogus=1"],
     "'rfm' has no parameter bogus; it takes bandwidth"),
])
def test_detect_errors_are_one_line(files, tmp_path, capsys, content, args, message):
    texts = tmp_path / "texts.jsonl"
    if content is not None:
        texts.write_text(content)
    args = [a.format(train=files / "train.jsonl") for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main(["detect", "--model", str(files / "model"), "--sae", str(files / "sae"), "--texts", str(texts), *args])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "Error" in line]
    assert len(errors) == 1 and errors[0].startswith("Error: ") and message in errors[0] and "Traceback" not in err
