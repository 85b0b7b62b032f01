"""Common checks run over every registered direction finder (as scikit-learn's estimator checks)."""

import pytest
import torch

from polysteer import DirectionFinder, PolysteerError, make_finder, registry
from polysteer.finder import fit_layers

# Finders that learn through the model (needs_model, e.g. trained vectors) have their own common checks in
# tests/test_trained_vectors.py; these checks fit pooled activations.
FINDERS = sorted(name for name, item in registry("direction_finders").items.items()
                 if not getattr(item, "needs_model", False))
D = 48


def planted(n=400, seed=0, shift=3.0):
    """Paired classes that differ along one coordinate axis, by an amount that varies per pair, with isotropic noise.

    Isotropic noise makes every direction equally hard for rotation-equivariant finders; an axis lets
    dictionary finders (SAE features) hold the planted direction in their dictionary. The pairs' separation varies
    (from ``shift`` to 2.5x ``shift``), as real contrast pairs' does, which is what repeng's centred pca_diff reads.
    """
    g = torch.Generator().manual_seed(seed)
    v = torch.zeros(D)
    v[(7 * seed + 3) % D] = 1.0
    amount = shift * (1 + 1.5 * torch.rand(n, 1, generator=g))
    X_pos = torch.randn(n, D, generator=g) + amount * v
    X_neg = torch.randn(n, D, generator=g) - amount * v
    return X_pos, X_neg, v


def build(name):
    item = registry("direction_finders")[name]
    params = item.check_params(D) if isinstance(item, type) and issubclass(item, DirectionFinder) else {}
    return make_finder(name, **params)


@pytest.fixture(params=FINDERS)
def finder(request):
    return build(request.param)


def test_builtins_are_registered():
    assert {"diffmean", "pca_diff", "pca_center", "probe"} <= set(FINDERS)


def test_shape_and_unit_norm(finder):
    X_pos, X_neg, _ = planted()
    fitted = finder.fit(X_pos, X_neg)
    assert fitted is finder
    assert finder.direction_.shape == (D,)
    assert torch.isclose(finder.direction_.norm(), torch.tensor(1.0), atol=1e-5)
    assert finder.scale_ > 0


def test_positives_project_higher(finder):
    X_pos, X_neg, _ = planted()
    finder.fit(X_pos, X_neg)
    assert finder.score(X_pos).mean() > finder.score(X_neg).mean()


def test_deterministic(finder):
    X_pos, X_neg, _ = planted()
    a = make_finder(finder).fit(X_pos, X_neg).direction_
    b = make_finder(finder).fit(X_pos, X_neg).direction_
    assert torch.allclose(a, b, atol=1e-6)


def test_sign_flips_when_classes_swap(finder):
    X_pos, X_neg, _ = planted()
    a = make_finder(finder).fit(X_pos, X_neg).direction_
    b = make_finder(finder).fit(X_neg, X_pos).direction_
    assert torch.allclose(a, -b, atol=1e-4)


def test_recovers_planted_direction(finder):
    X_pos, X_neg, v = planted()
    assert abs(float(finder.fit(X_pos, X_neg).direction_ @ v)) >= 0.95


def test_init_stores_parameters_only(finder):
    learned = [k for k in vars(make_finder(finder)) if k.endswith("_")]
    assert learned == []


def test_nan_input_is_refused(finder):
    X_pos, X_neg, _ = planted()
    X_pos[0, 0] = float("nan")
    with pytest.raises(PolysteerError, match="NaN"):
        finder.fit(X_pos, X_neg)


def test_bare_function_is_a_finder():
    def median_diff(X_pos, X_neg):
        return X_pos.median(0).values - X_neg.median(0).values

    X_pos, X_neg, v = planted()
    finder = make_finder(median_diff)
    assert isinstance(finder, DirectionFinder) and finder.name == "median_diff"
    assert float(finder.fit(X_pos, X_neg).direction_ @ v) >= 0.95


def test_fit_layers_fits_each_hook_point():
    a_pos, a_neg, va = planted(seed=1)
    b_pos, b_neg, vb = planted(seed=2)
    fitted = fit_layers(make_finder("diffmean"), {"text.blocks.1.resid_post": a_pos, "text.blocks.2.resid_post": b_pos},
                        {"text.blocks.1.resid_post": a_neg, "text.blocks.2.resid_post": b_neg})
    assert float(fitted["text.blocks.1.resid_post"].direction_ @ va) > 0.95
    assert float(fitted["text.blocks.2.resid_post"].direction_ @ vb) > 0.95


def test_pca_diff_needs_pairs():
    X_pos, X_neg, _ = planted()
    with pytest.raises(PolysteerError, match="paired"):
        make_finder("pca_diff").fit(X_pos, X_neg[:-3])


def test_pca_diff_centres_the_differences_as_repeng_does():
    """repeng fits sklearn's PCA (which centres) to the pair differences: PC1 is their main axis of variation."""
    from sklearn.decomposition import PCA

    gen = torch.Generator().manual_seed(0)
    shared, varying = torch.zeros(16), torch.zeros(16)
    shared[0], varying[1] = 5.0, 1.0
    X_neg = torch.randn(40, 16, generator=gen)
    diffs = shared + torch.randn(40, 1, generator=gen) * 3 * varying + 0.1 * torch.randn(40, 16, generator=gen)
    X_pos = X_neg + diffs
    reference = torch.as_tensor(PCA(n_components=1).fit(diffs.numpy()).components_[0]).float()
    centred = make_finder("pca_diff").fit(X_pos, X_neg).direction_
    assert abs(float(centred @ reference)) > 0.999 and abs(float(centred[1])) > 0.99
    uncentred = make_finder("pca_diff", center=False).fit(X_pos, X_neg).direction_
    assert abs(float(uncentred[0])) > 0.8  # the mean difference dominates without centring
    with pytest.raises(PolysteerError, match="at least 2 pairs"):
        make_finder("pca_diff").fit(X_pos[:1], X_neg[:1])


def test_unknown_finder_names_the_registered_ones():
    with pytest.raises(PolysteerError, match="diffmean"):
        make_finder("no-such-finder")
