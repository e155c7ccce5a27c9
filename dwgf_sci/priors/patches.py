r"""A prior trained on small images, applied to an image of any size by patches.

:class:`PatchPrior` wraps a latent prior of native size :math:`P \times Q` pixels (latent
:math:`p \times q`, :math:`p = P / f`) into one that models images of any size that is a
multiple of :math:`f`, at least :math:`P \times Q` (DESIGN.md section 10; PaDIS, Hu et al. 2024,
did it for pixel diffusion):

- **Noise predictor.** At timestep :math:`t` the whole latent is cut into :math:`p \times q`
  patches on a grid shifted by :math:`(d_y, d_x) \in [0, p) \times [0, q)`; the borders are
  padded by reflection to whole patches; every patch goes through the UNet (in batches of at most
  :attr:`PatchPrior.patch_batch`: bounded memory) and the predictions are put back and cropped.
  The shift is drawn from a generator seeded by ``(seed, t)``: a different partition at every
  level, so no patch border stays in one place (no seams), and the same one for every call at
  that level, so a result does not depend on how a solver splits its particles
  (``max_batch``). The likelihood step of a solver sees the whole image: the data are fitted
  across patch borders.
- **Autoencoder.** Decoding and encoding run on overlapping tiles of the native size (overlap
  :attr:`PatchPrior.overlap` latent pixels) blended with weights that fall linearly to zero
  across the overlap, so the decoded image has no seams either. Decoding stays differentiable.

Everything else (units, schedule, decoder-error model, intensity range, solver hints) is the
wrapped prior's. An image of exactly the native size is passed to the wrapped prior unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, OperatorMismatchError
from .base import LatentPrior
from .sharing import ChunkSharing, map_chunks

__all__ = ["PatchPrior", "as_patch_prior", "trained_on_crops"]


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile starts covering ``[0, size)`` with tiles of ``tile`` overlapping by at least
    ``overlap`` (the last tile ends at ``size``)."""
    if size <= tile:
        return [0]
    step = tile - overlap
    n = math.ceil((size - tile) / step) + 1
    return [min(i * step, size - tile) for i in range(n)]


def _ramp(length: int, start: int, size: int, tile: int, overlap: int, like: Tensor) -> Tensor:
    """1-D blending weight of a tile at ``start``: 1 inside, falling linearly to a small value
    over ``overlap`` pixels at each edge that is not the image's border."""
    w = torch.ones(length, dtype=like.dtype, device=like.device)
    if overlap <= 0:
        return w
    ramp = torch.arange(1, overlap + 1, dtype=like.dtype, device=like.device) / (overlap + 1)
    if start > 0:
        w[:overlap] = ramp
    if start + tile < size:
        w[-overlap:] = ramp.flip(0)
    return w


class PatchPrior(LatentPrior):
    """A latent prior for images of any size, by patches of a native-size prior.

    :param LatentPrior base: the prior trained on (crops of) small images; its ``image_size``
        sets the patch size.
    :param int overlap: overlap of the autoencoder's tiles in latent pixels (default: a quarter
        of the patch side).
    :param int patch_batch: most patches sent through the UNet at once.
    :param int tile_batch: most tiles sent through the decoder or encoder at once (their
        activations are at image resolution: small batches stay in the CPU's caches; measured
        2026-12-07 on 2 cores, decoding 4 latents of a 512 px image took 4.2 s in batches of
        4 or 16 tiles, 6.8 s in batches of 64).
    :param int seed: seed of the patch grids' shifts (one grid per timestep).
    """

    def __init__(
        self,
        base: LatentPrior,
        *,
        overlap: int | None = None,
        patch_batch: int = 64,
        tile_batch: int = 8,
        seed: int = 0,
    ) -> None:
        if base.image_size is None:
            raise ConfigError("PatchPrior needs a prior with a native image size to patch")
        f = base.downsample
        patch = (base.image_size[0] // f, base.image_size[1] // f)
        overlap = max(1, min(patch) // 4) if overlap is None else int(overlap)
        if not 0 <= overlap < min(patch):
            raise ConfigError(f"overlap must lie in [0, {min(patch)}), found {overlap}")
        if int(patch_batch) < 1 or int(tile_batch) < 1:
            raise ConfigError(
                f"patch_batch and tile_batch must be >= 1, found {patch_batch}, {tile_batch}"
            )
        super().__init__(
            base.alphas_cumprod,
            image_channels=base.image_channels,
            latent_channels=base.latent_channels,
            downsample=f,
            image_size=None,
            data_scale=base.data_scale,
            data_offset=base.data_offset,
        )
        self.base = base
        self.patch = patch
        self.overlap = overlap
        self.patch_batch = int(patch_batch)
        self.tile_batch = int(tile_batch)
        #: set by :meth:`share`: the processes that split the chunks of every network call
        self.sharing: ChunkSharing | None = None
        self.seed = int(seed)
        self.decoder_sigma = base.decoder_sigma
        self.decoder_error_model = base.decoder_error_model
        self.solver_hints = dict(base.solver_hints)
        self.metadata: dict[str, Any] = dict(getattr(base, "metadata", {}) or {})
        self.affine_decoder = base.affine_decoder
        self.local_extent = (patch[0] * f, patch[1] * f)

    def share(self, sharing: ChunkSharing | None) -> PatchPrior:
        """Split the chunks of every network call without gradient across the processes of a
        ``torchrun`` job that all run the same reconstruction (:mod:`.sharing`: the same result,
        bit for bit, as one process at the same thread count); ``None`` stops it."""
        self.sharing = sharing
        return self

    def _map(self, fn: Any, rows: Tensor, size: int) -> Tensor:
        if self.sharing is None:
            return map_chunks(fn, rows, size)
        return self.sharing.map(fn, rows, size)

    # ------------------------------------------------------------------ units and shapes
    def to_model(self, x: Tensor) -> Tensor:
        """The wrapped prior's map to the model range."""
        return self.base.to_model(x)

    def from_model(self, x: Tensor) -> Tensor:
        """The wrapped prior's map to physical units."""
        return self.base.from_model(x)

    @property
    def dtype(self) -> torch.dtype:
        """The wrapped prior's network dtype."""
        return self.base.dtype

    def latent_shape(self, image_shape: Any) -> tuple[int, int, int]:
        """As the base class, for images at least the native size."""
        shape = super().latent_shape(image_shape)
        if shape[1] < self.patch[0] or shape[2] < self.patch[1]:
            f = self.downsample
            raise OperatorMismatchError(
                f"the image ({image_shape[1]}x{image_shape[2]}) is smaller than the patches "
                f"({self.patch[0] * f}x{self.patch[1] * f}); use the wrapped prior itself"
            )
        return shape

    def native(self, z: Tensor) -> bool:
        """Whether latents ``z`` have the wrapped prior's own size."""
        return tuple(z.shape[-2:]) == self.patch

    # ------------------------------------------------------------------ noise predictor
    def shift(self, t: int) -> tuple[int, int]:
        """The grid shift :math:`(d_y, d_x)` of timestep ``t`` (seeded by ``(seed, t)``)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(t))
        dy = int(torch.randint(self.patch[0], (1,), generator=g))
        dx = int(torch.randint(self.patch[1], (1,), generator=g))
        return dy, dx

    def _predict_noise(self, z_t: Tensor, t: Tensor) -> Tensor:
        if self.native(z_t):
            return self.base.predict_noise(z_t, t)
        out = torch.empty_like(z_t)
        for level in t.unique().tolist():  # one grid per timestep
            rows = (t == level).nonzero().flatten()
            out[rows] = self._by_patches(z_t[rows], int(level))
        return out

    def _by_patches(self, z: Tensor, t: int) -> Tensor:
        n, c, h, w = z.shape
        (p, q), (dy, dx) = self.patch, self.shift(t)
        bottom = (-(h + dy)) % p
        right = (-(w + dx)) % q
        padded = F.pad(z, (dx, right, dy, bottom), mode="reflect")
        hh, ww = padded.shape[-2:]
        k, m = hh // p, ww // q
        tiles = padded.reshape(n, c, k, p, m, q).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, p, q)
        eps = self._map(lambda rows: self.base.predict_noise(rows, t), tiles, self.patch_batch)
        eps = eps.reshape(n, k, m, c, p, q).permute(0, 3, 1, 4, 2, 5)
        return eps.reshape(n, c, hh, ww)[..., dy : dy + h, dx : dx + w]

    # ------------------------------------------------------------------ autoencoder
    def _blend(self, x: Tensor, run: Any, tile: tuple[int, int], factor: float) -> Tensor:
        """Apply ``run`` on overlapping ``tile``-size tiles of ``x`` and blend the results
        (``factor``: output pixels per input pixel). The tiles of every image of ``x`` go
        through ``run`` together, at most :attr:`tile_batch` at a time, and are added into
        the output in place: the cost grows with the number of tiles, not with tiles times
        image size."""
        n, h, w = x.shape[0], *x.shape[-2:]
        # the overlap in the input's pixels: latent pixels when decoding, image pixels encoding
        o_in = self.overlap if factor > 1 else self.overlap * self.downsample
        starts = [(y0, x0) for y0 in _starts(h, tile[0], o_in) for x0 in _starts(w, tile[1], o_in)]
        tiles = torch.stack([x[..., y0 : y0 + tile[0], x0 : x0 + tile[1]] for y0, x0 in starts], 1)
        flat = tiles.reshape(n * len(starts), *tiles.shape[2:])
        parts = self._map(run, flat, self.tile_batch)
        parts = parts.reshape(n, len(starts), *parts.shape[1:])
        th, tw = parts.shape[-2:]
        big_h, big_w = int(round(h * factor)), int(round(w * factor))
        o_out = int(round(o_in * factor))
        out = parts.new_zeros((n, *parts.shape[2:-2], big_h, big_w))
        acc = parts.new_zeros((big_h, big_w))
        for k, (y0, x0) in enumerate(starts):
            oy, ox = int(round(y0 * factor)), int(round(x0 * factor))
            wy = _ramp(th, oy, big_h, th, o_out, parts)
            wx = _ramp(tw, ox, big_w, tw, o_out, parts)
            weight = wy[:, None] * wx[None, :]
            out[..., oy : oy + th, ox : ox + tw] += parts[:, k] * weight
            acc[oy : oy + th, ox : ox + tw] += weight
        return out / acc

    def _decode(self, z: Tensor) -> Tensor:
        if self.native(z):
            return self.base.decode(z)
        return self._blend(z, self.base.decode, self.patch, float(self.downsample))

    def _encode(self, x: Tensor) -> Tensor:
        f = self.downsample
        if tuple(x.shape[-2:]) == (self.patch[0] * f, self.patch[1] * f):
            return self.base.encode(x)
        size = (self.patch[0] * f, self.patch[1] * f)
        return self._blend(x, self.base.encode, size, 1.0 / f)

    def reset_calls(self) -> None:
        """Reset this prior's and the wrapped prior's counters."""
        super().reset_calls()
        self.base.reset_calls()

    def __repr__(self) -> str:
        f = self.downsample
        return (
            f"PatchPrior({type(self.base).__name__} patches {self.patch[0] * f}x"
            f"{self.patch[1] * f} px, overlap {self.overlap * f} px, seed {self.seed})"
        )


def trained_on_crops(prior: LatentPrior) -> bool:
    """Whether ``prior`` was trained on random crops of larger images (``train-prior
    --patch-size``): a patch prior, meant for images of any size."""
    data = (getattr(prior, "metadata", None) or {}).get("data") or {}
    return bool(isinstance(data, dict) and data.get("patch_size"))


def as_patch_prior(prior: LatentPrior, patches: bool = False) -> LatentPrior:
    """``prior`` wrapped in :class:`PatchPrior` when asked (``patches``) or when it was trained
    on crops; as it is otherwise (and when it models any size already)."""
    if isinstance(prior, PatchPrior) or prior.image_size is None:
        return prior
    return PatchPrior(prior) if patches or trained_on_crops(prior) else prior
