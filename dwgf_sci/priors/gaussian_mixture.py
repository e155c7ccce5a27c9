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

from typing import Any, ClassVar

import torch
from torch import Tensor

from .._checks import check_finite
from ..errors import InvalidDataError, ShapeError
from .base import LatentPrior, linear_alphas_cumprod
from .mixture import GaussianMixture
from .mixture_inputs import as_numbers, flatten_points, matrix_of

__all__ = ["GaussianMixture", "GaussianMixturePrior"]


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
            w = as_numbers(decoder, "decoder", dtype=mix.dtype, device=mix.device)
            check_finite(w, "decoder")
            if w.ndim != 2 or w.shape[1] != d:
                raise ShapeError(f"decoder: expected shape (D, {d}), found {tuple(w.shape)}")
        image_dim = d if w is None else int(w.shape[0])
        b = None
        if decoder_bias is not None:
            b = as_numbers(
                decoder_bias, "decoder_bias", dtype=mix.dtype, device=mix.device
            ).reshape(-1)
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
        flat = flatten_points(x, self.image_dim, "x")
        if self.encoder_weight is not None:
            dtype = torch.promote_types(flat.dtype, self.dtype)
            flat = flat.to(dtype)
            if self.decoder_bias is not None:
                flat = flat - self.decoder_bias.to(dtype)
            flat = (flat @ self.encoder_weight.to(dtype).mT).to(x.dtype)
        return flat.reshape(x.shape[0], self.dim, 1, 1)

    def _decode(self, z: Tensor) -> Tensor:
        flat = flatten_points(z, self.dim, "z")
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
        flat = flatten_points(z_t, self.dim, "z_t")
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
        flat = flatten_points(z, self.dim, "z")
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
        a = matrix_of(A).to(device=self.device, dtype=torch.float64)
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
        flat = flatten_points(z_t, self.dim, "z_t")
        dtype = torch.promote_types(flat.dtype, self.dtype)
        post = self.posterior(A, y, sigma).to(flat.device, dtype)
        abar = self._abar(t, flat.shape[0]).to(flat.device, dtype)
        return post.score(flat.to(dtype), abar).to(z_t.dtype).reshape(z_t.shape)
