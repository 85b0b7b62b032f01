"""Activation store and TopK SAE training on a tiny random model: shards, resume, metrics, AuxK, splicing."""

import random

import pytest
import torch
from tiny import WORDS

from polysteer import PolysteerError
from polysteer.capture import capture
from polysteer.modalities.text.modality import TextModality
from polysteer.modalities.text.sae.corpus import token_windows
from polysteer.modalities.text.sae.lm_loss import spliced_loss
from polysteer.modalities.text.sae.store import ActivationStore
from polysteer.plugins.sae.model import SAE
from polysteer.plugins.sae.trainer import TrainConfig, _Trainer, evaluate_sae, train_sae

HP = "text.blocks.1.resid_post"
CONTEXT = 16


def documents(n=400, seed=0):
    rng = random.Random(seed)
    words = [w for w in WORDS if w.isalpha()]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 30))) for _ in range(n)]


@pytest.fixture(scope="module")
def store(llama, tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("store")
    return ActivationStore.build(llama, tokenizer, documents(), HP, path, n_tokens=6 * 480, context=CONTEXT,
                                 batch_size=16, shard_tokens=480, corpus="tiny")


@pytest.fixture(scope="module")
def trained(store):
    config = TrainConfig(d_sae=64, k=4, lr=3e-3, batch_size=120, epochs=20, dead_tokens=2000, warmup_steps=5)
    return train_sae(store, config, progress=False)


def test_store_shards_hold_the_captured_tokens(store, llama, tokenizer):
    assert store.n_shards == 6 and store.d_model == 32 and store.hook_point == HP
    acts, windows = store.shard(0)
    assert windows.shape == (32, CONTEXT) and acts.shape == (32 * (CONTEXT - 1), 32)
    first = list(token_windows(tokenizer, documents(), CONTEXT))[:32]
    assert windows.tolist() == first
    mask = torch.ones(32, CONTEXT, dtype=torch.bool)
    mask[:, 0] = False
    direct = capture(llama, TextModality(), [HP], [{"inputs": {"input_ids": windows}, "mask": mask}], "tokens")[HP]
    assert torch.allclose(acts, direct.half().float())


def test_store_resumes_and_refuses_other_settings(store, llama, tokenizer):
    stamps = [(store.path / name).stat().st_mtime_ns for name in store.manifest["shards"]]
    again = ActivationStore.build(llama, tokenizer, documents(), HP, store.path, n_tokens=6 * 480, context=CONTEXT,
                                  batch_size=16, shard_tokens=480, corpus="tiny")
    assert [(store.path / n).stat().st_mtime_ns for n in again.manifest["shards"]] == stamps
    with pytest.raises(PolysteerError, match="other settings"):
        ActivationStore.build(llama, tokenizer, documents(), HP, store.path, n_tokens=480, context=8,
                              shard_tokens=480, corpus="tiny")
    with pytest.raises(PolysteerError, match="ran out"):
        ActivationStore.build(llama, tokenizer, documents(5), HP, store.path.parent / "small", n_tokens=4800,
                              context=CONTEXT, shard_tokens=480)


def test_batches_cover_every_row_once_per_epoch(store):
    batches = list(store.batches(60, shards=[0, 1, 2], buffer_shards=2, seed=1))
    assert all(b.shape == (60, 32) for b in batches) and len(batches) == 3 * 480 // 60
    expected = torch.cat([store.shard(i)[0] for i in range(3)]).sum(0)
    assert torch.allclose(torch.cat(batches).sum(0), expected, rtol=1e-4, atol=1e-2)


def test_training_improves_explained_variance_with_l0_at_most_k(store, trained):
    sae, metrics = trained
    untrained = _Trainer(store, TrainConfig(d_sae=64, k=4)).fold_scale()
    before = evaluate_sae(untrained, store, [5])["explained_variance"]
    assert metrics["explained_variance"] > before + 0.2 and metrics["explained_variance"] > 0.6
    assert 3.6 <= metrics["l0"] <= 4.0
    assert 0.0 <= metrics["dead_fraction"] < 0.5 and metrics["tokens_evaluated"] == 480
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-4)
    assert sae.metadata["hook_name"] == HP and sae.metadata["metrics"] == metrics


def test_trained_sae_roundtrips_through_saelens_format(tmp_path, store, trained):
    sae, metrics = trained
    sae.save(tmp_path / "sae")
    loaded = SAE.load(tmp_path / "sae")
    again = evaluate_sae(loaded, store, [5])["explained_variance"]
    assert again == pytest.approx(metrics["explained_variance"], abs=1e-5)


def test_auxk_trains_only_dead_latents(store):
    trainer = _Trainer(store, TrainConfig(d_sae=64, k=4, dead_tokens=10))
    trainer.since_fired[:32] = 100  # latents 0..31 dead
    x = store.shard(0)[0][:100] * trainer.scale
    pre = trainer.sae.pre_activations(x)
    residual = torch.randn_like(x)
    aux = trainer._aux_loss(pre, residual)
    aux.backward()
    grad = trainer.sae.W_enc.grad.abs().sum(0)
    assert aux > 0 and grad[:32].sum() > 0 and grad[32:].sum() == 0
    trainer.since_fired[:] = 0
    assert trainer._aux_loss(trainer.sae.pre_activations(x), residual) == 0


def test_spliced_loss_is_zero_for_a_perfect_sae_and_positive_for_a_bad_one(store, llama, trained):
    perfect = SAE(32, 64, "standard")
    with torch.no_grad():
        eye = torch.eye(32)
        perfect.W_enc.copy_(torch.cat([eye, -eye], 1))
        perfect.W_dec.copy_(torch.cat([eye, -eye], 0))
    windows = store.shard(5)[1][:16]
    mean = store.shard(5)[0].mean(0)
    exact = spliced_loss(llama, perfect, HP, windows, mean)
    assert exact["loss_increase"] == pytest.approx(0.0, abs=1e-5)
    assert exact["loss_mean_ablated"] != exact["loss_clean"]
    bad = SAE(32, 64, "topk", k=1)
    worse = spliced_loss(llama, bad, HP, windows, mean)
    assert worse["loss_increase"] > 1e-3
    sae, _ = trained
    good = spliced_loss(llama, sae, HP, windows, mean)
    assert good["loss_increase"] < worse["loss_increase"]


def test_attention_sink_outliers_are_left_out(store, trained):
    from polysteer.plugins.sae.steer import SAEReconstruct

    sae, metrics = trained
    assert metrics["outlier_fraction"] == 0.0 and sae.metadata["max_norm"] > 0
    acts, windows = store.shard(5)
    sink = acts[:1] * 1000  # an attention-sink-like token, far above max_norm

    class Planted:
        def shard(self, index):
            return torch.cat([sink, acts]), windows

    planted = evaluate_sae(sae, Planted(), [0])
    assert planted["outlier_fraction"] == pytest.approx(1 / (len(acts) + 1))
    assert planted["explained_variance"] == pytest.approx(metrics["explained_variance"], abs=1e-5)
    h = torch.cat([sink, acts[:3]]).unsqueeze(0)
    spliced = SAEReconstruct(sae, sae.metadata["max_norm"])(h, None, 1.0)
    assert torch.equal(spliced[0, 0], h[0, 0]) and torch.allclose(spliced[0, 1:], sae(h[0, 1:]), atol=1e-5)


def test_saes_of_different_hook_points_start_from_different_decoders(store):
    """A seed shared by every layer would start each SAE from the same decoder rows, and feature matching across
    layers would then link features that only share an initialisation."""
    class Elsewhere:
        def __getattr__(self, name):
            return "text.blocks.0.resid_post" if name == "hook_point" else getattr(store, name)

    config = TrainConfig(d_sae=64, k=4)
    here, again, there = _Trainer(store, config), _Trainer(store, config), _Trainer(Elsewhere(), config)
    assert torch.equal(here.sae.W_dec, again.sae.W_dec)
    assert not torch.allclose(here.sae.W_dec, there.sae.W_dec)
    assert torch.equal(_Trainer(store, TrainConfig(d_sae=64, k=4, seed=3)).sae.W_dec,
                       _Trainer(Elsewhere(), TrainConfig(d_sae=64, k=4, seed=3)).sae.W_dec)
