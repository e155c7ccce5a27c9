r"""An exact Gaussian-mixture latent prior, for validating posterior samplers.

The prior on latents :math:`z \in \mathbb{R}^d` is

.. math::

    p(z) = \sum_{k=1}^K w_k\, \mathcal{N}(z;\, \mu_k, \Sigma_k),

and the decoder is the identity or an affine map :math:`D(z) = W z + b`. Everything a diffusion
sampler needs is then known in closed form:

* Under the variance-preserving forward process
  :math:`z_t = \sqrt{\bar\alpha_t} z_0 + \sqrt{1-\bar\alpha_t}\,\epsilon`, the marginal is again a
  mixture,

  .. math::

      p_t(z_t) = \sum_k w_k\, \mathcal{N}\big(z_t;\, \sqrt{\bar\alpha_t}\,\mu_k,\,
      \bar\alpha_t \Sigma_k + (1 - \bar\alpha_t) I\big),

  so the ideal noise predictor is
  :math:`\epsilon^\star(z_t, t) = -\sqrt{1-\bar\alpha_t}\, \nabla \log p_t(z_t)`.
* For a linear-Gaussian observation :math:`y = A D(z) + \sigma n`, :math:`n \sim \mathcal{N}(0, I)`,
  the posterior :math:`p(z \mid y)` is a Gaussian mixture (:meth:`GaussianMixture.condition`),
  and because :math:`z_t` depends on :math:`y` only through :math:`z_0`, the noisy posterior
  :math:`p(z_t \mid y) = \int q(z_t \mid z_0)\, p(z_0 \mid y)\, dz_0` is that posterior pushed
  through the same forward process. Its score is therefore exact as well
  (:meth:`GaussianMixturePrior.noisy_posterior_score`).

Vectors use the image layout of the rest of the package: a latent batch is ``(B, d, 1, 1)``
(channels carry the dimension) and an image batch is ``(B, D, 1, 1)``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from .._checks import as_tensor, check_finite
from ..errors import InvalidDataError, ShapeError
from .base import LatentPrior, linear_alphas_cumprod

__all__ = ["GaussianMixture", "GaussianMixturePrior"]

_LOG_2PI = math.log(2.0 * math.pi)
# Largest number of (sample, component, dimension) entries evaluated at once.
_CHUNK_ELEMENTS = 1 << 22


def _tensor(
    data: Any, name: str, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> Tensor:
    """:func:`as_tensor` that also accepts Python scalars and (nested) lists."""
    if not isinstance(data, (torch.Tensor, np.ndarray)):
        try:
            data = np.asarray(data, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise InvalidDataError(
                f"{name}: expected numbers, found {type(data).__name__}"
            ) from err
    return as_tensor(data, name, dtype=dtype, device=device)


def _flatten_points(x: Tensor, dim: int, name: str) -> Tensor:
    """Reshape ``(n, d)`` or ``(n, d, 1, 1)`` points to ``(n, d)``, checking the dimension."""
    if not torch.is_tensor(x):
        raise InvalidDataError(f"{name}: expected a torch.Tensor, found {type(x).__name__}")
    if x.ndim not in (2, 4) or (x.ndim == 4 and tuple(x.shape[2:]) != (1, 1)):
        raise ShapeError(
            f"{name}: expected shape (n, {dim}) or (n, {dim}, 1, 1), found {tuple(x.shape)}"
        )
    if x.shape[1] != dim:
        raise ShapeError(f"{name}: expected dimension {dim}, found shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], dim)


def _as_abar(
    abar: Tensor | float | None, n: int, dtype: torch.dtype, device: torch.device
) -> Tensor | None:
    r"""Broadcast :math:`\bar\alpha` (scalar or ``(n,)``) to ``(n,)``; ``None`` passes through."""
    if abar is None:
        return None
    a = torch.as_tensor(abar, dtype=dtype, device=device)
    if a.ndim == 0:
        a = a.expand(n)
    a = a.reshape(-1)
    if a.numel() != n:
        raise ShapeError(f"abar: expected a scalar or {n} values, found {a.numel()}")
    if not bool(((a > 0) & (a <= 1)).all()):
        raise InvalidDataError("abar: values must lie in (0, 1]")
    return a


def _covariance_factors(
    covs: Any, num_components: int, dim: int, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Parse covariances into ``(eigvals (K, d), eigvecs (K, d, d) or None, full covs or None)``.

    Scalar, ``(K,)`` and ``(K, d)`` inputs are diagonal (no eigenvectors are stored); ``(K, d, d)``
    inputs are checked (symmetric, positive semi-definite) and kept with their eigendecomposition.
    """
    c = _tensor(covs, "covariances", dtype=dtype, device=device)
    check_finite(c, "covariances")
    k, d = num_components, dim
    if c.ndim == 0:
        return c.expand(k, d).clone(), None, None
    if c.ndim == 1 and c.shape[0] == k:
        return c[:, None].expand(k, d).clone(), None, None
    if c.ndim == 2 and tuple(c.shape) == (k, d):
        return c.clone(), None, None
    if c.ndim == 3 and tuple(c.shape) == (k, d, d):
        scale = float(c.abs().max()) if c.numel() else 1.0
        if not torch.allclose(c, c.mT, rtol=1e-6, atol=1e-8 * scale):
            raise InvalidDataError("covariances: full covariance matrices must be symmetric")
        full = 0.5 * (c + c.mT)
        lam, q = torch.linalg.eigh(full)
        if bool((lam < -1e-8 * max(scale, 1e-300)).any()):
            raise InvalidDataError(
                "covariances: full covariance matrices must be positive semi-definite, "
                f"found an eigenvalue {float(lam.min()):.3g}"
            )
        return lam.clamp_min(0), q, full
    raise ShapeError(
        f"covariances: expected a scalar, ({k},), ({k}, {d}) or ({k}, {d}, {d}), "
        f"found shape {tuple(c.shape)}"
    )


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
        mu = _tensor(means, "means", dtype=dtype, device=device)
        check_finite(mu, "means")
        if mu.ndim != 2:
            raise ShapeError(f"means: expected shape (K, d), found {tuple(mu.shape)}")
        k, d = mu.shape
        w = _tensor(weights, "weights", dtype=mu.dtype, device=mu.device).reshape(-1)
        check_finite(w, "weights")
        if w.numel() != k:
            raise ShapeError(f"weights: expected {k} values (one per mean), found {w.numel()}")
        if bool((w < 0).any()) or float(w.sum()) <= 0:
            raise InvalidDataError("weights: expected non-negative values with a positive sum")
        eigvals, eigvecs, full = _covariance_factors(covs, k, d, mu.dtype, mu.device)
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
        pts = _flatten_points(x, self.dim, "x")
        dtype = torch.promote_types(pts.dtype, self.dtype)
        mix = (
            self
            if dtype == self.dtype and pts.device == self.device
            else self.to(pts.device, dtype)
        )
        pts = pts.to(dtype)
        n = pts.shape[0]
        a = _as_abar(abar, n, dtype, pts.device)
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
        w = _tensor(matrix, "matrix", dtype=self.dtype, device=self.device)
        if w.ndim != 2 or w.shape[1] != self.dim:
            raise ShapeError(f"matrix: expected shape (D, {self.dim}), found {tuple(w.shape)}")
        means = self._means @ w.mT
        if bias is not None:
            b = _tensor(bias, "bias", dtype=self.dtype, device=self.device).reshape(-1)
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
        h = _tensor(matrix, "matrix", dtype=f64, device=self.device)
        if h.ndim != 2 or h.shape[1] != self.dim:
            raise ShapeError(f"matrix: expected shape (m, {self.dim}), found {tuple(h.shape)}")
        m = h.shape[0]
        yv = _tensor(y, "y", dtype=f64, device=self.device).reshape(-1)
        check_finite(yv, "y")
        if yv.numel() != m:
            raise ShapeError(f"y: expected {m} values (rows of the operator), found {yv.numel()}")
        if offset is not None:
            c = _tensor(offset, "offset", dtype=f64, device=self.device).reshape(-1)
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


def _matrix_of(operator: Any) -> Tensor:
    """A dense matrix from a tensor, an array, or an object with a ``matrix`` attribute."""
    mat = getattr(operator, "matrix", operator)
    if not isinstance(mat, (torch.Tensor, np.ndarray)):
        raise InvalidDataError(
            "A: expected a matrix (tensor or array) or an operator with a `matrix` attribute, "
            f"found {type(operator).__name__}"
        )
    return _tensor(mat, "A")


class GaussianMixturePrior(LatentPrior):
    r"""Gaussian-mixture latent prior with an exact noise predictor and a linear decoder.

    .. math::

        z \sim \sum_k w_k \mathcal{N}(\mu_k, \Sigma_k), \qquad x = D(z) = W z + b,
        \qquad \epsilon^\star(z_t, t) = -\sqrt{1-\bar\alpha_t}\,\nabla\log p_t(z_t),

    with :math:`p_t` the VP-noised mixture (see :class:`GaussianMixture`). The encoder is the
    least-squares inverse :math:`E(x) = W^{+}(x - b)`. Latents are ``(B, d, 1, 1)`` and images
    ``(B, D, 1, 1)`` (``D = d`` for the identity decoder), so ``image_size`` is ``(1, 1)`` and
    ``downsample`` is 1.

    :param weights: mixture weights ``(K,)`` (normalised here).
    :param means: means ``(K, d)``.
    :param covariances: scalar, ``(K,)`` isotropic, ``(K, d)`` diagonal or ``(K, d, d)`` full
        (symmetric positive definite).
    :param decoder: ``W``, shape ``(D, d)``, or ``None`` for the identity.
    :param decoder_bias: ``b``, ``D`` values, or ``None`` for 0.
    :param alphas_cumprod: :math:`\bar\alpha_t`; default :func:`linear_alphas_cumprod` (1000 steps).
    :param data_scale: physical units per model unit (see :class:`LatentPrior`).
    :param data_offset: see ``data_scale``.
    :param dtype: floating dtype of the parameters; default that of ``means`` (float32 otherwise).
    """

    affine_decoder: ClassVar[bool] = True

    def __init__(
        self,
        weights: Any,
        means: Any,
        covariances: Any = 1.0,
        decoder: Any | None = None,
        decoder_bias: Any | None = None,
        alphas_cumprod: Tensor | None = None,
        data_scale: float = 1.0,
        data_offset: float = 0.0,
        dtype: torch.dtype | None = None,
    ) -> None:
        mix = GaussianMixture(weights, means, covariances, dtype=dtype)
        lam, q = mix._eig()
        if not bool((lam > 0).all()):
            raise InvalidDataError("covariances: the prior needs positive definite covariances")
        d = mix.dim
        if decoder is None:
            w = None
            if decoder_bias is not None:
                w = torch.eye(d, dtype=mix.dtype, device=mix.device)
        else:
            w = _tensor(decoder, "decoder", dtype=mix.dtype, device=mix.device)
            check_finite(w, "decoder")
            if w.ndim != 2 or w.shape[1] != d:
                raise ShapeError(f"decoder: expected shape (D, {d}), found {tuple(w.shape)}")
        image_dim = d if w is None else int(w.shape[0])
        b = None
        if decoder_bias is not None:
            b = _tensor(decoder_bias, "decoder_bias", dtype=mix.dtype, device=mix.device).reshape(
                -1
            )
            check_finite(b, "decoder_bias")
            if b.numel() != image_dim:
                raise ShapeError(f"decoder_bias: expected {image_dim} values, found {b.numel()}")
        if alphas_cumprod is None:
            alphas_cumprod = linear_alphas_cumprod()
        super().__init__(
            alphas_cumprod,
            image_channels=image_dim,
            latent_channels=d,
            downsample=1,
            image_size=(1, 1),
            data_scale=data_scale,
            data_offset=data_offset,
        )
        self.register_buffer("log_weights", mix.log_weights.clone())
        self.register_buffer("means", mix.means.clone())
        self.register_buffer("cov_eigvals", lam.clone())
        self.register_buffer("cov_eigvecs", None if q is None else q.clone())
        self.register_buffer("decoder_weight", w)
        self.register_buffer("decoder_bias", b)
        enc = None
        if w is not None:
            enc = torch.linalg.pinv(w.to(torch.float64)).to(mix.dtype)
        self.register_buffer("encoder_weight", enc)

    # ------------------------------------------------------------------ attributes
    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the mixture parameters."""
        return self.means.dtype

    @property
    def dim(self) -> int:
        """Latent dimension :math:`d`."""
        return int(self.means.shape[1])

    @property
    def image_dim(self) -> int:
        """Image dimension :math:`D`."""
        return self.image_channels

    @property
    def num_components(self) -> int:
        """Number of components :math:`K`."""
        return int(self.means.shape[0])

    @property
    def weights(self) -> Tensor:
        """Normalised mixture weights ``(K,)``."""
        return self.log_weights.exp()

    @property
    def covariances(self) -> Tensor:
        """Full component covariances ``(K, d, d)``."""
        return self.mixture.covs

    @property
    def mixture(self) -> GaussianMixture:
        """The clean latent prior as a :class:`GaussianMixture` (a view on the buffers)."""
        return GaussianMixture._from_parts(
            self.log_weights, self.means, self.cov_eigvals, self.cov_eigvecs
        )

    def _mixture_as(self, dtype: torch.dtype, device: torch.device) -> GaussianMixture:
        mix = self.mixture
        return mix if (dtype == mix.dtype and device == mix.device) else mix.to(device, dtype)

    # ------------------------------------------------------------------ networks
    def _encode(self, x: Tensor) -> Tensor:
        flat = _flatten_points(x, self.image_dim, "x")
        if self.encoder_weight is not None:
            dtype = torch.promote_types(flat.dtype, self.dtype)
            flat = flat.to(dtype)
            if self.decoder_bias is not None:
                flat = flat - self.decoder_bias.to(dtype)
            flat = (flat @ self.encoder_weight.to(dtype).mT).to(x.dtype)
        return flat.reshape(x.shape[0], self.dim, 1, 1)

    def _decode(self, z: Tensor) -> Tensor:
        flat = _flatten_points(z, self.dim, "z")
        if self.decoder_weight is not None:
            dtype = torch.promote_types(flat.dtype, self.dtype)
            out = flat.to(dtype) @ self.decoder_weight.to(dtype).mT
            if self.decoder_bias is not None:
                out = out + self.decoder_bias.to(dtype)
            flat = out.to(z.dtype)
        return flat.reshape(z.shape[0], self.image_dim, 1, 1)

    def _abar(self, t: Tensor | int, n: int) -> Tensor:
        r""":math:`\bar\alpha_t` for integer timestep(s), shape ``(n,)``."""
        tt = torch.as_tensor(t, device=self.alphas_cumprod.device).long().reshape(-1)
        if tt.numel() == 1:
            tt = tt.expand(n)
        if tt.numel() != n:
            raise ShapeError(f"t: expected a scalar or {n} timesteps, found {tt.numel()}")
        if bool(((tt < 0) | (tt >= self.num_train_timesteps)).any()):
            raise InvalidDataError(f"t: timesteps must lie in [0, {self.num_train_timesteps})")
        return self.alphas_cumprod[tt]

    def _predict_noise(self, z_t: Tensor, t: Tensor) -> Tensor:
        flat = _flatten_points(z_t, self.dim, "z_t")
        dtype = torch.promote_types(flat.dtype, self.dtype)
        abar = self._abar(t, flat.shape[0]).to(device=flat.device, dtype=dtype)
        score = self._mixture_as(dtype, flat.device).score(flat.to(dtype), abar)
        eps = -torch.sqrt(1.0 - abar)[:, None] * score
        return eps.to(z_t.dtype).reshape(z_t.shape)

    # ------------------------------------------------------------------ exact quantities
    def log_prob(self, z: Tensor, t: Tensor | int | None = None) -> Tensor:
        r""":math:`\log p(z)` (``t=None``) or :math:`\log p_t(z_t)` at integer timestep(s) ``t``.

        :param z: latents ``(n, d, 1, 1)`` or ``(n, d)``; differentiable.
        :return: ``(n,)`` in the promoted dtype of ``z`` and the prior.
        """
        flat = _flatten_points(z, self.dim, "z")
        dtype = torch.promote_types(flat.dtype, self.dtype)
        abar = None if t is None else self._abar(t, flat.shape[0]).to(flat.device, dtype)
        return self._mixture_as(dtype, flat.device).log_prob(flat.to(dtype), abar)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Clean prior samples ``(n, d, 1, 1)`` in the prior's dtype."""
        return self.mixture.sample(n, generator).reshape(int(n), self.dim, 1, 1)

    def posterior(self, A: Any, y: Tensor, sigma: float | Tensor) -> GaussianMixture:
        r"""Exact latent posterior :math:`p(z \mid y)` for :math:`y = A(Wz + b) + \sigma n`.

        It is :meth:`GaussianMixture.condition` of the prior with :math:`H = AW` and offset
        :math:`c = Ab`.

        :param A: dense ``(m, D)`` matrix, or an operator with a ``matrix`` attribute
            (e.g. :class:`dwgf_sci.operators.matrix.MatrixOperator`).
        :param y: observation with ``m`` entries (any shape, e.g. ``(1, m)``).
        :param sigma: noise standard deviation, > 0.
        :return: a :class:`GaussianMixture` over latents ``(d,)``.
        """
        a = _matrix_of(A).to(device=self.device, dtype=torch.float64)
        if a.ndim != 2 or a.shape[1] != self.image_dim:
            raise ShapeError(f"A: expected shape (m, {self.image_dim}), found {tuple(a.shape)}")
        h, c = a, None
        if self.decoder_weight is not None:
            h = a @ self.decoder_weight.to(torch.float64)
        if self.decoder_bias is not None:
            c = a @ self.decoder_bias.to(torch.float64)
        return self.mixture.condition(h, y, sigma, offset=c)

    def decode_mixture(self, mixture: GaussianMixture) -> GaussianMixture:
        r"""Push a latent mixture through the decoder: the law of :math:`Wz + b` in image space."""
        if mixture.dim != self.dim:
            raise ShapeError(f"mixture: expected dimension {self.dim}, found {mixture.dim}")
        if self.decoder_weight is None:
            return mixture
        return mixture.affine(self.decoder_weight, self.decoder_bias)

    def noisy_posterior_score(
        self, z_t: Tensor, t: Tensor | int, A: Any, y: Tensor, sigma: float | Tensor
    ) -> Tensor:
        r"""Exact score :math:`\nabla_{z_t}\log p(z_t \mid y)` at integer timestep(s) ``t``.

        .. math::

            p(z_t \mid y) \propto p(y \mid z_t)\, p_t(z_t)
            = \sum_k \tilde w_k\, \mathcal{N}\big(z_t;\, \sqrt{\bar\alpha_t}\tilde\mu_k,\,
            \bar\alpha_t\tilde\Sigma_k + (1-\bar\alpha_t) I\big),

        with :math:`(\tilde w_k, \tilde\mu_k, \tilde\Sigma_k)` the clean posterior
        (:meth:`posterior`). Not available for real priors; it drives the oracle sampler.

        :return: same shape and dtype as ``z_t``.
        """
        flat = _flatten_points(z_t, self.dim, "z_t")
        dtype = torch.promote_types(flat.dtype, self.dtype)
        post = self.posterior(A, y, sigma).to(flat.device, dtype)
        abar = self._abar(t, flat.shape[0]).to(flat.device, dtype)
        return post.score(flat.to(dtype), abar).to(z_t.dtype).reshape(z_t.shape)
