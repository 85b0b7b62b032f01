"""Recursive Feature Machine (RFM): a kernel ridge probe that learns its own features (MusicRFM; Radhakrishnan,
Beaglehole et al.).

Each round fits kernel ridge with the Laplace-like kernel ``exp(-||x - z||_M^p / L^p)``, measures the
validation AUC, and replaces ``M`` by the normalised average gradient outer product (AGOP) of the fitted
predictor. The round with the best validation AUC is kept: its AGOP's top eigenvectors are the steering
directions and its predictor is a nonlinear concept probe (:meth:`RFM.decision_function`).
One-vs-rest multiclass is in :mod:`polysteer.plugins.rfm.multi`; layer ranking and MusicRFM layer weights in
:mod:`polysteer.plugins.rfm.layers`.

Solvers: ``"exact"``, Cholesky on every training point (the reference; ``O(n^3)``, three ``[n, n]`` matrices);
``"subsample"``, exact on a stratified, seeded subsample of ``max_samples`` points; ``"nystrom"``, Nystrom on
``centres`` training points, every label and every point's gradient used, ``O(n centres (d + centres))`` a round;
``"auto"``, exact up to ``max_samples`` (2048) training points, Nystrom above: in benchmarks/results/rfm, at
3,200 training points of 576 dimensions, Nystrom on 1024 centres took 2.9 s against exact's 10.2 s with a validation
AUC 0.0015 higher, and at 16,000 points it was cheaper than a 4096-point subsample and at least as accurate.
Kernel work runs in ``dtype`` (float32 by default, twice float64's speed; their validation AUCs agree to 2e-3 in
the tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from polysteer.errors import PolysteerError
from polysteer.finder import DirectionFinder, check_inputs, finish_direction
from polysteer.plugins.rfm.kernels import (
    LaplaceKernel,
    Points,
    agop,
    median_distance,
    predict,
    solve_exact,
    solve_nystrom,
    validation_scores,
)

SOLVERS = ("auto", "exact", "subsample", "nystrom")


@dataclass
class _Round:
    """One RFM round: the predictor (kernel metric + coefficients), its validation scores and its AGOP."""

    iteration: int
    auc: float
    mse: float
    metric: torch.Tensor
    alpha: torch.Tensor
    agop: torch.Tensor

    def beats(self, other: "_Round | None") -> bool:
        """Higher AUC wins, then lower MSE; ties go to the later round, whose features are more refined."""
        if other is None or math.isnan(self.auc):
            return True
        return (self.auc, -self.mse) >= (other.auc, -other.mse)


class RFM(DirectionFinder):
    """Recursive Feature Machine finder and probe.

    Args:
        bandwidth: Kernel bandwidth ``L`` in the units of the activations, or ``"median"``: the median distance
            between training points, so the kernel sees neighbours at any activation scale (a fixed number suits
            one model's layer and no other's). The default 10 is the MusicRFM papers' value.
        p: Distance exponent; published range 0.7-1.4, and ``0 < p <= 2`` keeps the kernel positive definite.
        reg: Ridge ``lambda`` added to the kernel matrix.
        iters: Maximum number of rounds (fit, validate, AGOP update); 8-30 in the papers.
        centre_grads: Remove the mean gradient before the AGOP. Leave off for linear concepts, whose
            gradients are nearly constant and would cancel.
        k: Number of top eigenvectors of ``M`` kept in ``directions_``.
        val_fraction: Share of each class held out for validation AUC (early stopping, round selection and
            layer ranking). 0 uses every row for training and keeps the last round.
        early_stop: Stop when the validation AUC falls below the best AUC divided by this factor (xRFM's rule).
        solver: ``"auto"``, ``"exact"``, ``"subsample"`` or ``"nystrom"`` (module docstring).
        max_samples: Training points solved exactly: ``"auto"`` uses Nystrom above it, ``"subsample"`` cuts to it.
        centres: Number of Nystrom centres (``"nystrom"`` only; capped at the number of training points).
        dtype: ``"float32"`` or ``"float64"``, the precision of the kernel work.
        seed: Seed of the stratified validation split and of the subsample or Nystrom centres.

    Attributes:
        direction_: Unit steering vector, the top eigenvector of ``M_``, oriented so positives project higher.
        directions_: ``[k, d]`` top eigenvectors of ``M_``, each oriented by the sign of corr(y, X v).
        eigenvalues_: ``[k]`` their eigenvalues, largest first.
        M_: ``[d, d]`` feature matrix: the AGOP of the selected predictor, scaled to ``max |M| = 1``.
        metric_: ``[d, d]`` the ``M`` inside the selected predictor's kernel.
        centres_, alpha_: The selected predictor ``f(x) = sum_j alpha_j k(x, centres_j)``.
        centre_norms_: ``[m]`` squared ``metric_`` norms of the centres (minus ``offset_``), kept so scoring a
            few rows is cheap.
        offset_: ``[d]`` mean of the training rows, subtracted before the kernel (float64).
        val_auc_: Validation AUC of the selected round (NaN without validation).
        val_aucs_: Validation AUC of every round run.
        best_iter_: Index of the selected round.
        scale_: Separation of the class means along ``direction_``.
        bandwidth_: The bandwidth used (the median distance, or ``bandwidth`` as given).
        solver_: The solver used (what ``"auto"`` chose).
        class_counts_: (positives, negatives) fitted on.
    """

    name = "rfm"

    def __init__(
        self,
        bandwidth: float | str = 10.0,
        p: float = 1.0,
        reg: float = 1e-3,
        iters: int = 10,
        centre_grads: bool = False,
        k: int = 8,
        val_fraction: float = 0.2,
        early_stop: float = 1.1,
        solver: str = "auto",
        max_samples: int = 2048,
        centres: int = 1024,
        dtype: str = "float32",
        seed: int = 0,
    ):
        self.bandwidth = bandwidth
        self.p = p
        self.reg = reg
        self.iters = iters
        self.centre_grads = centre_grads
        self.k = k
        self.val_fraction = val_fraction
        self.early_stop = early_stop
        self.solver = solver
        self.max_samples = max_samples
        self.centres = centres
        self.dtype = dtype
        self.seed = seed

    def fit(self, X_pos, X_neg) -> "RFM":
        """Run the RFM rounds on positives (label +1) and negatives (label -1) and keep the best round."""
        X_pos, X_neg = check_inputs(X_pos, X_neg)
        self._check_params()
        X_raw = torch.cat([X_pos, X_neg])
        y = torch.cat([torch.ones(len(X_pos)), -torch.ones(len(X_neg))]).to(self._dtype)
        train, val, centres = self._split(len(X_pos), len(X_neg))
        # The kernel is translation invariant; centring shrinks the norms that make float32 distances noisy.
        self.offset_ = X_raw[train].double().mean(0)
        X = self._shift(X_raw)
        self.bandwidth_ = self._median_bandwidth(X, train, len(X_pos)) if self.bandwidth == "median" else float(
            self.bandwidth)
        best = self._run_rounds(X[train], y[train], X[val], y[val], X[centres])
        self.M_, self.metric_ = best.agop.float(), best.metric.float()
        self.centres_, self.alpha_, self._centres = X_raw[centres].float(), best.alpha, X[centres]
        self.centre_norms_ = self._kernel().embed(self._centres).sq
        self.val_auc_, self.best_iter_ = best.auc, best.iteration
        self.class_counts_ = (len(X_pos), len(X_neg))
        self._set_directions(X_pos, X_neg)
        return self

    @staticmethod
    def _median_bandwidth(X: torch.Tensor, train: torch.Tensor, n_pos: int, per_class: int = 512) -> float:
        """Median distance over up to ``per_class`` training rows of each class (the same rows whichever class
        comes first, so swapping the classes changes nothing)."""
        rows = torch.cat([train[train < n_pos][:per_class], train[train >= n_pos][:per_class]])
        return median_distance(X[rows])

    def _check_params(self) -> None:
        checks = [
            (self.bandwidth == "median" or (isinstance(self.bandwidth, (int, float)) and self.bandwidth > 0),
             "bandwidth must be a number > 0 or 'median'"),
            (0 < self.p <= 2, "p must be in (0, 2] for a positive definite kernel (papers use 0.7-1.4)"),
            (self.reg > 0, "reg must be > 0 (try 1e-3)"),
            (int(self.iters) >= 1 and int(self.k) >= 1, "iters and k must be >= 1"),
            (0 <= self.val_fraction < 1, "val_fraction must be in [0, 1)"),
            (self.early_stop >= 1, "early_stop must be >= 1 (1.1 stops when AUC drops below best / 1.1)"),
            (int(self.max_samples) >= 2 and int(self.centres) >= 2, "max_samples and centres must be >= 2"),
            (self.solver in SOLVERS, f"solver must be one of {', '.join(SOLVERS)}, not {self.solver!r}"),
            (self.dtype in ("float32", "float64"), f"dtype must be 'float32' or 'float64', not {self.dtype!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise PolysteerError(f"bad RFM parameter: {message}")

    @property
    def _dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def solver_for(self, n_train: int) -> str:
        """The solver for ``n_train`` training points: ``solver``, or for ``"auto"`` exact or Nystrom."""
        if self.solver != "auto":
            return self.solver
        return "exact" if n_train <= int(self.max_samples) else "nystrom"

    def _split(self, n_pos: int, n_neg: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stratified (train, val, centres) row indices; the training rows are the centres except for
        Nystrom, and are cut to ``max_samples`` for a subsample.

        Each class is permuted by a generator seeded only with ``seed``, so swapping the classes swaps
        the labels and nothing else (the sign-flip property is exact).
        """
        sizes = (n_pos, n_neg)
        n_vals = [self._n_val(n) for n in sizes]
        self.solver_ = self.solver_for(sum(sizes) - sum(n_vals))
        kept = {"exact": math.inf, "subsample": self.max_samples, "nystrom": self.centres}[self.solver_]
        share = min(1.0, kept / (sum(sizes) - sum(n_vals)))
        train, val, centres = [], [], []
        for offset, n, n_val in zip((0, n_pos), sizes, n_vals):
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)) + offset
            val.append(perm[:n_val])
            train.append(perm[n_val:])
            centres.append(perm[n_val:][: max(1, round(share * (n - n_val)))])
        centres = torch.cat(centres)
        return (torch.cat(train) if self.solver_ == "nystrom" else centres), torch.cat(val), centres

    def _n_val(self, n: int) -> int:
        if self.val_fraction == 0:
            return 0
        if n < 2:
            raise PolysteerError(
                f"RFM holds out {self.val_fraction:.0%} of each class for validation but a class has {n} "
                "example; give at least 2 examples per class or set val_fraction=0"
            )
        return min(n - 1, max(1, round(self.val_fraction * n)))

    def _run_rounds(self, X_tr, y_tr, X_val, y_val, C) -> _Round:
        metric = torch.eye(X_tr.shape[1], dtype=self._dtype)
        best, self.val_aucs_ = None, []
        for iteration in tqdm(range(int(self.iters)), desc="rfm", leave=False, disable=None):
            kernel = LaplaceKernel(metric, self.bandwidth_, self.p)
            train = kernel.embed(X_tr)
            centres = train if len(C) == len(X_tr) else kernel.embed(C)
            alpha, G = self._fit_round(kernel, train, y_tr, centres)
            auc, mse = validation_scores(kernel, centres, alpha, X_val, y_val)
            peak = G.abs().max()
            if not torch.isfinite(peak) or peak == 0:
                break  # a constant predictor has no features to learn from
            current = _Round(iteration, auc, mse, metric, alpha, (G / peak).to(self._dtype))
            self.val_aucs_.append(auc)
            best = current if current.beats(best) else best
            if auc < best.auc / self.early_stop:
                break
            metric = current.agop
        if best is None:
            raise PolysteerError("RFM's predictor is constant (zero gradients); lower reg or raise the bandwidth "
                                 "so the kernel sees neighbouring points")
        return best

    def _fit_round(self, kernel, train: Points, y_tr, centres: Points) -> tuple[torch.Tensor, torch.Tensor]:
        """Kernel ridge coefficients (exact, or Nystrom on the centres) and the AGOP at the training points."""
        if centres is train:
            alpha, radial = solve_exact(kernel, train, y_tr, self.reg)
        else:
            alpha, radial = solve_nystrom(kernel, train, y_tr, centres, self.reg)
        return alpha, agop(kernel, train, centres, alpha, self.centre_grads, radial)

    def _set_directions(self, X_pos: torch.Tensor, X_neg: torch.Tensor) -> None:
        """Top-k eigenvectors of ``M_``; the sign of corr(y, X v) equals the sign of the class-mean gap."""
        k = min(int(self.k), self.M_.shape[0])
        values, vectors = torch.linalg.eigh(self.M_.double())
        top = vectors[:, -k:].flip(1).T.float()
        signs = torch.sign((X_pos.mean(0) - X_neg.mean(0)) @ top.T)
        self.directions_ = top * torch.where(signs == 0, 1.0, signs)[:, None]
        self.eigenvalues_ = values[-k:].flip(0).float()
        self.direction_, self.scale_ = finish_direction(self.directions_[0], X_pos, X_neg)
        self.directions_[0] = self.direction_  # the same vector, not one renormalised a rounding apart

    def decision_function(self, X) -> torch.Tensor:
        """The probe's output ``f(x)`` for each row (about +1 for positives, -1 for negatives)."""
        X = self._check_X(X)
        kernel = self._kernel()
        centres = Points(self._centres, None, self.centre_norms_)
        return predict(kernel, kernel.embed(self._shift(X)), centres, self.alpha_).float()

    def _shift(self, X: torch.Tensor) -> torch.Tensor:
        """Rows in the fit's coordinates: minus the training mean ``offset_``, in ``dtype``."""
        return (X.double() - self.offset_).to(self._dtype)

    def _kernel(self) -> LaplaceKernel:
        """The selected predictor's kernel, as stored (the metric rounded to float32)."""
        return LaplaceKernel(self.metric_.to(self._dtype), self.bandwidth_, self.p)

    def predict_proba(self, X) -> torch.Tensor:
        """P(positive | x) per row: the ridge regresses +-1 labels, so ``(f + 1) / 2`` clipped to [0, 1] is a
        least-squares estimate of it."""
        return ((self.decision_function(X) + 1) / 2).clamp(0.0, 1.0)

    def predict(self, X) -> torch.Tensor:
        """1 for rows the probe calls positive, else 0."""
        return (self.decision_function(X) > 0).long()

    def score(self, X) -> torch.Tensor:
        """Concept score of each row: the probe's output, which also ranks concepts that no single
        projection separates (use ``X @ direction_`` for the linear score)."""
        return self.decision_function(X)

    def _check_X(self, X) -> torch.Tensor:
        if not hasattr(self, "alpha_"):
            raise PolysteerError("this RFM is not fitted yet; call fit(X_pos, X_neg) first")
        X = torch.atleast_2d(torch.as_tensor(X))
        if X.ndim != 2 or X.shape[1] != self.centres_.shape[1]:
            raise PolysteerError(
                f"RFM was fitted on d_model {self.centres_.shape[1]} but got activations of shape "
                f"{tuple(X.shape)}; capture from the same hook point"
            )
        return X
