r"""Exponential moving average (EMA) of model weights.

After each optimisation step :math:`n` (counting from 0) every floating parameter is updated as
:math:`\bar\theta \leftarrow d_n \bar\theta + (1 - d_n)\theta` with the warmed-up decay
:math:`d_n = \min(d, (1 + n) / (10 + n))`, so the average does not remember the random
initialisation for long in short runs. Buffers are copied. The saved weights of a trained prior
are the EMA weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["EMA"]


class EMA:
    """EMA of the parameters (and copy of the buffers) of a module.

    :param nn.Module model: the trained module (not a DDP wrapper).
    :param float decay: the decay :math:`d` in ``[0, 1)``; 0 keeps the latest weights.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        decay = float(decay)
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), found {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow: dict[str, Tensor] = {
            name: t.detach().clone() for name, t in model.state_dict().items()
        }
        self._params = {name for name, _ in model.named_parameters()}

    def current_decay(self) -> float:
        """The decay used by the next :meth:`update`."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` into the average."""
        d = self.current_decay()
        for name, value in model.state_dict().items():
            target = self.shadow[name]
            if name in self._params and value.is_floating_point():
                target.mul_(d).add_(value.detach(), alpha=1.0 - d)
            else:
                target.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict[str, Tensor]:
        """The averaged weights (same keys as the model's ``state_dict``)."""
        return self.shadow

    def load_state_dict(self, state: Mapping[str, Tensor], updates: int) -> None:
        """Restore averaged weights and the update count from a checkpoint."""
        missing = sorted(set(self.shadow) - set(state))
        extra = sorted(set(state) - set(self.shadow))
        if missing or extra:
            raise ConfigError(
                f"EMA weights do not match the model: missing {missing[:5]}, unexpected {extra[:5]}"
            )
        for name, value in state.items():
            self.shadow[name].copy_(value)
        self.updates = int(updates)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model``."""
        model.load_state_dict(self.shadow)
