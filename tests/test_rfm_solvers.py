"""RFM solvers: exact, subsample and Nystrom against the exact solve, the `auto` choice, precision and seeds."""

import pytest
import torch
from sklearn.metrics import roc_auc_score

from polysteer import PolysteerError
from polysteer.plugins.rfm.finder import RFM

D = 12


def quadratic(n=500, seed=0):
    """Isotropic data labelled by ``(x . v)^2 > median``: the classes share their mean along v."""
    v = torch.randn(D, generator=torch.Generator().manual_seed(100))
    v /= v.norm()
    X = torch.randn(n, D, generator=torch.Generator().manual_seed(seed))
    y = (X @ v).pow(2) > (X @ v).pow(2).median()
    return X[y], X[~y], v


@pytest.fixture(scope="module")
def data():
    return quadratic(), quadratic(n=400, seed=1)


@pytest.fixture(scope="module")
def exact(data):
    (X_pos, X_neg, _), _ = data
    return RFM(solver="exact", iters=3, dtype="float64").fit(X_pos, X_neg)


def held_out_auc(rfm, held):
    X_pos, X_neg, _ = held
    scores = rfm.decision_function(torch.cat([X_pos, X_neg]))
    return roc_auc_score([1] * len(X_pos) + [0] * len(X_neg), scores.numpy())


def test_nystrom_on_every_training_point_is_the_exact_solve(data, exact):
    (X_pos, X_neg, _), held = data
    every = RFM(solver="nystrom", centres=10_000, iters=3, dtype="float64").fit(X_pos, X_neg)
    assert every.solver_ == "nystrom" and len(every.centres_) == len(exact.centres_) == 400
    X = torch.cat(held[:2])
    assert torch.equal(every.decision_function(X), exact.decision_function(X))


def test_nystrom_on_most_points_predicts_like_the_exact_solve(data, exact):
    (X_pos, X_neg, _), held = data
    nystrom = RFM(solver="nystrom", centres=300, iters=3, dtype="float64").fit(X_pos, X_neg)
    assert abs(len(nystrom.centres_) - 300) <= 1
    X = torch.cat(held[:2])
    f, reference = nystrom.decision_function(X), exact.decision_function(X)
    assert float(torch.corrcoef(torch.stack([f, reference]))[0, 1]) >= 0.95
    assert abs(nystrom.val_auc_ - exact.val_auc_) <= 0.01


@pytest.mark.parametrize("params", [{"solver": "subsample", "max_samples": 300},
                                    {"solver": "nystrom", "centres": 150},
                                    {"solver": "exact", "dtype": "float32"}])
def test_approximate_solvers_stay_close_to_the_exact_solve(data, exact, params):
    (X_pos, X_neg, v), held = data
    rfm = RFM(iters=3, **params).fit(X_pos, X_neg)
    assert rfm.solver_ == params["solver"]
    assert abs(rfm.val_auc_ - exact.val_auc_) <= 0.03
    assert abs(held_out_auc(rfm, held) - held_out_auc(exact, held)) <= 0.03
    assert abs(float(rfm.direction_ @ v)) >= 0.9


def test_float32_matches_float64(data, exact):
    (X_pos, X_neg, _), held = data
    single = RFM(solver="exact", iters=3).fit(X_pos, X_neg)
    assert single.alpha_.dtype == torch.float32 and exact.alpha_.dtype == torch.float64
    assert single.val_aucs_ == pytest.approx(exact.val_aucs_, abs=2e-3)
    assert abs(float(single.direction_ @ exact.direction_)) >= 0.999


def test_auto_is_exact_up_to_max_samples_and_nystrom_above():
    rfm = RFM(max_samples=100)
    assert (rfm.solver_for(100), rfm.solver_for(101)) == ("exact", "nystrom")
    assert RFM(solver="subsample").solver_for(10) == "subsample"
    # The default keeps the exact O(n^3) solve to sizes where it is no slower than Nystrom on 1024 centres.
    assert (RFM().solver_for(2048), RFM().solver_for(3200)) == ("exact", "nystrom")
    X_pos, X_neg, _ = quadratic(n=300)
    small = RFM(iters=1).fit(X_pos, X_neg)
    large = RFM(iters=1, max_samples=100, centres=50).fit(X_pos, X_neg)
    assert (small.solver_, len(small.centres_)) == ("exact", 240)
    assert large.solver_ == "nystrom" and abs(len(large.centres_) - 50) <= 1


@pytest.mark.parametrize("params, match", [({"solver": "cg"}, "solver must be one of auto, exact"),
                                           ({"dtype": "float16"}, "dtype must be"),
                                           ({"centres": 1}, "centres must be >= 2")])
def test_bad_solver_settings_are_one_line_errors(params, match):
    X_pos, X_neg, _ = quadratic(n=40)
    with pytest.raises(PolysteerError, match=match) as error:
        RFM(**params).fit(X_pos, X_neg)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("params", [{"solver": "exact"}, {"solver": "subsample", "max_samples": 150},
                                    {"solver": "nystrom", "centres": 100}])
def test_a_seed_fixes_every_solver(params):
    X_pos, X_neg, _ = quadratic(n=300)
    a, b = (RFM(iters=2, seed=7, **params).fit(X_pos, X_neg) for _ in range(2))
    assert torch.equal(a.M_, b.M_) and torch.equal(a.alpha_, b.alpha_) and torch.equal(a.direction_, b.direction_)
    other = RFM(iters=2, seed=8, **params).fit(X_pos, X_neg)
    assert not torch.equal(a.M_, other.M_)


def test_an_indefinite_kernel_system_falls_back_to_lu_and_a_singular_one_is_refused():
    from polysteer.plugins.rfm.kernels import cholesky_solve

    A = torch.tensor([[2.0, 0.0, 0.0], [0.0, -1.0, 0.5], [0.0, 0.5, 1.0]])  # symmetric, not positive definite
    b = torch.tensor([2.0, 1.0, 3.0])
    torch.testing.assert_close(cholesky_solve(A.clone(), b), torch.linalg.solve(A, b))
    with pytest.raises(PolysteerError, match="singular"):
        cholesky_solve(torch.tensor([[1.0, 1.0], [1.0, 1.0]]) * -1, torch.ones(2))
