"""One optimisation step with an exponential moving average of the weights: what every small trainer here does."""

from __future__ import annotations

import torch


def descend(loss: torch.Tensor, net: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: torch.nn.Module,
            ema_decay: float, clip: float = 1.0) -> None:
    """Backpropagate `loss`, clip the gradient norm at `clip`, step, and move `ema` towards `net` by 1 − decay
    (buffers, e.g. normalisation statistics, are copied as they are)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
    optimizer.step()
    with torch.no_grad():
        for e, p in zip(ema.parameters(), net.parameters()):
            e.lerp_(p, 1 - ema_decay)
        for e, b in zip(ema.buffers(), net.buffers()):
            e.copy_(b)
