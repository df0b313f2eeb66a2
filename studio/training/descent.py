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


def checked_step(loss: torch.Tensor, step: int, optimizer: torch.optim.Optimizer, params, grad_clip: float,
                 ema) -> None:
    """The big trainers' step (train.py, text_distill.py): refuse a non-finite loss with a way out, backpropagate,
    clip the gradient norm of `params` at `grad_clip`, step, and update `ema` (an object with `update()`)."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss became {float(loss)} at step {step}; lower --lr or resume")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    ema.update()
