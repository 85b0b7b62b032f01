"""Kernel algebra behind the RFM finder: Mahalanobis-Laplace kernels, ridge solves and the AGOP.

Everything runs in float64 (kernel systems with a small ridge are badly conditioned) and in row blocks,
so no work matrix grows past :data:`BLOCK_BYTES` whatever the number of points, except the exact solve's
``[n, n]`` system. Distances use the ``x M z^T`` expansion: each point is multiplied by ``M`` once per
round (:class:`Points`), ``M^(1/2)`` is never formed and no ``[n, m, d]`` tensor exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from polysteer.errors import PolysteerError

BLOCK_BYTES = 2**27  # each [rows, centres] float64 block stays under 128 MiB
_SAME_POINT = 1e-12  # squared distances below this fraction of the squared norms are rounding noise


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
        metric: The feature matrix ``M`` ``[d, d]`` (symmetric positive semi-definite, float64).
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
        d2.masked_fill_(d2 <= base.mul_(_SAME_POINT), 0)
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


def row_blocks(n: int, width: int) -> Iterator[slice]:
    """Slices of rows such that a ``[rows, width]`` float64 block fits in :data:`BLOCK_BYTES`."""
    step = max(1, BLOCK_BYTES // (8 * max(width, 1)))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def predict(kernel: LaplaceKernel, Z: Points, C: Points, alpha: torch.Tensor) -> torch.Tensor:
    """``f(z) = sum_j alpha_j k(z, c_j)`` for each row of ``Z``, without holding the whole kernel."""
    out = torch.empty(len(Z), dtype=torch.float64)
    for rows in row_blocks(len(Z), len(C)):
        out[rows] = kernel.values(kernel.distances(Z[rows], C)) @ alpha
    return out


def cholesky_solve(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve the symmetric positive definite system ``A x = b`` (``A`` may be modified).

    Rounding can leave a kernel system barely indefinite, so a growing diagonal jitter (relative to the
    mean diagonal) is added until the factorisation succeeds.
    """
    scale = float(A.diagonal().mean())
    added = 0.0
    for exponent in (None, -12, -10, -8, -6):
        if exponent is not None:
            jitter = scale * 10.0**exponent
            A.diagonal().add_(jitter - added)
            added = jitter
        factor, info = torch.linalg.cholesky_ex(A)
        if int(info) == 0:
            return torch.cholesky_solve(b.unsqueeze(-1), factor).squeeze(-1)
    raise PolysteerError(
        "the RFM kernel system is not positive definite even with jitter; raise reg (e.g. reg=1e-2) "
        "or check the activations for duplicated or exploding rows"
    )


def solve_exact(kernel: LaplaceKernel, P: Points, y: torch.Tensor, reg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel ridge ``alpha = (K + reg I)^-1 y`` with every training point as a centre.

    Returns ``alpha`` and the ``[n, n]`` radial weights, which :func:`agop` reuses instead of
    recomputing the distances. Peak memory is three ``[n, n]`` float64 matrices.
    """
    D = kernel.distances(P, P)
    K = kernel.values(D)
    radial = kernel.radial(D, K)
    K.diagonal().add_(reg)
    return cholesky_solve(K, y), radial


def solve_nystrom(kernel: LaplaceKernel, P: Points, y: torch.Tensor, C: Points, reg: float) -> torch.Tensor:
    """Nystrom kernel ridge on centres ``C``: ``(K_nm^T K_nm + reg K_mm)^-1 K_nm^T y``.

    Minimises ``||K_nm a - y||^2 + reg a^T K_mm a``, which equals exact kernel ridge when the centres
    are all the points; every training label is used while memory stays ``O(m^2 + block)``.
    """
    A = kernel.values(kernel.distances(C, C)).mul_(reg)
    rhs = torch.zeros(len(C), dtype=torch.float64)
    for rows in row_blocks(len(P), len(C)):
        K = kernel.values(kernel.distances(P[rows], C))
        A.addmm_(K.T, K)
        rhs.addmv_(K.T, y[rows])
    return cholesky_solve(A, rhs)


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
    precomputed ``[len(Z), len(C)]`` weight matrix when it exists (exact solve). With ``centre`` the mean
    gradient is removed first.
    """
    d = Z.X.shape[1]
    outer = torch.zeros(d, d, dtype=torch.float64)
    total = torch.zeros(d, dtype=torch.float64)
    for rows in row_blocks(len(Z), len(C)):
        if radial is None:
            D = kernel.distances(Z[rows], C)
            W = kernel.radial(D, kernel.values(D)).mul_(alpha)
        else:
            W = radial[rows] * alpha
        A = Z.X[rows] * W.sum(1, keepdim=True) - W @ C.X
        outer.addmm_(A.T, A)
        total += A.sum(0)
    if centre:
        outer -= torch.outer(total, total) / len(Z)
    M = kernel.metric
    return (kernel.p / kernel.bandwidth**kernel.p) ** 2 * (M @ outer @ M)
