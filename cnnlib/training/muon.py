"""Muon for convolution filters, with Nesterov SGD for every other parameter, in one optimizer.

Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks"; used by
airbench94_muon) keeps SGD momentum but replaces each filter bank's update by an approximate
orthogonalization of it: the nearest matrix with all singular values near 1, found by a few
Newton-Schulz iterations. Every direction of the update then moves at the same rate, so rare
but useful directions are not drowned by the dominant ones, and the step size is set by the
learning rate alone (the update's scale no longer depends on the gradient's).

`torch.optim.Muon` takes 2-D parameters only, and the fast recipe also rescales each filter
bank to a fixed norm before its step; hence these few lines. A 4-D filter bank
``[out, in, kh, kw]`` is orthogonalized as the matrix ``[out, in * kh * kw]``.

Groups with ``orthogonalize=True`` take Muon steps (no weight decay: their norm is fixed);
the others take PyTorch's Nesterov SGD step with coupled weight decay. One optimizer, so the
trainer's schedule, checkpoints and gradient scaler see the usual ``param_groups``.
"""

from __future__ import annotations

import math

import torch

# The quintic's coefficients (a, b, c) in x <- a x + b (x x^T) x + c (x x^T)^2 x: chosen for a
# steep slope at zero, so small singular values grow fast; they settle in about [0.7, 1.2]
# rather than at exactly 1, which costs nothing in training (Jordan et al. 2024).
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """An approximate ``U V^T`` of the matrix ``g = U S V^T``, computed in bfloat16."""
    if g.ndim != 2:
        raise ValueError(f"orthogonalize: expected a matrix, got shape {tuple(g.shape)}")
    x = g.to(torch.bfloat16)
    x = x / (x.norm() + eps)  # singular values <= 1, where the iteration converges
    wide = x.size(0) <= x.size(1)
    if not wide:
        x = x.T  # iterate on the smaller Gram matrix
    a, b, c = NEWTON_SCHULZ
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x if wide else x.T


class Muon(torch.optim.Optimizer):
    """Muon steps for the groups marked ``orthogonalize=True``, Nesterov SGD for the rest.

    Muon group options: ``lr``, ``momentum``, ``nesterov``, ``ns_steps`` (Newton-Schulz
    iterations) and ``normalize`` (rescale the filter bank to Frobenius norm
    ``sqrt(out_channels)`` before each step, so that a step of ``lr`` is a fixed fraction of
    the weights). SGD group options: ``lr``, ``momentum``, ``nesterov``, ``weight_decay``.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = 3, normalize: bool = True):
        if not lr > 0 or not 0 <= momentum < 1 or weight_decay < 0 or ns_steps < 1:
            raise ValueError(f"Muon: need lr > 0, 0 <= momentum < 1, weight_decay >= 0, "
                             f"ns_steps >= 1; got {lr}, {momentum}, {weight_decay}, {ns_steps}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        ns_steps=ns_steps, normalize=normalize, orthogonalize=False)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["orthogonalize"] and any(p.ndim < 2 for p in group["params"]):
                raise ValueError("Muon: orthogonalized groups hold matrices or filter banks only")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, m = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if not group["orthogonalize"] and group["weight_decay"]:
                    d = d.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(m).add_(d)
                d = d.add(buf, alpha=m) if group["nesterov"] else buf
                if group["orthogonalize"]:
                    if group["normalize"]:
                        p.mul_(math.sqrt(p.size(0)) / p.norm().clamp_min(1e-12))
                    d = orthogonalize(d.flatten(1), group["ns_steps"]).view_as(p).to(p.dtype)
                p.add_(d, alpha=-lr)
        return loss
