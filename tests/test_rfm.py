"""The RFM finder: kernel algebra, nonlinear recovery, the probe, multiclass and layer weights."""

import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from polysteer import PolysteerError, make_finder, registry
from polysteer.finder import fit_layers
from polysteer.plugins.finders.linear import DiffMean
from polysteer.plugins.rfm import layer_weights, rank_layers
from polysteer.plugins.rfm.finder import RFM
from polysteer.plugins.rfm.kernels import LaplaceKernel, agop, predict, solve_exact, solve_nystrom
from polysteer.plugins.rfm.multi import _round_robin, fit_multiclass

D = 16


def quadratic(n=600, d=D, seed=0):
    """Isotropic data labelled by ``(x . v)^2 > median`` (the same v for every seed): both classes have
    the same mean along v."""
    v = torch.randn(d, generator=torch.Generator().manual_seed(100))
    v /= v.norm()
    X = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    y = (X @ v).pow(2) > (X @ v).pow(2).median()
    return X[y], X[~y], v


def shifted(n=300, d=D, seed=0, shift=3.0):
    """Two isotropic classes whose means differ along v (the same v for every seed)."""
    v = torch.randn(d, generator=torch.Generator().manual_seed(100))
    v /= v.norm()
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) + shift * v, torch.randn(n, d, generator=g) - shift * v, v


def auc(scores, X_pos, X_neg):
    labels = [1] * len(X_pos) + [0] * len(X_neg)
    return roc_auc_score(labels, torch.cat([scores(X_pos), scores(X_neg)]).numpy())


@pytest.fixture(scope="module")
def nonlinear_fit():
    X_pos, X_neg, v = quadratic()
    return RFM().fit(X_pos, X_neg), X_pos, X_neg, v


def test_registered_under_its_name():
    assert registry("direction_finders")["rfm"] is RFM
    finder = make_finder("rfm", iters=3, p=0.8)
    assert isinstance(finder, RFM) and (finder.iters, finder.p) == (3, 0.8)


def test_recovers_nonlinear_direction_where_diffmean_does_not(nonlinear_fit):
    rfm, X_pos, X_neg, v = nonlinear_fit
    assert abs(float(rfm.direction_ @ v)) >= 0.95
    assert abs(float(DiffMean().fit(X_pos, X_neg).direction_ @ v)) < 0.5


def test_fitted_state(nonlinear_fit):
    rfm = nonlinear_fit[0]
    assert rfm.direction_.shape == (D,) and math.isclose(float(rfm.direction_.norm()), 1.0, abs_tol=1e-5)
    assert rfm.directions_.shape == (8, D)
    assert torch.allclose(rfm.directions_ @ rfm.directions_.T, torch.eye(8), atol=1e-5)
    assert torch.equal(rfm.directions_[0], rfm.direction_)
    assert (rfm.eigenvalues_[:-1] >= rfm.eigenvalues_[1:]).all()
    assert torch.allclose(rfm.M_, rfm.M_.T) and float(rfm.M_.abs().max()) == pytest.approx(1.0)
    assert rfm.val_aucs_[rfm.best_iter_] == rfm.val_auc_ == max(rfm.val_aucs_)
    assert rfm.class_counts_ == (300, 300)


def test_probe_ranks_held_out_data(nonlinear_fit):
    rfm, _, _, v = nonlinear_fit
    X_pos, X_neg, _ = quadratic(n=400, seed=1)
    assert auc(rfm.decision_function, X_pos, X_neg) >= 0.9
    assert abs(auc(lambda X: X @ rfm.direction_, X_pos, X_neg) - 0.5) < 0.15  # no projection separates them
    X = torch.cat([X_pos, X_neg])
    proba, f = rfm.predict_proba(X), rfm.decision_function(X)
    assert ((proba >= 0) & (proba <= 1)).all() and torch.equal(rfm.score(X), f)
    truth = torch.cat([torch.ones(len(X_pos)), torch.zeros(len(X_neg))]).long()
    assert (rfm.predict(X) == truth).float().mean() >= 0.85
    assert rfm.decision_function(X[0]).shape == (1,)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sign_flips_exactly_when_classes_swap(dtype):
    """In float64 every direction flips; in float32 the trailing, near-degenerate eigenvectors may rotate
    within their eigenspace, so only the steering direction is compared."""
    X_pos, X_neg, v = shifted()
    a, b = RFM(dtype=dtype).fit(X_pos, X_neg), RFM(dtype=dtype).fit(X_neg, X_pos)
    assert float(a.direction_ @ v) >= 0.95 and a.scale_ > 0
    assert torch.allclose(a.direction_, -b.direction_, atol=1e-5)
    assert dtype == "float32" or torch.allclose(a.directions_, -b.directions_, atol=1e-4)
    assert a.val_aucs_ == pytest.approx(b.val_aucs_, abs=1e-3 if dtype == "float32" else 1e-9)


def test_seed_fixes_the_result():
    X_pos, X_neg, _ = shifted()
    a, b, c = RFM(seed=3).fit(X_pos, X_neg), RFM(seed=3).fit(X_pos, X_neg), RFM(seed=4).fit(X_pos, X_neg)
    assert torch.equal(a.M_, b.M_) and torch.equal(a.direction_, b.direction_)
    assert not torch.equal(a.M_, c.M_)


def test_early_stop_keeps_the_best_round():
    X = torch.randn(200, 8, generator=torch.Generator().manual_seed(2))  # random labels: AUC wanders
    rfm = RFM(early_stop=1.0, iters=10).fit(X[:100], X[100:])
    aucs = rfm.val_aucs_
    assert len(aucs) < 10 and aucs[-1] < max(aucs[:-1])
    assert rfm.val_auc_ == max(aucs) and rfm.best_iter_ == aucs.index(max(aucs))


@pytest.mark.parametrize("solver, min_cos", [("subsample", 0.85), ("auto", 0.95)])
def test_large_training_sets_are_bounded(solver, min_cos):
    """Above max_samples: a 100-point subsample, or Nystrom on 100 centres fed by all 480 training rows."""
    X_pos, X_neg, v = shifted(shift=1.5)
    rfm = RFM(max_samples=100, centres=100, solver=solver, iters=4).fit(X_pos, X_neg)
    assert abs(len(rfm.centres_) - 100) <= 1
    assert float(rfm.direction_ @ v) >= min_cos
    held_pos, held_neg, _ = shifted(n=100, seed=5, shift=1.5)
    assert auc(rfm.decision_function, held_pos, held_neg) >= 0.95


def _random_problem(seed=0, d=5):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    metric = A @ A.T / d + torch.eye(d, dtype=torch.float64)
    C = torch.randn(12, d, generator=g, dtype=torch.float64)
    Z = torch.randn(7, d, generator=g, dtype=torch.float64)
    return metric, C, Z, torch.randn(12, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("centre", [False, True])
def test_agop_matches_autograd(centre):
    metric, C, Z, alpha = _random_problem()
    kernel = LaplaceKernel(metric, bandwidth=2.0, p=1.2)
    Zg = Z.clone().requires_grad_()
    diff = Zg[:, None, :] - C[None, :, :]
    dist = torch.einsum("nmd,de,nme->nm", diff, metric, diff).sqrt()
    f = torch.exp(-((dist / 2.0) ** 1.2)) @ alpha
    (grads,) = torch.autograd.grad(f.sum(), Zg)
    grads = grads - grads.mean(0) if centre else grads
    assert torch.allclose(f.detach(), predict(kernel, kernel.embed(Z), kernel.embed(C), alpha))
    G = agop(kernel, kernel.embed(Z), kernel.embed(C), alpha, centre)
    assert torch.allclose(G, grads.T @ grads, rtol=1e-8, atol=1e-12)


def test_nystrom_on_all_points_equals_exact_ridge():
    metric, C, Z, _ = _random_problem(seed=1)
    kernel = LaplaceKernel(metric, bandwidth=3.0, p=1.0)
    y = torch.sign(C[:, 0])
    P = kernel.embed(C)
    exact, _ = solve_exact(kernel, P, y, 0.1)
    nystrom, _ = solve_nystrom(kernel, P, y, P, 0.1)
    Zp = kernel.embed(Z)
    assert torch.allclose(predict(kernel, Zp, P, exact), predict(kernel, Zp, P, nystrom), atol=1e-8)


def test_multiclass_one_vs_rest_is_balanced():
    g = torch.Generator().manual_seed(0)
    means = 3 * torch.eye(D)[:3]
    counts = {"a": 120, "b": 60, "c": 60}
    X = torch.cat([torch.randn(n, D, generator=g) + means[i] for i, n in enumerate(counts.values())])
    y = [label for label, n in counts.items() for _ in range(n)]
    probes = fit_multiclass(X, y, iters=3)
    assert list(probes) == ["a", "b", "c"]
    assert [p.class_counts_ for p in probes.values()] == [(120, 120), (60, 60), (60, 60)]
    held = torch.cat([torch.randn(50, D, generator=g) + means[i] for i in range(3)])
    scores = torch.stack([probe.decision_function(held) for probe in probes.values()], 1)
    assert (scores.argmax(1) == torch.arange(3).repeat_interleave(50)).float().mean() >= 0.9


def test_round_robin_interleaves_classes():
    assert _round_robin([torch.tensor([0, 1, 2]), torch.tensor([10, 11])]).tolist() == [0, 10, 1, 11, 2]


def test_layer_weights_formula():
    weights = layer_weights({"a": 0.6, "b": 0.8, "c": 1.0})
    assert weights["a"] == 0.0 and weights["c"] == 1.0
    assert weights["b"] == pytest.approx(0.5 ** (1 / 0.95))
    assert layer_weights({"a": 0.7, "b": 0.7}) == {"a": 1.0, "b": 1.0}
    with pytest.raises(PolysteerError):
        layer_weights({})


def test_layers_ranked_by_validation_auc():
    X_pos, X_neg, _ = shifted(n=80)
    noise = torch.randn(160, D, generator=torch.Generator().manual_seed(9))
    good, bad = "text.blocks.2.resid_post", "text.blocks.1.resid_post"
    fitted = fit_layers(RFM(iters=3), {bad: noise[:80], good: X_pos}, {bad: noise[80:], good: X_neg})
    ranking = rank_layers(fitted)
    assert list(ranking) == [good, bad] and ranking[good] > ranking[bad]
    assert layer_weights(ranking) == {good: 1.0, bad: 0.0}


def test_bad_input_is_explained():
    X_pos, X_neg, _ = shifted(n=20)
    with pytest.raises(PolysteerError, match="p must be"):
        RFM(p=3.0).fit(X_pos, X_neg)
    with pytest.raises(PolysteerError, match="val_fraction=0"):
        RFM().fit(X_pos[:1], X_neg)
    with pytest.raises(PolysteerError, match="not fitted"):
        RFM().decision_function(X_pos)
    rfm = RFM(val_fraction=0, iters=2).fit(X_pos[:1], X_neg)
    assert math.isnan(rfm.val_auc_)
    with pytest.raises(PolysteerError, match="val_fraction > 0"):
        rank_layers({"text.blocks.0.resid_post": rfm})
    with pytest.raises(PolysteerError, match="d_model"):
        rfm.decision_function(torch.randn(3, D + 1))
    with pytest.raises(PolysteerError, match="2 classes"):
        fit_multiclass(X_pos, [0] * len(X_pos))


def test_text_workflow_packages_an_rfm_direction(llama, tokenizer, tmp_path):
    from polysteer.direction import Direction
    from polysteer.modalities.text.generation import Example
    from polysteer.modalities.text.workflow import find_direction

    pos = [Example(f"i love the {w} and the sea") for w in ("ocean", "beach", "ship", "fish", "wave", "sea")]
    neg = [Example(f"i love the {w} and my job") for w in ("book", "coffee", "school", "city", "train", "cake")]
    direction = find_direction(llama, tokenizer, pos, neg, layers=[1], finder="rfm", iters=2)
    assert direction.finder["name"] == "rfm" and direction.finder["params"]["iters"] == 2
    loaded = Direction.load(direction.save(tmp_path / "rfm.safetensors"))
    assert loaded.vectors["text.blocks.1.resid_post"].shape == (llama.config.hidden_size,)


def test_median_bandwidth_makes_the_fit_independent_of_the_activations_scale():
    """A fixed bandwidth suits one activation scale; the median heuristic gives the same directions at any."""
    X_pos, X_neg, v = quadratic(n=300)
    small = RFM(iters=3, bandwidth="median").fit(X_pos, X_neg)
    large = RFM(iters=3, bandwidth="median").fit(1000 * X_pos, 1000 * X_neg)
    assert large.bandwidth_ == pytest.approx(1000 * small.bandwidth_, rel=1e-6)
    assert abs(float(small.direction_ @ v)) > 0.9
    assert torch.allclose(small.direction_, large.direction_, atol=1e-3)
    with pytest.raises(PolysteerError, match="constant"):  # the same number is far too narrow at the new scale
        RFM(iters=3, bandwidth=float(small.bandwidth_)).fit(1000 * X_pos, 1000 * X_neg)
    with pytest.raises(PolysteerError, match="'median'"):
        RFM(bandwidth="mean").fit(X_pos, X_neg)
