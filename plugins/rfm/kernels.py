"""Kernel algebra behind the RFM finder: Mahalanobis-Laplace kernels, ridge solves and the AGOP.

Everything runs in the dtype of the points (the finder uses float32 by default, float64 on request) and in
row blocks, so no work matrix grows past :data:`BLOCK_BYTES` whatever the number of points, except the
``[n, m]`` kernel and gradient-weight matrices that a solve keeps for the AGOP (``[n, n]`` for the exact
solve). Distances use the ``x M z^T`` expansion: each point is multiplied by ``M`` once per round
(:class:`Points`), ``M^(1/2)`` is never formed and no ``[n, m, d]`` tensor exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
from sklearn.metrics import roc_auc_score

from polysteer.errors import PolysteerError

BLOCK_BYTES = 2**27  # each [rows, centres] work block stays under 128 MiB
KEEP_BYTES = 2**31  # a Nystrom solve keeps its [n, m] gradient weights for the AGOP up to this size


def _same_point(dtype: torch.dtype) -> float:
    """Squared distances below this fraction of the squared norms are rounding noise."""
    return max(1e-12, 100 * torch.finfo(dtype).eps)


@dataclass
class Points:
    """Rows ``X`` with their images ``X M`` and squared norms ``x^T M x`` under one kernel's metric.

    ``XM`` is only read for the first argument of :meth:`LaplaceKernel.distances`, so centres that are
    never queried may leave it None.
    """

    X: torch.Tensor
    XM: torch.Tensor | None
    sq: torch.Tensor

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, rows) -> "Points":
        return Points(self.X[rows], None if self.XM is None else self.XM[rows], self.sq[rows])


@dataclass
class LaplaceKernel:
    """``k(x, z) = exp(-||x - z||_M^p / L^p)`` with ``||u||_M^2 = u^T M u``.

    Args:
        metric: The feature matrix ``M`` ``[d, d]`` (symmetric positive semi-definite, the points' dtype).
        bandwidth: ``L``, in the units of the activations.
        p: Exponent of the distance; ``0 < p <= 2`` keeps the kernel positive definite.
    """

    metric: torch.Tensor
    bandwidth: float
    p: float

    def embed(self, X: torch.Tensor) -> Points:
        XM = X @ self.metric
        return Points(X, XM, (XM * X).sum(1))

    def distances(self, Z: Points, C: Points) -> torch.Tensor:
        """``[len(Z), len(C)]`` Mahalanobis distances; coincident points get exactly 0."""
        base = Z.sq[:, None] + C.sq[None, :]
        d2 = torch.addmm(base, Z.XM, C.X.T, alpha=-2)
        d2.masked_fill_(d2 <= base.mul_(_same_point(d2.dtype)), 0)
        return d2.sqrt_()

    def values(self, D: torch.Tensor) -> torch.Tensor:
        """Kernel values from distances (a new tensor)."""
        K = D / self.bandwidth
        if self.p != 1:
            K.pow_(self.p)
        return K.neg_().exp_()

    def radial(self, D: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
        """``k * ||z - c||^(p-2)``, the gradient weight of each pair, written over ``D``.

        Coincident pairs get 0: the gradient of ``||z - c||^p`` at ``z = c`` is taken as 0 (as in xRFM).
        """
        zero = D == 0
        D.pow_(self.p - 2).masked_fill_(zero, 0)
        return D.mul_(K)


def median_distance(X: torch.Tensor) -> float:
    """The median Euclidean distance between distinct rows of ``X``."""
    X = X.double()
    d = torch.cdist(X, X)
    d = d[torch.triu(torch.ones_like(d, dtype=torch.bool), 1)]
    median = float(d.median()) if len(d) else 0.0
    if not median > 0:
        raise PolysteerError("RFM's median bandwidth is 0: the training points coincide; give varied examples or "
                             "a numeric bandwidth")
    return median


def row_blocks(n: int, width: int, itemsize: int = 8) -> Iterator[slice]:
    """Slices of rows such that a ``[rows, width]`` block of ``itemsize``-byte numbers fits in :data:`BLOCK_BYTES`."""
    step = max(1, BLOCK_BYTES // (itemsize * max(width, 1)))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def predict(kernel: LaplaceKernel, Z: Points, C: Points, alpha: torch.Tensor) -> torch.Tensor:
    """``f(z) = sum_j alpha_j k(z, c_j)`` for each row of ``Z``, without holding the whole kernel."""
    out = torch.empty(len(Z), dtype=alpha.dtype)
    for rows in row_blocks(len(Z), len(C), alpha.element_size()):
        out[rows] = kernel.values(kernel.distances(Z[rows], C)) @ alpha
    return out


def cholesky_solve(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve the symmetric positive definite system ``A x = b`` (``A`` may be modified).

    Rounding can leave a kernel system barely indefinite, so a growing diagonal jitter (relative to the
    mean diagonal) is added, in float64, until the factorisation succeeds; past that, an LU solve (as xRFM
    uses) still answers a system that is merely indefinite. The solution has ``b``'s dtype.
    """
    x = _try_cholesky_solve(A, b)
    if x is not None:
        return x
    solution, info = torch.linalg.solve_ex(A.double(), b.double().unsqueeze(-1))
    if int(info) != 0 or not torch.isfinite(solution).all():
        raise PolysteerError(
            "the RFM kernel system is singular; raise reg (e.g. reg=1e-2) or check the activations for "
            "duplicated or exploding rows"
        )
    return solution.squeeze(-1).to(b.dtype)


def _try_cholesky_solve(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
    factor, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        return torch.cholesky_solve(b.to(A.dtype).unsqueeze(-1), factor).squeeze(-1).to(b.dtype)
    A = A.double()
    scale = float(A.diagonal().mean())
    added = 0.0
    for exponent in (-12, -10, -8, -6):
        jitter = scale * 10.0**exponent
        A.diagonal().add_(jitter - added)
        added = jitter
        factor, info = torch.linalg.cholesky_ex(A)
        if int(info) == 0:
            return torch.cholesky_solve(b.double().unsqueeze(-1), factor).squeeze(-1).to(b.dtype)
    return None


def kernel_blocks(
    kernel: LaplaceKernel, Z: Points, C: Points, keep_radial: bool
) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor | None]]:
    """``(rows, K[rows], radial[rows] or None)`` for row blocks of ``Z`` against all of ``C``."""
    for rows in row_blocks(len(Z), len(C), Z.X.element_size()):
        D = kernel.distances(Z[rows], C)
        K = kernel.values(D)
        yield rows, K, kernel.radial(D, K) if keep_radial else None


def solve_exact(kernel: LaplaceKernel, P: Points, y: torch.Tensor, reg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel ridge ``alpha = (K + reg I)^-1 y`` with every training point as a centre (Cholesky).

    Returns ``alpha`` and the ``[n, n]`` radial weights, which :func:`agop` reuses instead of
    recomputing the distances. Peak memory is three ``[n, n]`` matrices (kernel, weights, factor).
    A float32 system that does not factor (float32 distances between near points are too noisy for a
    small ridge) is rebuilt and solved in float64.
    """
    n = len(P)
    K = torch.empty(n, n, dtype=P.X.dtype)
    radial = torch.empty_like(K)
    for rows, K_rows, radial_rows in kernel_blocks(kernel, P, P, keep_radial=True):
        K[rows], radial[rows] = K_rows, radial_rows
    K.diagonal().add_(reg)
    alpha = _try_cholesky_solve(K, y) if P.X.dtype != torch.float64 else cholesky_solve(K, y)
    if alpha is not None:
        return alpha, radial
    del K, radial
    precise = LaplaceKernel(kernel.metric.double(), kernel.bandwidth, kernel.p)
    alpha, radial = solve_exact(precise, precise.embed(P.X.double()), y.double(), reg)
    return alpha.to(P.X.dtype), radial.to(P.X.dtype)


def solve_nystrom(
    kernel: LaplaceKernel, P: Points, y: torch.Tensor, C: Points, reg: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Nystrom kernel ridge on centres ``C``: ``(K_nm^T K_nm + reg K_mm)^-1 K_nm^T y``.

    Minimises ``||K_nm a - y||^2 + reg a^T K_mm a``, which equals exact kernel ridge when the centres
    are all the points; every training label is used. The ``[m, m]`` normal equations square the
    kernel's condition number, so they are accumulated and solved in float64 whatever the points' dtype.
    Returns ``alpha`` (in the points' dtype) and the ``[n, m]`` radial weights for :func:`agop` when they
    fit in :data:`KEEP_BYTES` (else None, and the AGOP recomputes them block by block).
    """
    keep = len(P) * len(C) * P.X.element_size() <= KEEP_BYTES
    radial = torch.empty(len(P), len(C), dtype=P.X.dtype) if keep else None
    A = kernel.values(kernel.distances(C, C)).double().mul_(reg)
    rhs = torch.zeros(len(C), dtype=torch.float64)
    for rows, K, radial_rows in kernel_blocks(kernel, P, C, keep_radial=keep):
        K = K.double()
        A.addmm_(K.T, K)
        rhs.addmv_(K.T, y[rows].double())
        if keep:
            radial[rows] = radial_rows
    return cholesky_solve(A, rhs).to(P.X.dtype), radial


def agop(
    kernel: LaplaceKernel,
    Z: Points,
    C: Points,
    alpha: torch.Tensor,
    centre: bool,
    radial: torch.Tensor | None = None,
) -> torch.Tensor:
    """Average gradient outer product ``sum_i g_i g_i^T`` of ``f`` at the rows of ``Z``.

    For ``f(z) = sum_j alpha_j k(z, c_j)``:
    ``grad f(z) = -(p / L^p) M sum_j alpha_j k(z, c_j) ||z - c_j||_M^(p-2) (z - c_j) = -(p / L^p) M a(z)``,
    so ``G = (p / L^p)^2 M (sum_i a_i a_i^T) M`` and only ``[d, d]`` sums are kept. ``radial`` is the
    precomputed ``[len(Z), len(C)]`` weight matrix when a solve kept it. With ``centre`` the mean
    gradient is removed first. The ``[d, d]`` sums are kept in float64.
    """
    d = Z.X.shape[1]
    outer = torch.zeros(d, d, dtype=torch.float64)
    total = torch.zeros(d, dtype=torch.float64)
    for rows in row_blocks(len(Z), len(C), Z.X.element_size()):
        if radial is None:
            D = kernel.distances(Z[rows], C)
            W = kernel.radial(D, kernel.values(D)).mul_(alpha)
        else:
            W = radial[rows] * alpha
        A = Z.X[rows] * W.sum(1, keepdim=True) - W @ C.X
        outer += (A.T @ A).double()
        total += A.sum(0).double()
    if centre:
        outer -= torch.outer(total, total) / len(Z)
    M = kernel.metric.double()
    return (kernel.p / kernel.bandwidth**kernel.p) ** 2 * (M @ outer @ M)


def validation_scores(kernel: LaplaceKernel, C: Points, alpha, X_val, y_val) -> tuple[float, float]:
    """Validation (AUC, MSE) of the predictor; NaN when there is no validation set."""
    if len(X_val) == 0:
        return math.nan, math.nan
    f = predict(kernel, kernel.embed(X_val), C, alpha)
    return float(roc_auc_score((y_val > 0).numpy(), f.numpy())), float(((f - y_val).double() ** 2).mean())
