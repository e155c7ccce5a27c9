r"""A Gaussian mixture on :math:`\mathbb{R}^d` and its exact algebra.

:class:`GaussianMixture` evaluates densities, scores and responsibilities (at any noise level of
the variance-preserving forward process), samples, and maps mixtures exactly: through the forward
process (:meth:`GaussianMixture.diffuse`), an affine map (:meth:`GaussianMixture.affine`) and
conditioning on a linear-Gaussian observation (:meth:`GaussianMixture.condition`). It is the
closed form behind :class:`~dwgf_sci.priors.gaussian_mixture.GaussianMixturePrior`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._checks import check_finite
from ..errors import InvalidDataError, ShapeError
from .mixture_inputs import as_numbers, broadcast_abar, covariance_factors, flatten_points

__all__ = ["GaussianMixture"]

_LOG_2PI = math.log(2.0 * math.pi)
# Largest number of (sample, component, dimension) entries evaluated at once.
_CHUNK_ELEMENTS = 1 << 22


class GaussianMixture:
    r"""A Gaussian mixture :math:`\sum_k w_k \mathcal{N}(\mu_k, \Sigma_k)` on :math:`\mathbb{R}^d`.

    Besides sampling and densities, every density method takes an optional :math:`\bar\alpha`, which
    evaluates the mixture pushed through the VP forward process instead,

    .. math::

        p^{\bar\alpha}(x) = \sum_k w_k\, \mathcal{N}\big(x;\, \sqrt{\bar\alpha}\,\mu_k,\,
        \bar\alpha \Sigma_k + (1 - \bar\alpha) I\big),

    computed from one eigendecomposition :math:`\Sigma_k = Q_k \Lambda_k Q_k^\top` (the noised
    covariance is :math:`Q_k (\bar\alpha \Lambda_k + (1-\bar\alpha) I) Q_k^\top`), with the mixture
    sum done by ``logsumexp``.

    :param weights: non-negative weights ``(K,)`` (normalised here).
    :param means: component means ``(K, d)``.
    :param covs: a scalar, ``(K,)`` (isotropic), ``(K, d)`` (diagonal) or ``(K, d, d)`` (full,
        symmetric positive semi-definite).
    :param dtype: floating dtype; default: that of ``means`` (float32 for non-floating input).
    :param device: device; default: that of ``means``.
    """

    def __init__(
        self,
        weights: Any,
        means: Any,
        covs: Any = 1.0,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        mu = as_numbers(means, "means", dtype=dtype, device=device)
        check_finite(mu, "means")
        if mu.ndim != 2:
            raise ShapeError(f"means: expected shape (K, d), found {tuple(mu.shape)}")
        k, d = mu.shape
        w = as_numbers(weights, "weights", dtype=mu.dtype, device=mu.device).reshape(-1)
        check_finite(w, "weights")
        if w.numel() != k:
            raise ShapeError(f"weights: expected {k} values (one per mean), found {w.numel()}")
        if bool((w < 0).any()) or float(w.sum()) <= 0:
            raise InvalidDataError("weights: expected non-negative values with a positive sum")
        eigvals, eigvecs, full = covariance_factors(covs, k, d, mu.dtype, mu.device)
        if full is None and bool((eigvals < 0).any()):
            raise InvalidDataError("covariances: variances must be non-negative")
        self._log_weights = torch.log(w / w.sum())
        self._means = mu
        self._eigvals: Tensor | None = eigvals
        self._eigvecs: Tensor | None = eigvecs
        self._full = full
        self._diagonal = eigvecs is None
        self._stacked: tuple[Tensor, Tensor] | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def _from_parts(
        cls,
        log_weights: Tensor,
        means: Tensor,
        eigvals: Tensor | None,
        eigvecs: Tensor | None,
        full: Tensor | None = None,
    ) -> GaussianMixture:
        """Build from normalised log-weights and covariance factors, without checks."""
        obj = cls.__new__(cls)
        obj._log_weights = log_weights
        obj._means = means
        obj._eigvals = eigvals
        obj._eigvecs = eigvecs
        obj._full = full
        obj._diagonal = eigvecs is None and full is None
        obj._stacked = None
        return obj

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> GaussianMixture:
        """Copy to another device and/or floating dtype."""

        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return GaussianMixture._from_parts(
            move(self._log_weights),  # type: ignore[arg-type]
            move(self._means),  # type: ignore[arg-type]
            move(self._eigvals),
            move(self._eigvecs),
            move(self._full),
        )

    # ------------------------------------------------------------------ attributes
    @property
    def num_components(self) -> int:
        """Number of components :math:`K`."""
        return int(self._means.shape[0])

    @property
    def dim(self) -> int:
        """Dimension :math:`d`."""
        return int(self._means.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the parameters."""
        return self._means.dtype

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self._means.device

    @property
    def weights(self) -> Tensor:
        """Normalised weights ``(K,)``."""
        return self._log_weights.exp()

    @property
    def log_weights(self) -> Tensor:
        """Log of the normalised weights ``(K,)``."""
        return self._log_weights

    @property
    def means(self) -> Tensor:
        """Component means ``(K, d)``."""
        return self._means

    @property
    def covs(self) -> Tensor:
        """Full component covariances ``(K, d, d)``."""
        if self._full is not None:
            return self._full
        lam, q = self._eig()
        if q is None:
            return torch.diag_embed(lam)
        return (q * lam[:, None, :]) @ q.mT

    def _eig(self) -> tuple[Tensor, Tensor | None]:
        r"""Eigenvalues ``(K, d)`` (clamped at 0), eigenvectors ``(K, d, d)`` (None if diagonal)."""
        if self._eigvals is None:
            assert self._full is not None
            lam, q = torch.linalg.eigh(self._full)
            self._eigvals, self._eigvecs = lam.clamp_min(0), q
        return self._eigvals, self._eigvecs

    def __repr__(self) -> str:
        kind = "diagonal" if self._diagonal else "full"
        return (
            f"GaussianMixture(K={self.num_components}, d={self.dim}, covariances={kind}, "
            f"dtype={self.dtype})"
        )

    # ------------------------------------------------------------------ moments
    def mean(self) -> Tensor:
        r"""Mixture mean :math:`\sum_k w_k \mu_k`, shape ``(d,)``."""
        return self.weights @ self._means

    def cov(self) -> Tensor:
        r"""Mixture covariance :math:`\sum_k w_k (\Sigma_k + \mu_k\mu_k^\top) - m m^\top`."""
        w = self.weights
        m = self.mean()
        centred = self._means - m
        within = torch.einsum("k,kde->de", w, self.covs)
        between = torch.einsum("k,kd,ke->de", w, centred, centred)
        return within + between

    # ------------------------------------------------------------------ densities
    def _stacked_basis(self) -> tuple[Tensor, Tensor]:
        r"""Eigenbases side by side, ``Q_cat = [Q_1 \dots Q_K]`` ``(d, K d)``, and the means in
        them, :math:`Q_k^\top \mu_k` ``(K, d)`` (cached), so that one matrix product maps a batch
        into every component's eigenbasis."""
        if self._stacked is None:
            _, q = self._eig()
            assert q is not None
            k, d = self.num_components, self.dim
            q_cat = q.permute(1, 0, 2).reshape(d, k * d)
            mu_rot = (self._means[:, None, :] @ q).squeeze(1)
            self._stacked = (q_cat, mu_rot)
        return self._stacked

    def _terms(
        self, x: Tensor, abar: Tensor | None, want_score: bool
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        r"""Log-density ``(n,)``, score ``(n, d)`` (or None) and responsibilities ``(n, K)``.

        In the eigenbasis of component :math:`k`, :math:`u_k = Q_k^\top x - \sqrt{\bar\alpha}
        Q_k^\top\mu_k` has independent coordinates of variances
        :math:`\bar\alpha\lambda_k + 1 - \bar\alpha`; all :math:`u_k` come from one product with
        :math:`Q_\text{cat}` and the score goes back with its transpose. When every sample has the
        same :math:`\bar\alpha` the variances are computed once per component.
        """
        lam, q = self._eig()
        n, d = x.shape
        k = self.num_components
        if abar is None:
            root = x.new_ones(())
            var = lam[None]  # (1, K, d)
        elif bool((abar == abar[0]).all()):
            a = float(abar[0])
            root = x.new_tensor(math.sqrt(a))
            var = (a * lam + (1.0 - a))[None]
        else:
            a3 = abar[:, None, None]
            root = abar.sqrt()[:, None, None]
            var = a3 * lam[None] + (1.0 - a3)  # (n, K, d)
        if q is None:
            u = x[:, None, :] - root * self._means[None]
        else:
            q_cat, mu_rot = self._stacked_basis()
            u = (x @ q_cat).view(n, k, d) - root * mu_rot[None]
        g = u / var
        comp = -0.5 * ((u * g).sum(-1) + var.log().sum(-1) + d * _LOG_2PI)  # (n, K)
        joint = self._log_weights[None] + comp
        logp = torch.logsumexp(joint, dim=1)
        resp = torch.softmax(joint, dim=1)
        score = None
        if want_score:
            g = g * resp[..., None]
            if q is None:
                score = -g.sum(1)
            else:
                score = -(g.reshape(n, k * d) @ q_cat.T)
        return logp, score, resp

    def _evaluate(
        self, x: Tensor, abar: Tensor | float | None, want_score: bool
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        pts = flatten_points(x, self.dim, "x")
        dtype = torch.promote_types(pts.dtype, self.dtype)
        mix = (
            self
            if dtype == self.dtype and pts.device == self.device
            else self.to(pts.device, dtype)
        )
        pts = pts.to(dtype)
        n = pts.shape[0]
        a = broadcast_abar(abar, n, dtype, pts.device)
        chunk = max(1, _CHUNK_ELEMENTS // max(1, self.num_components * self.dim))
        outs = [
            mix._terms(pts[i : i + chunk], None if a is None else a[i : i + chunk], want_score)
            for i in range(0, n, chunk)
        ]
        logp = torch.cat([o[0] for o in outs]) if outs else pts.new_zeros(0)
        resp = torch.cat([o[2] for o in outs]) if outs else pts.new_zeros(0, self.num_components)
        score = None
        if want_score:
            score = torch.cat([o[1] for o in outs]) if outs else pts.new_zeros(0, self.dim)  # type: ignore[misc]
        return logp, score, resp

    def log_prob(self, x: Tensor, abar: Tensor | float | None = None) -> Tensor:
        r"""Log-density :math:`\log p(x)` (or :math:`\log p^{\bar\alpha}(x)` if ``abar`` is given).

        :param x: points ``(n, d)`` or ``(n, d, 1, 1)``.
        :param abar: ``None``, a scalar or ``(n,)`` values of :math:`\bar\alpha` in ``(0, 1]``.
        :return: ``(n,)`` tensor in the promoted dtype of ``x`` and the mixture.
        """
        return self._evaluate(x, abar, want_score=False)[0]

    def score(self, x: Tensor, abar: Tensor | float | None = None) -> Tensor:
        r"""Score :math:`\nabla_x \log p^{\bar\alpha}(x)` in closed form, same shape as ``x``.

        .. math::

            \nabla \log p^{\bar\alpha}(x) = -\sum_k r_k(x)\, C_k^{-1}(x - \sqrt{\bar\alpha}\mu_k),
            \qquad C_k = \bar\alpha\Sigma_k + (1-\bar\alpha) I,

        with responsibilities :math:`r_k \propto w_k \mathcal{N}(x; \sqrt{\bar\alpha}\mu_k, C_k)`.
        """
        return self._evaluate(x, abar, want_score=True)[1].reshape(x.shape)  # type: ignore[union-attr]

    def responsibilities(self, x: Tensor, abar: Tensor | float | None = None) -> Tensor:
        r"""Component posterior probabilities :math:`r_k(x)`, shape ``(n, K)``."""
        return self._evaluate(x, abar, want_score=False)[2]

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        r"""Draw ``n`` samples, shape ``(n, d)``.

        A component :math:`k \sim \mathrm{Cat}(w)` is drawn per sample, then
        :math:`x = \mu_k + Q_k \Lambda_k^{1/2} \xi`, :math:`\xi \sim \mathcal{N}(0, I)`. Random
        numbers come from ``generator`` (on its device): a seeded generator gives identical output.
        """
        n = int(n)
        if n < 0:
            raise InvalidDataError(f"n: expected a non-negative number of samples, found {n}")
        lam, q = self._eig()
        gdev = generator.device if generator is not None else self.device
        idx = torch.multinomial(self.weights.to(gdev), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, device=gdev, dtype=self.dtype)
        idx, eps = idx.to(self.device), eps.to(self.device)
        scaled = eps * lam.sqrt()[idx]
        if q is None:
            return self._means[idx] + scaled
        out = self._means[idx].clone()
        for k in torch.unique(idx).tolist():
            sel = idx == k
            out[sel] += scaled[sel] @ q[k].mT
        return out

    # ------------------------------------------------------------------ transformations
    def diffuse(self, abar: float | Tensor) -> GaussianMixture:
        r"""The mixture pushed through the VP forward process at :math:`\bar\alpha` (a scalar)."""
        a = float(abar)
        if not 0 < a <= 1:
            raise InvalidDataError(f"abar: expected a value in (0, 1], found {a}")
        lam, q = self._eig()
        full = (
            None
            if self._full is None
            else a * self._full
            + (1 - a) * torch.eye(self.dim, dtype=self.dtype, device=self.device)
        )
        return GaussianMixture._from_parts(
            self._log_weights, math.sqrt(a) * self._means, a * lam + (1 - a), q, full
        )

    def affine(self, matrix: Tensor, bias: Tensor | None = None) -> GaussianMixture:
        r"""Law of :math:`Wx + b`: means :math:`W\mu_k + b`, covariances :math:`W\Sigma_k W^\top`.

        When ``W`` has more rows than columns the result is degenerate (rank-deficient covariances):
        sampling and moments are fine, densities are only finite for :math:`\bar\alpha < 1`.
        """
        w = as_numbers(matrix, "matrix", dtype=self.dtype, device=self.device)
        if w.ndim != 2 or w.shape[1] != self.dim:
            raise ShapeError(f"matrix: expected shape (D, {self.dim}), found {tuple(w.shape)}")
        means = self._means @ w.mT
        if bias is not None:
            b = as_numbers(bias, "bias", dtype=self.dtype, device=self.device).reshape(-1)
            if b.numel() != w.shape[0]:
                raise ShapeError(f"bias: expected {w.shape[0]} values, found {b.numel()}")
            means = means + b
        covs = w @ self.covs @ w.mT
        return GaussianMixture._from_parts(
            self._log_weights, means, None, None, 0.5 * (covs + covs.mT)
        )

    def condition(
        self, matrix: Tensor, y: Tensor, sigma: float | Tensor, offset: Tensor | None = None
    ) -> GaussianMixture:
        r"""Exact posterior of :math:`x` given :math:`y = Hx + c + \sigma n`, :math:`n\sim N(0, I)`.

        Per component (Kalman form, no inverse of :math:`\Sigma_k` needed):

        .. math::

            S_k &= H \Sigma_k H^\top + \sigma^2 I, \qquad G_k = \Sigma_k H^\top S_k^{-1},\\
            \tilde\mu_k &= \mu_k + G_k (y - c - H\mu_k), \qquad
            \tilde\Sigma_k = \Sigma_k - G_k H \Sigma_k,\\
            \tilde w_k &\propto w_k\, \mathcal{N}(y - c;\, H\mu_k, S_k).

        Computed in float64 and returned in the mixture's dtype.

        :param matrix: :math:`H`, shape ``(m, d)``.
        :param y: observation with ``m`` entries (any shape).
        :param sigma: noise standard deviation, > 0.
        :param offset: :math:`c` with ``m`` entries, or ``None`` for 0.
        """
        f64 = torch.float64
        h = as_numbers(matrix, "matrix", dtype=f64, device=self.device)
        if h.ndim != 2 or h.shape[1] != self.dim:
            raise ShapeError(f"matrix: expected shape (m, {self.dim}), found {tuple(h.shape)}")
        m = h.shape[0]
        yv = as_numbers(y, "y", dtype=f64, device=self.device).reshape(-1)
        check_finite(yv, "y")
        if yv.numel() != m:
            raise ShapeError(f"y: expected {m} values (rows of the operator), found {yv.numel()}")
        if offset is not None:
            c = as_numbers(offset, "offset", dtype=f64, device=self.device).reshape(-1)
            if c.numel() != m:
                raise ShapeError(f"offset: expected {m} values, found {c.numel()}")
            yv = yv - c
        s = float(sigma)
        if not s > 0 or not math.isfinite(s):
            raise InvalidDataError(f"sigma: expected a positive finite noise level, found {s}")
        cov = self.covs.to(f64)
        mu = self._means.to(f64)
        hs = h @ cov  # (K, m, d)
        syy = hs @ h.mT + s * s * torch.eye(m, dtype=f64, device=self.device)
        chol = torch.linalg.cholesky(syy)
        resid = yv - mu @ h.mT  # (K, m)
        sol = torch.cholesky_solve(hs, chol)  # S^{-1} H Sigma, (K, m, d)
        post_mean = mu + (resid[:, None, :] @ sol).squeeze(1)
        post_cov = cov - hs.mT @ sol
        post_cov = 0.5 * (post_cov + post_cov.mT)
        white = torch.linalg.solve_triangular(chol, resid[..., None], upper=False).squeeze(-1)
        log_ev = -0.5 * (
            (white * white).sum(-1)
            + 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
            + m * _LOG_2PI
        )
        logits = self._log_weights.to(f64) + log_ev
        log_w = logits - torch.logsumexp(logits, 0)
        return GaussianMixture._from_parts(
            log_w.to(self.dtype), post_mean.to(self.dtype), None, None, post_cov.to(self.dtype)
        )
