"""An exponential moving average of a model's weights over training steps (Polyak averaging).

The averaged weights are what validation scores and what the bundle keeps when ``train.weight_average_epochs``
is set: an average over the last steps moves less from one epoch to the next than the weights of the last
step do, so the epoch a noisy validation picks matters less, and it is known to generalise at least as well
as the last step's weights. Training itself never reads the average.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["WeightAverage"]


class WeightAverage:
    """The running average of ``model``'s floating-point parameters and buffers.

    Each :meth:`update` moves the average towards the model's current weights by ``1/horizon_steps``, or,
    before ``horizon_steps`` updates, by ``1/updates`` (the plain mean of the steps so far: the random
    initial weights are not remembered with a weight of their own). Integer buffers are left out.
    """

    def __init__(self, model: torch.nn.Module, horizon_steps: float) -> None:
        if horizon_steps < 1:
            raise ValueError(f"horizon_steps must be >= 1, got {horizon_steps}")
        self.model = model
        self.rate = 1.0 / horizon_steps
        self.updates = 0
        state = model.state_dict()
        self.names = [n for n, t in state.items() if t.is_floating_point()]
        # the live tensors share storage with the model: optimizers and load_state_dict update in place
        self._live = [state[n] for n in self.names]
        self._average = [t.detach().clone() for t in self._live]

    @torch.no_grad()
    def update(self) -> None:
        """One step's weights into the average."""
        self.updates += 1
        torch._foreach_lerp_(self._average, self._live, max(self.rate, 1.0 / self.updates))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state dict with the averaged weights in place of its own (copies throughout)."""
        state = {n: t.clone() for n, t in self.model.state_dict().items()}
        state.update((n, t.clone()) for n, t in zip(self.names, self._average, strict=True))
        return state

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the model holds the averaged weights; its own are put back after it."""
        with torch.no_grad():
            own = [t.clone() for t in self._live]
            torch._foreach_copy_(self._live, self._average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self._live, own)

    def checkpoint(self) -> dict[str, object]:
        """What a resumable training checkpoint keeps of the average."""
        return {"updates": self.updates, "average": self.state_dict()}

    def restore(self, saved: dict[str, object]) -> None:
        """Continues the average a :meth:`checkpoint` saved."""
        average = saved["average"]
        with torch.no_grad():
            torch._foreach_copy_(self._average, [average[n] for n in self.names])  # type: ignore[index]
        self.updates = int(saved["updates"])  # type: ignore[call-overload]
